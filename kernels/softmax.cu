// Softmax over the last axis, forward and backward.
//
// Invariants:
// - One warp per row. The forward makes one pass for the running (max, sum) pair (online
//   softmax: rescale the sum whenever the max grows) and one pass to write, so a row is read
//   twice whatever its length; fp32 throughout.
// - A row of all -inf gives NaN, as torch.softmax does.
// - Backward: dx = y * (dy - sum(dy * y)), a dot product pass and a write pass.
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;
constexpr int kRowsPerBlock = kThreads / kWarp;
static_assert(kThreads % kWarp == 0, "one warp per row");

template <typename T>
__device__ __forceinline__ void softmax_fwd(const sf_softmax_fwd_params& p) {
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; r < p.rows; r += warps) {
        const int64_t xb = r * p.x_row_stride, yb = r * p.cols;
        float m = -INFINITY, s = 0.f;
        for (int64_t c = lane; c < p.cols; c += kWarp) {
            const float v = load<T>(p.x, xb + c);
            if (v > m) {
                s = s * expf(m - v) + 1.f;
                m = v;
            } else {
                s += expf(v - m);
            }
        }
        const float mall = warp_max(m);
        // Lanes that saw only -inf (or nothing) contribute 0; exp(-inf - -inf) would be NaN.
        s = m == -INFINITY ? 0.f : s * expf(m - mall);
        const float inv = 1.f / warp_sum(s);
        for (int64_t c = lane; c < p.cols; c += kWarp) store<T>(p.y, yb + c, expf(load<T>(p.x, xb + c) - mall) * inv);
    }
}

template <typename T>
__device__ __forceinline__ void softmax_bwd(const sf_softmax_bwd_params& p) {
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; r < p.rows; r += warps) {
        const int64_t b = r * p.cols;
        float dot = 0.f;
        for (int64_t c = lane; c < p.cols; c += kWarp) dot += load<T>(p.y, b + c) * load<T>(p.dy, b + c);
        dot = warp_sum(dot);
        for (int64_t c = lane; c < p.cols; c += kWarp) {
            const float y = load<T>(p.y, b + c);
            store<T>(p.dx, b + c, y * (load<T>(p.dy, b + c) - dot));
        }
    }
}

}  // namespace sf

#define SF_SOFTMAX(SUFFIX, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) softmax_fwd_##SUFFIX(const sf_softmax_fwd_params p) { \
        sf::softmax_fwd<T>(p);                                                                    \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) softmax_bwd_##SUFFIX(const sf_softmax_bwd_params p) { \
        sf::softmax_bwd<T>(p);                                                                    \
    }

SF_SOFTMAX(f32, float)
SF_SOFTMAX(bf16, sf::bf16)

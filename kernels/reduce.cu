// Reductions over the last axis: sum, mean, max (+ argmax), and their backward.
//
// Invariants:
// - One warp per row; lanes stride over the columns, fp32 accumulation, then a shuffle tree.
//   Rows are independent, so the result does not depend on the grid size.
// - Max: NaN wins and propagates; among equal values the first index wins, matching the CPU
//   reference (src/backend/cpu/reduce.rs) and torch.max(dim).
// - Backward writes every element of dx (zeros away from the argmax), so dx needs no memset.
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;
constexpr int kRowsPerBlock = kThreads / kWarp;
static_assert(kThreads % kWarp == 0, "one warp per row");

// (value, index) that wins a max: NaN first, then the larger value, then the lower index.
__device__ __forceinline__ bool beats(float v, int32_t i, float bv, int32_t bi) {
    const bool vn = isnan(v), bn = isnan(bv);
    if (vn != bn) return vn;
    if (vn || v == bv) return i < bi;
    return v > bv;
}

template <typename T>
__device__ __forceinline__ void reduce_fwd(const sf_reduce_fwd_params& p) {
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; r < p.rows; r += warps) {
        const int64_t base = r * p.row_stride;
        if (p.op == SF_REDUCE_MAX) {
            float best = -INFINITY;
            int32_t bi = -1;  // no element seen yet: loses to everything
            for (int64_t c = lane; c < p.cols; c += kWarp) {
                const float v = load<T>(p.x, base + c);
                if (bi < 0 || beats(v, static_cast<int32_t>(c), best, bi)) {
                    best = v;
                    bi = static_cast<int32_t>(c);
                }
            }
#pragma unroll
            for (int o = kWarp / 2; o > 0; o /= 2) {
                const float ov = __shfl_xor_sync(0xffffffffu, best, o);
                const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (oi >= 0 && (bi < 0 || beats(ov, oi, best, bi))) {
                    best = ov;
                    bi = oi;
                }
            }
            if (lane == 0) {
                store<T>(p.out, r, best);
                if (p.argmax != nullptr) p.argmax[r] = bi;
            }
        } else {
            float acc = 0.f;
            for (int64_t c = lane; c < p.cols; c += kWarp) acc += load<T>(p.x, base + c);
            acc = warp_sum(acc);
            if (lane == 0) store<T>(p.out, r, p.op == SF_REDUCE_MEAN ? acc / static_cast<float>(p.cols) : acc);
        }
    }
}

template <typename T>
__device__ __forceinline__ void reduce_bwd(const sf_reduce_bwd_params& p) {
    const int64_t n = p.rows * p.cols;
    const float inv = p.op == SF_REDUCE_MEAN ? 1.f / static_cast<float>(p.cols) : 1.f;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t r = i / p.cols, c = i % p.cols;
        float g = load<T>(p.dout, r) * inv;
        if (p.op == SF_REDUCE_MAX && c != p.argmax[r]) g = 0.f;
        store<T>(p.dx, i, g);
    }
}

}  // namespace sf

#define SF_REDUCE(SUFFIX, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) reduce_fwd_##SUFFIX(const sf_reduce_fwd_params p) { \
        sf::reduce_fwd<T>(p);                                                                    \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) reduce_bwd_##SUFFIX(const sf_reduce_bwd_params p) { \
        sf::reduce_bwd<T>(p);                                                                    \
    }

SF_REDUCE(f32, float)
SF_REDUCE(bf16, sf::bf16)

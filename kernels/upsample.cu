// Nearest-neighbour upsampling by integer factors (the VAE decoder's 2x), forward and
// backward.
//
// Invariants:
// - Output pixel (oy, ox) reads input (oy / scale_h, ox / scale_w): torch
//   interpolate(mode="nearest") with an integer scale_factor.
// - Backward is a gather: one thread per dx element sums its scale_h x scale_w block of dy
//   in a fixed order (deterministic, no atomics).
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;

template <typename T>
__device__ __forceinline__ void upsample_fwd(const sf_upsample_nearest_fwd_params& p) {
    const int oh = p.height * p.scale_h, ow = p.width * p.scale_w;
    const int64_t n = static_cast<int64_t>(p.batch) * p.channels * oh * ow;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int x = static_cast<int>(i % ow);
        int64_t r = i / ow;
        const int y = static_cast<int>(r % oh);
        r /= oh;
        const int64_t c = r % p.channels, b = r / p.channels;
        const int64_t src =
            b * p.x_strides[0] + c * p.x_strides[1] + (y / p.scale_h) * p.x_strides[2] + (x / p.scale_w) * p.x_strides[3];
        store<T>(p.y, i, load<T>(p.x, src));
    }
}

template <typename T>
__device__ __forceinline__ void upsample_bwd(const sf_upsample_nearest_bwd_params& p) {
    const int oh = p.height * p.scale_h, ow = p.width * p.scale_w;
    const int64_t n = static_cast<int64_t>(p.batch) * p.channels * p.height * p.width;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int x = static_cast<int>(i % p.width);
        int64_t r = i / p.width;
        const int y = static_cast<int>(r % p.height);
        r /= p.height;  // b * C + c
        const int64_t base = r * oh * ow;
        float acc = 0.f;
        for (int dy = 0; dy < p.scale_h; ++dy)
            for (int dx = 0; dx < p.scale_w; ++dx)
                acc += load<T>(p.dy, base + static_cast<int64_t>(y * p.scale_h + dy) * ow + x * p.scale_w + dx);
        store<T>(p.dx, i, acc);
    }
}

}  // namespace sf

#define SF_UPSAMPLE(SUFFIX, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) upsample_nearest_fwd_##SUFFIX(                \
        const sf_upsample_nearest_fwd_params p) {                                                            \
        sf::upsample_fwd<T>(p);                                                                              \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) upsample_nearest_bwd_##SUFFIX(                \
        const sf_upsample_nearest_bwd_params p) {                                                            \
        sf::upsample_bwd<T>(p);                                                                              \
    }

SF_UPSAMPLE(f32, float)
SF_UPSAMPLE(bf16, sf::bf16)

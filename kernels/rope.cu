// Rotary position embedding on interleaved pairs (FLUX / diffusers `apply_rotary_emb` with
// use_real_unbind_dim=-1): pair i of a head vector is (x[2i], x[2i+1]), rotated by the angle
// whose cos/sin the host tabulated per token (fp32, from the position ids).
//
// Invariants:
// - One thread per pair; q and k are rotated by separate launches (they may have different
//   strides). fp32 math, output contiguous [B, H, N, D].
// - Backward is the inverse rotation (the rotation matrix is orthogonal), so it reuses the
//   struct: `x` holds dout and `out` receives dx.
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;

template <typename T, bool INVERSE>
__device__ __forceinline__ void rope(const sf_rope_params& p) {
    const int half = p.dim / 2;
    const int64_t pairs = static_cast<int64_t>(p.batch) * p.heads * p.tokens * half;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs; i += stride) {
        const int64_t j = i % half;
        int64_t r = i / half;
        const int64_t n = r % p.tokens;
        r /= p.tokens;
        const int64_t h = r % p.heads, b = r / p.heads;
        const int64_t xo = b * p.x_batch_stride + h * p.x_head_stride + n * p.x_row_stride + 2 * j;
        const int64_t to = b * p.rope_batch_stride + n * half + j;
        const float c = p.cos[to], s = INVERSE ? -p.sin[to] : p.sin[to];
        const float x0 = load<T>(p.x, xo), x1 = load<T>(p.x, xo + 1);
        store<T>(p.out, 2 * i, c * x0 - s * x1);
        store<T>(p.out, 2 * i + 1, s * x0 + c * x1);
    }
}

}  // namespace sf

#define SF_ROPE(SUFFIX, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) rope_fwd_##SUFFIX(const sf_rope_params p) { \
        sf::rope<T, false>(p);                                                                       \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) rope_bwd_##SUFFIX(const sf_rope_params p) { \
        sf::rope<T, true>(p);                                                                        \
    }

SF_ROPE(f32, float)
SF_ROPE(bf16, sf::bf16)

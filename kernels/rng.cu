// Philox4x32-10 fills: the GPU side of src/rng/mod.rs, through include/philox.cuh.
//
// Invariants (the contract of src/rng/mod.rs):
// - Element i of a fill at (seed, offset) uses counter offset + i / 4 (wrapping), lane i % 4;
//   each thread computes whole counter blocks, so every draw is a pure function of
//   (seed, offset, i) and independent of the launch configuration.
// - Uniforms are bit-identical to the CPU, and so is lo + (hi - lo) * u: the explicit
//   round-to-nearest intrinsics stop nvcc from contracting it into an fma the CPU does not
//   do. Normals use the reference's double-precision Box-Muller (within 1 ulp of the CPU);
//   logit-normals apply the double formula to that normal.
// - bf16 outputs round the f32 value once, like a CPU fill followed by a cast.
// - Never build with --use_fast_math (see philox.cuh).
#include "common.cuh"
#include "philox.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;

enum class Dist { Uniform, Normal, LogitNormal };

template <typename T, Dist D>
__device__ __forceinline__ void rng_fill(const sf_rng_params& p) {
    const int64_t blocks = (p.n + 3) / 4;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    const float width = __fsub_rn(p.hi, p.lo);
    for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < blocks; k += stride) {
        const sf_u32x4 x = sf_philox_block(p.seed, p.offset + static_cast<uint64_t>(k));
        float v[4];
        if constexpr (D == Dist::Uniform) {
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = __fadd_rn(p.lo, __fmul_rn(width, sf_uniform_from_u32(x.v[j])));
        } else {
            sf_box_muller(x.v[0], x.v[1], &v[0], &v[1]);
            sf_box_muller(x.v[2], x.v[3], &v[2], &v[3]);
            if constexpr (D == Dist::LogitNormal) {
#pragma unroll
                for (int j = 0; j < 4; ++j) v[j] = sf_logit_normal_from(v[j], p.mean, p.std_dev);
            }
        }
        const int64_t i0 = 4 * k;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (i0 + j < p.n) store<T>(p.out, i0 + j, v[j]);
        }
    }
}

}  // namespace sf

#define SF_RNG(NAME, DIST, SUFFIX, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) rng_##NAME##_##SUFFIX(const sf_rng_params p) { \
        sf::rng_fill<T, DIST>(p);                                                                      \
    }

SF_RNG(uniform, sf::Dist::Uniform, f32, float)
SF_RNG(uniform, sf::Dist::Uniform, bf16, sf::bf16)
SF_RNG(normal, sf::Dist::Normal, f32, float)
SF_RNG(normal, sf::Dist::Normal, bf16, sf::bf16)
SF_RNG(logit_normal, sf::Dist::LogitNormal, f32, float)
SF_RNG(logit_normal, sf::Dist::LogitNormal, bf16, sf::bf16)

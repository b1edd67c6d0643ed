// Philox4x32-10 counter-based RNG for CUDA kernels and host C++.
//
// Mirror of src/rng/mod.rs (the reference); see its module doc for the full contract.
// Every value is a pure function of (seed, offset, i), so each GPU thread computes its own
// element with no shared state:
//   - element i uses the 64-bit counter c = offset + i / 4 (wrapping), Philox counter
//     {lo32(c), hi32(c), 0, 0}, key {lo32(seed), hi32(seed)}, lane i % 4 of the block;
//   - a fill of n elements consumes ceil(n / 4) counters (the host advances offset by that);
//   - uniforms lie in the open interval (0, 1): ((x >> 9) + 0.5) * 2^-23, exact in f32;
//   - normals: Box-Muller on lane pairs (0, 1) -> normals 0, 1 and (2, 3) -> normals 2, 3
//     of the same block, r = sqrt(-2 ln u1), z0 = r cos(2 pi u2), z1 = r sin(2 pi u2);
//   - logit-normal: sigmoid(fma(std, z, mean)) in double, z the f32 normal of element i.
// Raw lanes and uniforms are bit-identical to the Rust side. sf_philox_normal_at follows the
// reference formula (double math, one rounding to float) and agrees with Rust to 1 ulp, bit
// for bit on a glibc host; kernels must stay within 2 ulp of the reference, so use it, not
// the all-float sf_philox_normal_f32_at, where that matters. Logit-normals apply the double
// formula to the normal, so a normal's error reaches them scaled by up to |std * z|.
// Do not build with --use_fast_math: it swaps in __logf/__sinf-class approximations.
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SF_HD __host__ __device__ __forceinline__
#else
#define SF_HD inline
#endif

struct sf_u32x4 {
    uint32_t v[4];
};

// The Philox4x32-10 bijection (Random123): 10 rounds, key bumped by the Weyl constants
// between rounds.
SF_HD sf_u32x4 sf_philox4x32_10(sf_u32x4 ctr, uint32_t key0, uint32_t key1) {
    uint32_t c0 = ctr.v[0], c1 = ctr.v[1], c2 = ctr.v[2], c3 = ctr.v[3];
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key0 += 0x9E3779B9u;
            key1 += 0xBB67AE85u;
        }
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        const uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        c0 = (uint32_t)(p1 >> 32) ^ c1 ^ key0;
        c1 = (uint32_t)p1;
        c2 = (uint32_t)(p0 >> 32) ^ c3 ^ key1;
        c3 = (uint32_t)p0;
    }
    sf_u32x4 out = {{c0, c1, c2, c3}};
    return out;
}

// The four raw lanes of `counter` under `seed`.
SF_HD sf_u32x4 sf_philox_block(uint64_t seed, uint64_t counter) {
    sf_u32x4 ctr = {{(uint32_t)counter, (uint32_t)(counter >> 32), 0u, 0u}};
    return sf_philox4x32_10(ctr, (uint32_t)seed, (uint32_t)(seed >> 32));
}

// 23 bits, so k + 0.5 is exact in float and the result is never 0 or 1.
SF_HD float sf_uniform_from_u32(uint32_t x) {
    return ((float)(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

SF_HD uint32_t sf_philox_u32_at(uint64_t seed, uint64_t offset, uint64_t i) {
    return sf_philox_block(seed, offset + i / 4).v[i % 4];
}

SF_HD float sf_philox_uniform_at(uint64_t seed, uint64_t offset, uint64_t i) {
    return sf_uniform_from_u32(sf_philox_u32_at(seed, offset, i));
}

// Box-Muller on one lane pair as the Rust reference defines it: double math, one rounding
// per output. Separate sin and cos (not sincos) so a glibc host reproduces Rust's
// f64::sin/cos exactly. On the device, CUDA's double log/sin/cos (1-2 double ulp) leave the
// float result within 1 ulp of the reference, inside the 2 ulp contract.
SF_HD void sf_box_muller(uint32_t x0, uint32_t x1, float* z0, float* z1) {
    const double u1 = (double)sf_uniform_from_u32(x0);
    const double u2 = (double)sf_uniform_from_u32(x1);
    const double r = sqrt(-2.0 * log(u1));
    const double theta = 6.283185307179586 * u2;  // f64 TAU, as in Rust
    *z0 = (float)(r * cos(theta));
    *z1 = (float)(r * sin(theta));
}

// All-float Box-Muller, for callers that can accept more than the contract's 2 ulp. With
// correctly rounded logf and sincospif it stays within 2 ulp of sf_box_muller (measured by
// tools/philox_header_check.cpp). CUDA's logf and sincospif are only 1 ulp accurate; in a
// host emulation of that, about 1 output in 1700 reached 3 ulp. sincospif takes 2*u2
// exactly and keeps full relative accuracy near the zeros of sin and cos, which
// sinf(6.2831855f * u2) would not. Host compilers have no sincospif, so the host takes it
// from double sin/cos.
SF_HD void sf_box_muller_f32(uint32_t x0, uint32_t x1, float* z0, float* z1) {
    const float u1 = sf_uniform_from_u32(x0);
    const float u2 = sf_uniform_from_u32(x1);
    const float r = sqrtf(-2.0f * logf(u1));
    float s, c;
#ifdef __CUDA_ARCH__
    sincospif(2.0f * u2, &s, &c);
#else
    const double theta = 3.141592653589793 * (double)(2.0f * u2);
    s = (float)sin(theta);
    c = (float)cos(theta);
#endif
    *z0 = r * c;
    *z1 = r * s;
}

// Element i of a normal fill: lanes (0, 1) and (2, 3) of the block are the Box-Muller pairs.
SF_HD float sf_philox_normal_at(uint64_t seed, uint64_t offset, uint64_t i) {
    const sf_u32x4 x = sf_philox_block(seed, offset + i / 4);
    const int pair = (int)(i % 4) & 2;
    float z0, z1;
    sf_box_muller(x.v[pair], x.v[pair + 1], &z0, &z1);
    return (i % 2 == 0) ? z0 : z1;
}

SF_HD float sf_philox_normal_f32_at(uint64_t seed, uint64_t offset, uint64_t i) {
    const sf_u32x4 x = sf_philox_block(seed, offset + i / 4);
    const int pair = (int)(i % 4) & 2;
    float z0, z1;
    sf_box_muller_f32(x.v[pair], x.v[pair + 1], &z0, &z1);
    return (i % 2 == 0) ? z0 : z1;
}

// sigmoid(fma(std, z, mean)) in double. Written with fma explicitly because nvcc contracts
// mean + std * z into one by default and the Rust reference uses mul_add to match.
SF_HD float sf_logit_normal_from(float z, float mean, float std_dev) {
    const double t = fma((double)std_dev, (double)z, (double)mean);
    return (float)(1.0 / (1.0 + exp(-t)));
}

SF_HD float sf_philox_logit_normal_at(uint64_t seed, uint64_t offset, uint64_t i, float mean,
                                      float std_dev) {
    return sf_logit_normal_from(sf_philox_normal_at(seed, offset, i), mean, std_dev);
}

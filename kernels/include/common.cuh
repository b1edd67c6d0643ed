// Device helpers shared by every kernel file.
//
// Invariants:
// - Storage types are bf16 (__nv_bfloat16) and f32; all math is fp32 (`to_f32`/`from_f32`
//   convert, rounding to nearest even on the way out).
// - Block reductions assume blockDim.x is a multiple of 32 and at most 1024, and that every
//   thread of the block calls them (they contain __syncthreads).
// - Vector access (`VecIO`) moves 16 bytes per thread: 8 bf16 or 4 f32. Callers check the
//   16-byte alignment of every pointer first and fall back to scalar code otherwise.
// - Kernels are `extern "C"` so their names are stable symbols for the host loader; the
//   instantiation macros at the bottom of each file spell every name out.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "params.h"

namespace sf {

using bf16 = __nv_bfloat16;

constexpr int kWarp = 32;
static_assert(SF_BLOCK_THREADS % kWarp == 0 && SF_BLOCK_THREADS <= 1024,
              "the generic kernels' block reductions need whole warps");

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
__device__ __forceinline__ float load(const void* p, int64_t i) {
    return to_f32(static_cast<const T*>(p)[i]);
}

template <typename T>
__device__ __forceinline__ void store(void* p, int64_t i, float v) {
    static_cast<T*>(p)[i] = from_f32<T>(v);
}

// 16-byte vector of T: 8 bf16 or 4 f32.
template <typename T>
struct VecIO {
    static constexpr int N = 16 / sizeof(T);
    static_assert(N * sizeof(T) == 16, "16-byte vectors");

    __device__ __forceinline__ static void load(const void* p, int64_t i, float (&out)[N]) {
        const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const T*>(p) + i);
        const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int k = 0; k < N; ++k) out[k] = to_f32(v[k]);
    }
    __device__ __forceinline__ static void store(void* p, int64_t i, const float (&in)[N]) {
        uint4 raw;
        T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int k = 0; k < N; ++k) v[k] = from_f32<T>(in[k]);
        *reinterpret_cast<uint4*>(static_cast<T*>(p) + i) = raw;
    }
};

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block, returned to every thread. `scratch` holds >= 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int warps = (blockDim.x + kWarp - 1) / kWarp;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

// Merges two (count, mean, M2) Welford states (Chan et al.): numerically stable variance
// without E[x^2] - E[x]^2.
struct Welford {
    float n, mean, m2;
    __device__ __forceinline__ void add(float x) {
        n += 1.f;
        const float d = x - mean;
        mean += d / n;
        m2 += d * (x - mean);
    }
    __device__ __forceinline__ void merge(const Welford& o) {
        if (o.n == 0.f) return;
        if (n == 0.f) {
            *this = o;
            return;
        }
        const float nn = n + o.n;
        const float d = o.mean - mean;
        const float w = o.n / nn;
        mean += d * w;
        m2 += o.m2 + d * d * n * w;
        n = nn;
    }
};

__device__ __forceinline__ Welford warp_welford(Welford w) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2) {
        Welford other{__shfl_xor_sync(0xffffffffu, w.n, o), __shfl_xor_sync(0xffffffffu, w.mean, o),
                      __shfl_xor_sync(0xffffffffu, w.m2, o)};
        w.merge(other);
    }
    return w;
}

// Welford state of the whole block, returned to every thread. `scratch` holds >= 96 floats.
__device__ __forceinline__ Welford block_welford(Welford w, float* scratch) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int warps = (blockDim.x + kWarp - 1) / kWarp;
    w = warp_welford(w);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = w.n;
        scratch[32 + warp] = w.mean;
        scratch[64 + warp] = w.m2;
    }
    __syncthreads();
    Welford r{0.f, 0.f, 0.f};
    if (lane < warps) r = Welford{scratch[lane], scratch[32 + lane], scratch[64 + lane]};
    return warp_welford(r);
}

// Binary search for the tensor owning multi-tensor chunk `chunk`: the last i with
// chunk_starts[i] <= chunk.
__device__ __forceinline__ int find_tensor(const int64_t* chunk_starts, int num_tensors, int64_t chunk) {
    int lo = 0, hi = num_tensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (chunk_starts[mid] <= chunk) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

}  // namespace sf

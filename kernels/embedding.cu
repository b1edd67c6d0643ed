// Embeddings: table lookup (fwd), its scatter-add backward, and the sinusoidal timestep
// embedding of diffusers.
//
// Invariants:
// - Lookup: one thread per output element; ids outside [0, vocab) read as zeros (the host
//   validates ids; this only keeps a bad id from reading out of bounds).
// - Backward: the host groups positions by id (CSR, positions ascending), so block u owns
//   table row unique_ids[u] and sums its positions in order: deterministic, no atomics.
// - Timestep embedding computes in f32 exactly as diffusers' get_timestep_embedding does on
//   a float32 tensor (-ln(max_period) is taken in double and rounded, like the Python float).
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;

template <typename T>
__device__ __forceinline__ void embedding_fwd(const sf_embedding_fwd_params& p) {
    const int64_t n = p.count * p.dim;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t row = i / p.dim, d = i % p.dim;
        const int32_t id = p.ids[row];
        const float v = (id >= 0 && id < p.vocab) ? load<T>(p.table, static_cast<int64_t>(id) * p.dim + d) : 0.f;
        store<T>(p.out, i, v);
    }
}

template <typename T>
__device__ __forceinline__ void embedding_bwd(const sf_embedding_bwd_params& p) {
    for (int u = blockIdx.x; u < p.num_unique; u += gridDim.x) {
        const int64_t row = static_cast<int64_t>(p.unique_ids[u]) * p.dim;
        const int begin = p.offsets[u], end = p.offsets[u + 1];
        for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
            float acc = 0.f;
            for (int j = begin; j < end; ++j) acc += load<T>(p.dout, static_cast<int64_t>(p.positions[j]) * p.dim + d);
            if (p.accumulate) acc += load<T>(p.dtable, row + d);
            store<T>(p.dtable, row + d, acc);
        }
    }
}

template <typename T>
__device__ __forceinline__ void timestep_embedding(const sf_timestep_embedding_params& p) {
    const int half = p.dim / 2;
    const int64_t n = static_cast<int64_t>(p.batch) * p.dim;
    const float neg_log_period = static_cast<float>(-log(static_cast<double>(p.max_period)));
    const float denom = static_cast<float>(half) - p.downscale_freq_shift;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t b = i / p.dim;
        const int j = static_cast<int>(i % p.dim);
        float v = 0.f;  // the odd dimension's zero pad
        if (j < 2 * half) {
            const int k = j < half ? j : j - half;
            const bool first_half = j < half;
            const float freq = expf(neg_log_period * static_cast<float>(k) / denom);
            const float e = p.scale * (p.t[b] * freq);
            const bool use_cos = p.flip_sin_to_cos ? first_half : !first_half;
            v = use_cos ? cosf(e) : sinf(e);
        }
        store<T>(p.out, i, v);
    }
}

}  // namespace sf

#define SF_EMBEDDING(SUFFIX, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) embedding_fwd_##SUFFIX(const sf_embedding_fwd_params p) { \
        sf::embedding_fwd<T>(p);                                                                         \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) embedding_bwd_##SUFFIX(const sf_embedding_bwd_params p) { \
        sf::embedding_bwd<T>(p);                                                                         \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) timestep_embedding_fwd_##SUFFIX(                     \
        const sf_timestep_embedding_params p) {                                                          \
        sf::timestep_embedding<T>(p);                                                                    \
    }

SF_EMBEDDING(f32, float)
SF_EMBEDDING(bf16, sf::bf16)

// Multi-tensor optimizer kernels: AdamW with fp32 master weights, the global gradient norm
// for clipping, and the IDA blend phi <- lambda * phi + (1 - lambda) * theta.
//
// Invariants:
// - One launch covers every tensor: block i owns chunk i of the concatenated chunk list
//   (SF_MULTI_TENSOR_CHUNK elements; tensor t owns chunks [chunk_starts[t],
//   chunk_starts[t + 1])) and finds its tensor by binary search.
// - AdamW follows torch.optim.AdamW's single-tensor code step for step (decoupled decay
//   first, lerp for the first moment, sqrt(v) / sqrt(bc2) + eps), in fp32 on the master
//   weights; the low-precision model copy is rounded from the updated master.
// - The clipping scale is read from device memory (written by clip_scale_f32), so clipping
//   needs no host round trip.
// - The global norm is deterministic: fp32 sum of squares per chunk, then one block sums the
//   partials in f64 in a fixed order.
// - The IDA blend rounds each product and the sum separately (no fma), so it matches the
//   plain CPU expression bit for bit.
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;
constexpr int64_t kChunk = SF_MULTI_TENSOR_CHUNK;
static_assert(kChunk % kThreads == 0, "chunks split evenly over a block");

// The tensor and element range [begin, end) of this block's chunk.
struct ChunkRange {
    int tensor;
    int64_t begin, end;
};

template <typename Table>
__device__ __forceinline__ ChunkRange chunk_range(const Table* tensors, const int64_t* chunk_starts, int num_tensors) {
    const int64_t chunk = blockIdx.x;
    const int t = find_tensor(chunk_starts, num_tensors, chunk);
    const int64_t begin = (chunk - chunk_starts[t]) * kChunk;
    return ChunkRange{t, begin, min(begin + kChunk, tensors[t].n)};
}

template <typename P, typename G>
__device__ __forceinline__ void adamw_step(const sf_adamw_params& p) {
    const ChunkRange cr = chunk_range(p.tensors, p.chunk_starts, p.num_tensors);
    const sf_adamw_tensor t = p.tensors[cr.tensor];
    const float gs = p.grad_scale != nullptr ? *p.grad_scale : 1.f;
    const float decay = 1.f - p.lr * p.weight_decay;
    const float step_size = p.lr / p.bias_correction1;
    const float bc2_sqrt = sqrtf(p.bias_correction2);
    for (int64_t i = cr.begin + threadIdx.x; i < cr.end; i += blockDim.x) {
        const float g = load<G>(t.grad, i) * gs;
        float m = t.exp_avg[i], v = t.exp_avg_sq[i], w = t.master[i];
        w *= decay;
        m = fmaf(1.f - p.beta1, g - m, m);  // torch lerp_(grad, 1 - beta1)
        v = v * p.beta2 + (1.f - p.beta2) * g * g;
        const float denom = sqrtf(v) / bc2_sqrt + p.eps;
        w -= step_size * (m / denom);
        t.exp_avg[i] = m;
        t.exp_avg_sq[i] = v;
        t.master[i] = w;
        if (t.param != nullptr) store<P>(t.param, i, w);
    }
}

template <typename T>
__device__ __forceinline__ void grad_sumsq(const sf_grad_sumsq_params& p) {
    __shared__ float scratch[32];
    const ChunkRange cr = chunk_range(p.tensors, p.chunk_starts, p.num_tensors);
    const void* data = p.tensors[cr.tensor].data;
    float acc = 0.f;
    for (int64_t i = cr.begin + threadIdx.x; i < cr.end; i += blockDim.x) {
        const float g = load<T>(data, i);
        acc += g * g;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) p.partial[blockIdx.x] = acc;
}

// One block. Each thread sums a fixed strided subset in f64, then thread 0 adds the
// per-thread sums in order: deterministic for a given block size.
__device__ __forceinline__ void clip_scale(const sf_clip_scale_params& p) {
    __shared__ double sums[kThreads];
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < p.count; i += blockDim.x) acc += static_cast<double>(p.partial[i]);
    sums[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int i = 0; i < static_cast<int>(blockDim.x); ++i) total += sums[i];
        const float norm = static_cast<float>(sqrt(total));
        *p.norm = norm;
        *p.scale = fminf(1.f, p.max_norm / (norm + 1e-6f));
    }
}

template <typename T>
__device__ __forceinline__ void ida_blend(const sf_ida_blend_params& p) {
    const ChunkRange cr = chunk_range(p.tensors, p.chunk_starts, p.num_tensors);
    const sf_blend_tensor t = p.tensors[cr.tensor];
    const float l = p.lambda, one_minus = __fsub_rn(1.f, p.lambda);
    for (int64_t i = cr.begin + threadIdx.x; i < cr.end; i += blockDim.x) {
        const float w = __fadd_rn(__fmul_rn(l, t.dst_master[i]), __fmul_rn(one_minus, t.src[i]));
        t.dst_master[i] = w;
        if (t.dst_param != nullptr) store<T>(t.dst_param, i, w);
    }
}

}  // namespace sf

extern "C" __global__ void __launch_bounds__(sf::kThreads) adamw_step_f32(const sf_adamw_params p) {
    sf::adamw_step<float, float>(p);
}
extern "C" __global__ void __launch_bounds__(sf::kThreads) adamw_step_bf16(const sf_adamw_params p) {
    sf::adamw_step<sf::bf16, sf::bf16>(p);
}
// bf16 parameters whose gradients were accumulated in fp32 (cuBLAS weight-gradient GEMMs
// with CUDA_R_32F output).
extern "C" __global__ void __launch_bounds__(sf::kThreads) adamw_step_bf16_f32grad(const sf_adamw_params p) {
    sf::adamw_step<sf::bf16, float>(p);
}
extern "C" __global__ void __launch_bounds__(sf::kThreads) grad_sumsq_f32(const sf_grad_sumsq_params p) {
    sf::grad_sumsq<float>(p);
}
extern "C" __global__ void __launch_bounds__(sf::kThreads) grad_sumsq_bf16(const sf_grad_sumsq_params p) {
    sf::grad_sumsq<sf::bf16>(p);
}
extern "C" __global__ void __launch_bounds__(sf::kThreads) clip_scale_f32(const sf_clip_scale_params p) {
    sf::clip_scale(p);
}
extern "C" __global__ void __launch_bounds__(sf::kThreads) ida_blend_f32(const sf_ida_blend_params p) {
    sf::ida_blend<float>(p);
}
extern "C" __global__ void __launch_bounds__(sf::kThreads) ida_blend_bf16(const sf_ida_blend_params p) {
    sf::ida_blend<sf::bf16>(p);
}

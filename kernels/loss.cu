// Per-sample losses: mean over each row (one row per sample) of an elementwise loss, fp32.
//   mse:          (p - t)^2                     dl/dp = 2 (p - t)
//   pseudo_huber: sqrt((p - t)^2 + c^2) - c     dl/dp = (p - t) / sqrt((p - t)^2 + c^2)
//   hinge:        max(0, 1 - sign * p)          dl/dp = -sign where 1 - sign * p > 0, else 0
//
// Invariants:
// - Forward: one block per row, fp32 block reduction, loss[r] = sum / cols. The caller
//   combines rows (mean, per-sample weights) with ordinary ops.
// - Backward: one thread per element, dpred = dloss[r] / cols * dl/dp and dtarget = -dpred
//   (hinge has no target). At the hinge's kink (1 - sign * p == 0) the gradient is 0, as
//   torch's relu backward gives.
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;
static_assert(kThreads % kWarp == 0, "block reductions need whole warps");

enum class Loss { Mse, PseudoHuber, Hinge };

template <Loss L>
__device__ __forceinline__ float loss_value(float p, float t, float c, float sign) {
    if constexpr (L == Loss::Mse) {
        const float d = p - t;
        return d * d;
    } else if constexpr (L == Loss::PseudoHuber) {
        const float d = p - t;
        return sqrtf(d * d + c * c) - c;
    } else {
        return fmaxf(0.f, 1.f - sign * p);
    }
}

template <Loss L>
__device__ __forceinline__ float loss_grad(float p, float t, float c, float sign) {
    if constexpr (L == Loss::Mse) {
        return 2.f * (p - t);
    } else if constexpr (L == Loss::PseudoHuber) {
        const float d = p - t;
        return d / sqrtf(d * d + c * c);
    } else {
        return 1.f - sign * p > 0.f ? -sign : 0.f;
    }
}

template <typename T, Loss L>
__device__ __forceinline__ void loss_fwd(const sf_loss_fwd_params& p) {
    __shared__ float scratch[32];
    for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        float acc = 0.f;
        for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
            const float pv = load<T>(p.pred, r * p.pred_row_stride + c);
            const float tv = L == Loss::Hinge ? 0.f : load<T>(p.target, r * p.target_row_stride + c);
            acc += loss_value<L>(pv, tv, p.c, p.sign);
        }
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) p.loss[r] = acc / static_cast<float>(p.cols);
    }
}

template <typename T, Loss L>
__device__ __forceinline__ void loss_bwd(const sf_loss_bwd_params& p) {
    const int64_t n = p.rows * p.cols;
    const float inv = 1.f / static_cast<float>(p.cols);
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t r = i / p.cols, c = i % p.cols;
        const float pv = load<T>(p.pred, r * p.pred_row_stride + c);
        const float tv = L == Loss::Hinge ? 0.f : load<T>(p.target, r * p.target_row_stride + c);
        const float g = p.dloss[r] * inv * loss_grad<L>(pv, tv, p.c, p.sign);
        if (p.dpred != nullptr) store<T>(p.dpred, i, g);
        if (L != Loss::Hinge && p.dtarget != nullptr) store<T>(p.dtarget, i, -g);
    }
}

}  // namespace sf

#define SF_LOSS(NAME, L, SUFFIX, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) NAME##_fwd_##SUFFIX(const sf_loss_fwd_params p) { \
        sf::loss_fwd<T, L>(p);                                                                         \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) NAME##_bwd_##SUFFIX(const sf_loss_bwd_params p) { \
        sf::loss_bwd<T, L>(p);                                                                         \
    }

SF_LOSS(mse, sf::Loss::Mse, f32, float)
SF_LOSS(mse, sf::Loss::Mse, bf16, sf::bf16)
SF_LOSS(pseudo_huber, sf::Loss::PseudoHuber, f32, float)
SF_LOSS(pseudo_huber, sf::Loss::PseudoHuber, bf16, sf::bf16)
SF_LOSS(hinge, sf::Loss::Hinge, f32, float)
SF_LOSS(hinge, sf::Loss::Hinge, bf16, sf::bf16)

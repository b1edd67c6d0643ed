// Normalizations: layer_norm, rms_norm, layer_norm + adaLN modulate (fused), group_norm, the
// adaLN-Zero gated residual, and colsum (the second stage of every parameter gradient).
//
// Invariants:
// - fp32 statistics: mean and variance by Welford/Chan merging (never E[x^2] - E[x]^2),
//   rstd = 1 / sqrtf(var + eps) with the biased variance, as torch.layer_norm.
// - Forward saves mean and rstd (fp32) per row / group for the backward.
// - Parameter gradients are two-stage and deterministic: each backward block writes its own
//   row of fp32 partial sums (rows of SF_NORM_BWD_ROWS_PER_BLOCK tokens, or one batch entry
//   for group_norm), then colsum_fwd sums the partials over blocks in a fixed order. No
//   atomics, so results are bitwise reproducible.
// - The row backward keeps its per-column partials in dynamic shared memory
//   (nparams * dim floats); the launcher raises the block's shared memory limit when that
//   exceeds 48 KB.
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;
constexpr int kBwdRows = SF_NORM_BWD_ROWS_PER_BLOCK;
static_assert(kThreads % kWarp == 0 && kThreads >= 64, "block reductions need whole warps");
static_assert(kBwdRows > 0, "rows per backward block");

__device__ __forceinline__ void block_sum2(float& a, float& b, float* scratch) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int warps = (blockDim.x + kWarp - 1) / kWarp;
    a = warp_sum(a);
    b = warp_sum(b);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = a;
        scratch[32 + warp] = b;
    }
    __syncthreads();
    a = warp_sum(lane < warps ? scratch[lane] : 0.f);
    b = warp_sum(lane < warps ? scratch[32 + lane] : 0.f);
}

// ---- row statistics -------------------------------------------------------------------

// (mean, rstd) of one row of `dim` elements at x + base; RMS: mean is 0, rstd from mean(x^2).
template <typename T, bool RMS>
__device__ __forceinline__ float2 row_stats(const void* x, int64_t base, int dim, float eps, float* scratch) {
    if constexpr (RMS) {
        float ss = 0.f;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            const float v = load<T>(x, base + d);
            ss += v * v;
        }
        ss = block_sum(ss, scratch);
        return make_float2(0.f, 1.f / sqrtf(ss / static_cast<float>(dim) + eps));
    } else {
        Welford w{0.f, 0.f, 0.f};
        for (int d = threadIdx.x; d < dim; d += blockDim.x) w.add(load<T>(x, base + d));
        w = block_welford(w, scratch);
        return make_float2(w.mean, 1.f / sqrtf(w.m2 / static_cast<float>(dim) + eps));
    }
}

// ---- layer_norm / rms_norm --------------------------------------------------------------

template <typename T, bool RMS>
__device__ __forceinline__ void norm_fwd(const sf_norm_fwd_params& p) {
    __shared__ float scratch[96];
    for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const int64_t xb = r * p.x_row_stride, yb = r * p.dim;
        const float2 st = row_stats<T, RMS>(p.x, xb, p.dim, p.eps, scratch);
        for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
            float v = (load<T>(p.x, xb + d) - st.x) * st.y;
            if (p.weight != nullptr) v *= load<T>(p.weight, d);
            if (!RMS && p.bias != nullptr) v += load<T>(p.bias, d);
            store<T>(p.y, yb + d, v);
        }
        if (threadIdx.x == 0) {
            if (!RMS) p.mean[r] = st.x;
            p.rstd[r] = st.y;
        }
    }
}

// Backward of a run of rows that share one "weight" row w (norm weight, or 1 + scale for
// the modulated norm). Accumulates sum(dy * xhat) and sum(dy) per column into shared memory
// (`acc_w`, `acc_b`, either may be null), and writes dx.
//   layer_norm: dx = rstd * (dyw - mean(dyw) - xhat * mean(dyw * xhat))
//   rms_norm:   dx = rstd * (dyw - xhat * mean(dyw * xhat))
template <typename T, bool RMS, bool ONE_PLUS>
__device__ __forceinline__ void norm_bwd_rows(const void* x, int64_t x_base, int64_t x_row_stride,
                                              const void* w, const void* dy, int64_t dy_base,
                                              const float* mean, const float* rstd, int64_t stat_base,
                                              void* dx, int rows, int dim, float* acc_w, float* acc_b,
                                              float* scratch) {
    const float inv_dim = 1.f / static_cast<float>(dim);
    for (int r = 0; r < rows; ++r) {
        const int64_t xb = x_base + r * x_row_stride, gb = dy_base + static_cast<int64_t>(r) * dim;
        const float mu = RMS ? 0.f : mean[stat_base + r];
        const float rs = rstd[stat_base + r];
        float s_dyw_xhat = 0.f, s_dyw = 0.f;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            const float xhat = (load<T>(x, xb + d) - mu) * rs;
            const float g = load<T>(dy, gb + d);
            float wd = w != nullptr ? load<T>(w, d) : 1.f;
            if (ONE_PLUS) wd += 1.f;
            const float dyw = g * wd;
            s_dyw_xhat += dyw * xhat;
            s_dyw += dyw;
            if (acc_w != nullptr) acc_w[d] += g * xhat;
            if (acc_b != nullptr) acc_b[d] += g;
        }
        block_sum2(s_dyw_xhat, s_dyw, scratch);
        const float a = s_dyw_xhat * inv_dim, b = RMS ? 0.f : s_dyw * inv_dim;
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {
            const float xhat = (load<T>(x, xb + d) - mu) * rs;
            float wd = w != nullptr ? load<T>(w, d) : 1.f;
            if (ONE_PLUS) wd += 1.f;
            const float dyw = load<T>(dy, gb + d) * wd;
            store<T>(dx, gb + d, rs * (dyw - b - xhat * a));
        }
    }
}

template <typename T, bool RMS>
__device__ __forceinline__ void norm_bwd(const sf_norm_bwd_params& p) {
    extern __shared__ float smem[];
    __shared__ float scratch[64];
    float* acc_w = p.dweight_partial != nullptr ? smem : nullptr;
    float* acc_b = p.dbias_partial != nullptr ? smem + (acc_w != nullptr ? p.dim : 0) : nullptr;
    for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
        if (acc_w != nullptr) acc_w[d] = 0.f;
        if (acc_b != nullptr) acc_b[d] = 0.f;
    }
    const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBwdRows;
    const int rows = static_cast<int>(min(static_cast<int64_t>(kBwdRows), p.rows - r0));
    // Each thread only ever touches its own columns of acc_w / acc_b, so no barrier is
    // needed between the zeroing above, the accumulation and the write-out below.
    norm_bwd_rows<T, RMS, false>(p.x, r0 * p.x_row_stride, p.x_row_stride, p.weight, p.dy, r0 * p.dim, p.mean, p.rstd,
                                 r0, p.dx, rows, p.dim, acc_w, acc_b, scratch);
    const int64_t pb = static_cast<int64_t>(blockIdx.x) * p.dim;
    for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
        if (acc_w != nullptr) p.dweight_partial[pb + d] = acc_w[d];
        if (acc_b != nullptr) p.dbias_partial[pb + d] = acc_b[d];
    }
}

// ---- colsum ----------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void colsum(const sf_colsum_params& p) {
    const int64_t n = static_cast<int64_t>(p.groups) * p.dim;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t g = i / p.dim, d = i % p.dim;
        const float* src = p.partial + g * p.chunks * p.dim + d;
        float acc = 0.f;
        for (int c = 0; c < p.chunks; ++c) acc += src[static_cast<int64_t>(c) * p.dim];
        const int64_t o = g * p.out_group_stride + d;
        if (p.accumulate) acc += load<T>(p.out, o);
        store<T>(p.out, o, acc);
    }
}

// ---- layer_norm + adaLN modulate ---------------------------------------------------------

template <typename T>
__device__ __forceinline__ void layernorm_modulate_fwd(const sf_layernorm_modulate_fwd_params& p) {
    __shared__ float scratch[96];
    const int64_t rows = static_cast<int64_t>(p.batch) * p.tokens;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const int64_t b = r / p.tokens, n = r % p.tokens;
        const int64_t xb = b * p.x_batch_stride + n * p.x_row_stride, yb = r * p.dim;
        const int64_t sh = b * p.shift_batch_stride, sc = b * p.scale_batch_stride;
        const float2 st = row_stats<T, false>(p.x, xb, p.dim, p.eps, scratch);
        for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
            const float xhat = (load<T>(p.x, xb + d) - st.x) * st.y;
            store<T>(p.y, yb + d, xhat * (1.f + load<T>(p.scale, sc + d)) + load<T>(p.shift, sh + d));
        }
        if (threadIdx.x == 0) {
            p.mean[r] = st.x;
            p.rstd[r] = st.y;
        }
    }
}

template <typename T>
__device__ __forceinline__ void layernorm_modulate_bwd(const sf_layernorm_modulate_bwd_params& p) {
    extern __shared__ float smem[];
    __shared__ float scratch[64];
    float* acc_scale = smem;
    float* acc_shift = smem + p.dim;
    for (int d = threadIdx.x; d < p.dim; d += blockDim.x) acc_scale[d] = acc_shift[d] = 0.f;
    const int b = blockIdx.y;
    const int n0 = blockIdx.x * kBwdRows;
    const int rows = min(kBwdRows, p.tokens - n0);
    const int64_t row0 = static_cast<int64_t>(b) * p.tokens + n0;
    const char* scale_row = static_cast<const char*>(p.scale) + b * p.scale_batch_stride * sizeof(T);
    norm_bwd_rows<T, false, true>(p.x, b * p.x_batch_stride + n0 * p.x_row_stride, p.x_row_stride, scale_row, p.dy,
                                  row0 * p.dim, p.mean, p.rstd, row0, p.dx, rows, p.dim, acc_scale, acc_shift, scratch);
    const int64_t pb = (static_cast<int64_t>(b) * gridDim.x + blockIdx.x) * p.dim;
    for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
        p.dscale_partial[pb + d] = acc_scale[d];
        p.dshift_partial[pb + d] = acc_shift[d];
    }
}

// ---- group_norm ---------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void groupnorm_fwd(const sf_groupnorm_fwd_params& p) {
    __shared__ float scratch[96];
    const int b = blockIdx.y, g = blockIdx.x;
    const int cpg = p.channels / p.groups;
    const int64_t m = static_cast<int64_t>(cpg) * p.spatial;
    const int64_t base = (static_cast<int64_t>(b) * p.channels + static_cast<int64_t>(g) * cpg) * p.spatial;
    Welford w{0.f, 0.f, 0.f};
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) w.add(load<T>(p.x, base + i));
    w = block_welford(w, scratch);
    const float mu = w.mean, rs = 1.f / sqrtf(w.m2 / static_cast<float>(m) + p.eps);
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
        const int c = g * cpg + static_cast<int>(i / p.spatial);
        float v = (load<T>(p.x, base + i) - mu) * rs;
        if (p.weight != nullptr) v *= load<T>(p.weight, c);
        if (p.bias != nullptr) v += load<T>(p.bias, c);
        store<T>(p.y, base + i, v);
    }
    if (threadIdx.x == 0) {
        p.mean[b * p.groups + g] = mu;
        p.rstd[b * p.groups + g] = rs;
    }
}

// dx = rstd * (dyw - mean(dyw) - xhat * mean(dyw * xhat)) over the group, dyw = dy * w[c].
template <typename T>
__device__ __forceinline__ void groupnorm_bwd(const sf_groupnorm_bwd_params& p) {
    __shared__ float scratch[64];
    const int b = blockIdx.y, g = blockIdx.x;
    const int cpg = p.channels / p.groups;
    const float mu = p.mean[b * p.groups + g], rs = p.rstd[b * p.groups + g];
    float a = 0.f, bb = 0.f;  // sums of dyw * xhat and dyw over the group (valid in every thread)
    for (int ci = 0; ci < cpg; ++ci) {
        const int c = g * cpg + ci;
        const int64_t base = (static_cast<int64_t>(b) * p.channels + c) * p.spatial;
        float s_xhat = 0.f, s_dy = 0.f;
        for (int64_t i = threadIdx.x; i < p.spatial; i += blockDim.x) {
            const float gy = load<T>(p.dy, base + i);
            s_xhat += gy * (load<T>(p.x, base + i) - mu) * rs;
            s_dy += gy;
        }
        block_sum2(s_xhat, s_dy, scratch);
        const float wc = p.weight != nullptr ? load<T>(p.weight, c) : 1.f;
        a += wc * s_xhat;
        bb += wc * s_dy;
        if (threadIdx.x == 0) {
            if (p.dweight_partial != nullptr) p.dweight_partial[static_cast<int64_t>(b) * p.channels + c] = s_xhat;
            if (p.dbias_partial != nullptr) p.dbias_partial[static_cast<int64_t>(b) * p.channels + c] = s_dy;
        }
    }
    const float inv_m = 1.f / (static_cast<float>(cpg) * static_cast<float>(p.spatial));
    a *= inv_m;
    bb *= inv_m;
    const int64_t m = static_cast<int64_t>(cpg) * p.spatial;
    const int64_t base = (static_cast<int64_t>(b) * p.channels + static_cast<int64_t>(g) * cpg) * p.spatial;
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
        const int c = g * cpg + static_cast<int>(i / p.spatial);
        const float wc = p.weight != nullptr ? load<T>(p.weight, c) : 1.f;
        const float xhat = (load<T>(p.x, base + i) - mu) * rs;
        store<T>(p.dx, base + i, rs * (load<T>(p.dy, base + i) * wc - bb - xhat * a));
    }
}

// ---- gated residual -------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void gated_residual_fwd(const sf_gated_residual_fwd_params& p) {
    const int64_t n = static_cast<int64_t>(p.batch) * p.tokens * p.dim;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t d = i % p.dim, r = i / p.dim;
        const int64_t b = r / p.tokens, t = r % p.tokens;
        const float x = load<T>(p.x, b * p.x_batch_stride + t * p.x_row_stride + d);
        const float y = load<T>(p.y, b * p.y_batch_stride + t * p.y_row_stride + d);
        store<T>(p.out, i, x + load<T>(p.gate, b * p.gate_batch_stride + d) * y);
    }
}

// Grid (ceil(N / kBwdRows), B); each thread owns columns d and walks the block's tokens.
template <typename T>
__device__ __forceinline__ void gated_residual_bwd(const sf_gated_residual_bwd_params& p) {
    const int b = blockIdx.y;
    const int n0 = blockIdx.x * kBwdRows;
    const int rows = min(kBwdRows, p.tokens - n0);
    const int64_t pb = (static_cast<int64_t>(b) * gridDim.x + blockIdx.x) * p.dim;
    for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
        const float gate = load<T>(p.gate, b * p.gate_batch_stride + d);
        float acc = 0.f;
        for (int r = 0; r < rows; ++r) {
            const int64_t t = n0 + r;
            const int64_t o = (static_cast<int64_t>(b) * p.tokens + t) * p.dim + d;
            const float g = load<T>(p.dout, o);
            acc += g * load<T>(p.y, b * p.y_batch_stride + t * p.y_row_stride + d);
            store<T>(p.dy, o, g * gate);
        }
        p.dgate_partial[pb + d] = acc;
    }
}

}  // namespace sf

#define SF_KERNEL(NAME, PARAMS, CALL) \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) NAME(const PARAMS p) { CALL(p); }

#define SF_NORM(SUFFIX, T)                                                                          \
    SF_KERNEL(layernorm_fwd_##SUFFIX, sf_norm_fwd_params, (sf::norm_fwd<T, false>))                 \
    SF_KERNEL(layernorm_bwd_##SUFFIX, sf_norm_bwd_params, (sf::norm_bwd<T, false>))                 \
    SF_KERNEL(rmsnorm_fwd_##SUFFIX, sf_norm_fwd_params, (sf::norm_fwd<T, true>))                    \
    SF_KERNEL(rmsnorm_bwd_##SUFFIX, sf_norm_bwd_params, (sf::norm_bwd<T, true>))                    \
    SF_KERNEL(colsum_fwd_##SUFFIX, sf_colsum_params, sf::colsum<T>)                                 \
    SF_KERNEL(layernorm_modulate_fwd_##SUFFIX, sf_layernorm_modulate_fwd_params, sf::layernorm_modulate_fwd<T>) \
    SF_KERNEL(layernorm_modulate_bwd_##SUFFIX, sf_layernorm_modulate_bwd_params, sf::layernorm_modulate_bwd<T>) \
    SF_KERNEL(groupnorm_fwd_##SUFFIX, sf_groupnorm_fwd_params, sf::groupnorm_fwd<T>)                \
    SF_KERNEL(groupnorm_bwd_##SUFFIX, sf_groupnorm_bwd_params, sf::groupnorm_bwd<T>)                \
    SF_KERNEL(gated_residual_fwd_##SUFFIX, sf_gated_residual_fwd_params, sf::gated_residual_fwd<T>) \
    SF_KERNEL(gated_residual_bwd_##SUFFIX, sf_gated_residual_bwd_params, sf::gated_residual_bwd<T>)

SF_NORM(f32, float)
SF_NORM(bf16, sf::bf16)

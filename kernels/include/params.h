// Kernel parameter structs, shared by the CUDA kernels and the Rust launchers (build.rs runs
// bindgen on this file, so each struct is defined exactly once).
//
// Conventions:
// - One plain struct per kernel direction, passed by value as the kernel's only argument.
//   Kernel names are `{op}_{direction}_{dtype}`; the dtype suffix says what `void*` element
//   pointers point to (bf16 or f32). Statistics, partial sums and RNG/optimizer state are
//   always f32 and typed as such.
// - Strides and element counts are in elements (int64_t); the innermost dimension of every
//   strided tensor has unit stride. Outputs are contiguous unless the struct gives strides.
// - Shapes are in comments: `// [B, N, H, D]`. NULL marks an absent optional tensor.
// - Launch constants the host needs for grid math (`SF_*` defines) live here too; the .cu
//   files derive their constexpr tile traits from them and static_assert the invariants.
// - Plain C11 so that bindgen parses it without CUDA headers; nothing here may depend on
//   the compiler being nvcc.
#pragma once

#include <stdint.h>

// Broadcasting binary ops support up to this many dimensions.
#define SF_MAX_DIMS 6

// Threads per block of the generic elementwise, row and reduction kernels.
#define SF_BLOCK_THREADS 256

// Rows (tokens) one block of a norm / gated-residual backward reduces into its partial sums
// for the parameter gradients; the host sizes the partial buffers with it.
#define SF_NORM_BWD_ROWS_PER_BLOCK 64

// Elements per block of the multi-tensor optimizer kernels (AdamW, IDA blend, grad norm).
#define SF_MULTI_TENSOR_CHUNK 65536

// Flash attention on tensor cores (bf16, head dims 64 and 128): query and key tile rows.
#define SF_ATTN_TC_BLOCK_M 64
#define SF_ATTN_TC_BLOCK_N 64
#define SF_ATTN_TC_THREADS 128
// SIMT attention (f32, and bf16 with other head dims): one warp per query (or key) row,
// head dim at most SF_ATTN_SIMT_MAX_D.
#define SF_ATTN_SIMT_WARPS 4
#define SF_ATTN_SIMT_MAX_D 512

// ---------------------------------------------------------------------------------------
// elementwise.cu

typedef enum sf_unary_op {
    SF_UNARY_EXP = 0,
    SF_UNARY_LOG = 1,
    SF_UNARY_SQRT = 2,
    SF_UNARY_RSQRT = 3,
    SF_UNARY_TANH = 4,
    SF_UNARY_SIGMOID = 5,
    SF_UNARY_SILU = 6,
    SF_UNARY_GELU_ERF = 7,   // 0.5 x (1 + erf(x / sqrt 2))
    SF_UNARY_GELU_TANH = 8,  // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    SF_UNARY_QUICK_GELU = 9, // x sigmoid(1.702 x)
    SF_UNARY_RELU = 10,
    SF_UNARY_LEAKY_RELU = 11, // slope in `alpha`
    SF_UNARY_SQR = 12,
    SF_UNARY_ABS = 13,
} sf_unary_op;

// unary_fwd_{dtype}: y = f(x).
typedef struct sf_unary_fwd_params {
    const void* x; // [n]
    void* y;       // [n]
    int64_t n;
    int32_t op;  // sf_unary_op
    float alpha; // leaky_relu slope
} sf_unary_fwd_params;

// unary_bwd_{dtype}: dx = dy * f'(x) (f recomputed from x: one read less than loading y).
typedef struct sf_unary_bwd_params {
    const void* x;  // [n]
    const void* dy; // [n]
    void* dx;       // [n]
    int64_t n;
    int32_t op;
    float alpha;
} sf_unary_bwd_params;

// affine_fwd_{dtype}: y = x * scale + shift. Its backward is affine with shift 0.
typedef struct sf_affine_params {
    const void* x; // [n]
    void* y;       // [n]
    int64_t n;
    float scale;
    float shift;
} sf_affine_params;

// cast_bf16_to_f32 / cast_f32_to_bf16 (round to nearest even): each is the other's backward.
typedef struct sf_cast_params {
    const void* x; // [n]
    void* y;       // [n]
    int64_t n;
} sf_cast_params;

typedef enum sf_binary_op {
    SF_BINARY_ADD = 0,
    SF_BINARY_SUB = 1,
    SF_BINARY_MUL = 2,
    SF_BINARY_DIV = 3,
} sf_binary_op;

// binary_fwd_{dtype}: out = a op b with NumPy broadcasting. Shapes are right-aligned and
// padded to `rank` dims; a stride is 0 along every dim the operand is broadcast over.
typedef struct sf_binary_fwd_params {
    const void* a;
    const void* b;
    void* out;      // [shape...] contiguous
    int64_t n;      // elements of out
    int32_t op;     // sf_binary_op
    int32_t rank;   // 1..=SF_MAX_DIMS
    int32_t contiguous; // 1: a, b and out all contiguous with the same shape (vectorized path)
    int64_t shape[SF_MAX_DIMS];     // out shape
    int64_t a_strides[SF_MAX_DIMS]; // a's storage strides seen from out dims (0: broadcast)
    int64_t b_strides[SF_MAX_DIMS];
} sf_binary_fwd_params;

// binary_bwd_{dtype}: da = sum over a's broadcast dims of dout * d(a op b)/da, likewise db.
// grid.y = 2: y = 0 writes da, y = 1 writes db (skipped when the pointer is NULL). Each
// thread owns one gradient element and sums its broadcast positions in a fixed order
// (deterministic, no atomics).
typedef struct sf_binary_bwd_params {
    const void* a;
    const void* b;
    const void* dout; // [shape...] contiguous
    void* da;         // [a_shape...] contiguous, or NULL
    void* db;         // [b_shape...] contiguous, or NULL
    int64_t na;       // elements of da
    int64_t nb;
    int32_t op;
    int32_t rank;
    int64_t shape[SF_MAX_DIMS];
    int64_t a_shape[SF_MAX_DIMS]; // padded with leading 1s to `rank`
    int64_t b_shape[SF_MAX_DIMS];
    int64_t a_strides[SF_MAX_DIMS]; // as in the forward
    int64_t b_strides[SF_MAX_DIMS];
} sf_binary_bwd_params;

// ---------------------------------------------------------------------------------------
// reduce.cu: reductions over the last axis; the host permutes reduced axes there first.

typedef enum sf_reduce_op {
    SF_REDUCE_SUM = 0,
    SF_REDUCE_MEAN = 1,
    SF_REDUCE_MAX = 2, // NaN propagates; ties go to the first index (like torch.max)
} sf_reduce_op;

// reduce_fwd_{dtype}: one warp per row; fp32 accumulation.
typedef struct sf_reduce_fwd_params {
    const void* x;    // [rows, cols]; row r at x + r * row_stride
    void* out;        // [rows]
    int32_t* argmax;  // [rows] (MAX only; NULL when not needed)
    int64_t rows;
    int64_t cols;
    int64_t row_stride;
    int32_t op;
} sf_reduce_fwd_params;

// reduce_bwd_{dtype}: SUM/MEAN broadcast dout (/ cols); MAX routes dout to the argmax.
typedef struct sf_reduce_bwd_params {
    const void* dout;       // [rows]
    const int32_t* argmax;  // [rows] (MAX)
    void* dx;               // [rows, cols] contiguous
    int64_t rows;
    int64_t cols;
    int32_t op;
} sf_reduce_bwd_params;

// ---------------------------------------------------------------------------------------
// softmax.cu: softmax over the last axis.

typedef struct sf_softmax_fwd_params {
    const void* x; // [rows, cols]; row r at x + r * x_row_stride
    void* y;       // [rows, cols] contiguous
    int64_t rows;
    int64_t cols;
    int64_t x_row_stride;
} sf_softmax_fwd_params;

// dx = y * (dy - sum(dy * y)) per row.
typedef struct sf_softmax_bwd_params {
    const void* y;  // [rows, cols] contiguous
    const void* dy; // [rows, cols] contiguous
    void* dx;       // [rows, cols] contiguous
    int64_t rows;
    int64_t cols;
} sf_softmax_bwd_params;

// ---------------------------------------------------------------------------------------
// norm.cu

// layernorm_fwd_{dtype} / rmsnorm_fwd_{dtype}: one block per row.
//   layer_norm: y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps) (biased var)
//   rms_norm:   y = x * rstd * weight,                 rstd = 1 / sqrt(mean(x^2) + eps)
typedef struct sf_norm_fwd_params {
    const void* x;      // [rows, dim]; row r at x + r * x_row_stride
    const void* weight; // [dim] or NULL
    const void* bias;   // [dim] or NULL (layer_norm only)
    void* y;            // [rows, dim] contiguous
    float* mean;        // [rows] (layer_norm; unused by rms_norm)
    float* rstd;        // [rows]
    int64_t rows;
    int64_t x_row_stride;
    int32_t dim;
    float eps;
} sf_norm_fwd_params;

// layernorm_bwd_{dtype} / rmsnorm_bwd_{dtype}: block b handles rows
// [b * SF_NORM_BWD_ROWS_PER_BLOCK, ...) and writes its sums of dy * xhat and dy into row b of
// the partial buffers; colsum_fwd_{dtype} then sums the partials into dweight / dbias.
typedef struct sf_norm_bwd_params {
    const void* x;         // [rows, dim]; row r at x + r * x_row_stride
    const void* weight;    // [dim] or NULL
    const void* dy;        // [rows, dim] contiguous
    const float* mean;     // [rows] (layer_norm)
    const float* rstd;     // [rows]
    void* dx;              // [rows, dim] contiguous
    float* dweight_partial; // [ceil(rows / SF_NORM_BWD_ROWS_PER_BLOCK), dim] or NULL
    float* dbias_partial;   // same shape, or NULL (layer_norm with bias only)
    int64_t rows;
    int64_t x_row_stride;
    int32_t dim;
} sf_norm_bwd_params;

// colsum_fwd_{dtype}: out[g, d] (+)= sum_c partial[g, c, d], in a fixed order (deterministic).
typedef struct sf_colsum_params {
    const float* partial; // [groups, chunks, dim] contiguous
    void* out;            // [groups, dim]; row g at out + g * out_group_stride
    int64_t out_group_stride;
    int32_t groups;
    int32_t chunks;
    int32_t dim;
    int32_t accumulate; // 1: out += sum (gradient accumulation); 0: out = sum
} sf_colsum_params;

// layernorm_modulate_fwd_{dtype}: adaLN-Zero's modulated norm, fused:
//   y[b, n] = layer_norm(x[b, n]) * (1 + scale[b]) + shift[b]   (no elementwise affine)
typedef struct sf_layernorm_modulate_fwd_params {
    const void* x;     // [B, N, D]; token (b, n) at x + b * x_batch_stride + n * x_row_stride
    const void* shift; // [B, D]; row b at shift + b * shift_batch_stride
    const void* scale; // [B, D]; row b at scale + b * scale_batch_stride
    void* y;           // [B, N, D] contiguous
    float* mean;       // [B, N]
    float* rstd;       // [B, N]
    int64_t x_batch_stride;
    int64_t x_row_stride;
    int64_t shift_batch_stride;
    int64_t scale_batch_stride;
    int32_t batch;
    int32_t tokens;
    int32_t dim;
    float eps;
} sf_layernorm_modulate_fwd_params;

// layernorm_modulate_bwd_{dtype}: grid (ceil(N / SF_NORM_BWD_ROWS_PER_BLOCK), B). dx via the
// layer-norm backward of dy * (1 + scale); dshift = sum_n dy, dscale = sum_n dy * xhat, as
// partials [B, chunks, D] for colsum_fwd (groups = B).
typedef struct sf_layernorm_modulate_bwd_params {
    const void* x;     // [B, N, D] as in the forward
    const void* scale; // [B, D] as in the forward
    const void* dy;    // [B, N, D] contiguous
    const float* mean; // [B, N]
    const float* rstd; // [B, N]
    void* dx;          // [B, N, D] contiguous
    float* dshift_partial; // [B, ceil(N / SF_NORM_BWD_ROWS_PER_BLOCK), D]
    float* dscale_partial; // same
    int64_t x_batch_stride;
    int64_t x_row_stride;
    int64_t scale_batch_stride;
    int32_t batch;
    int32_t tokens;
    int32_t dim;
} sf_layernorm_modulate_bwd_params;

// groupnorm_fwd_{dtype}: one block per (batch, group); channels % groups == 0.
typedef struct sf_groupnorm_fwd_params {
    const void* x;      // [B, C, S] contiguous (S = H * W)
    const void* weight; // [C] or NULL
    const void* bias;   // [C] or NULL
    void* y;            // [B, C, S]
    float* mean;        // [B, G]
    float* rstd;        // [B, G]
    int64_t spatial;
    int32_t batch;
    int32_t channels;
    int32_t groups;
    float eps;
} sf_groupnorm_fwd_params;

// groupnorm_bwd_{dtype}: one block per (batch, group). Per-channel sums of dy * xhat and dy
// go to partial[b, c]; colsum_fwd (groups = 1, chunks = B, dim = C) finishes dweight/dbias.
typedef struct sf_groupnorm_bwd_params {
    const void* x;      // [B, C, S]
    const void* weight; // [C] or NULL
    const void* dy;     // [B, C, S]
    const float* mean;  // [B, G]
    const float* rstd;  // [B, G]
    void* dx;           // [B, C, S]
    float* dweight_partial; // [B, C] or NULL
    float* dbias_partial;   // [B, C] or NULL
    int64_t spatial;
    int32_t batch;
    int32_t channels;
    int32_t groups;
} sf_groupnorm_bwd_params;

// gated_residual_fwd_{dtype}: out[b, n] = x[b, n] + gate[b] * y[b, n]  (adaLN-Zero gates).
typedef struct sf_gated_residual_fwd_params {
    const void* x;    // [B, N, D] strided
    const void* y;    // [B, N, D] strided
    const void* gate; // [B, D]; row b at gate + b * gate_batch_stride
    void* out;        // [B, N, D] contiguous
    int64_t x_batch_stride;
    int64_t x_row_stride;
    int64_t y_batch_stride;
    int64_t y_row_stride;
    int64_t gate_batch_stride;
    int32_t batch;
    int32_t tokens;
    int32_t dim;
} sf_gated_residual_fwd_params;

// gated_residual_bwd_{dtype}: dx = dout (the caller reuses dout), dy = dout * gate,
// dgate = sum_n dout * y as partials [B, chunks, D]; grid as layernorm_modulate_bwd.
typedef struct sf_gated_residual_bwd_params {
    const void* y;    // [B, N, D] strided as in the forward
    const void* gate; // [B, D]
    const void* dout; // [B, N, D] contiguous
    void* dy;         // [B, N, D] contiguous
    float* dgate_partial; // [B, ceil(N / SF_NORM_BWD_ROWS_PER_BLOCK), D]
    int64_t y_batch_stride;
    int64_t y_row_stride;
    int64_t gate_batch_stride;
    int32_t batch;
    int32_t tokens;
    int32_t dim;
} sf_gated_residual_bwd_params;

// ---------------------------------------------------------------------------------------
// rope.cu: FLUX rotary embedding on interleaved pairs (x[2i], x[2i+1]):
//   fwd: out0 = cos * x0 - sin * x1,  out1 = sin * x0 + cos * x1
//   bwd: the rotation by -angle (same struct; `x` holds dout, `out` receives dx).
typedef struct sf_rope_params {
    const void* x;   // [B, H, N, D]; D even
    const float* cos; // [B, N, D / 2]; (b, n, i) at cos + b * rope_batch_stride + n * (D / 2) + i
    const float* sin; // same layout as cos
    void* out;       // [B, H, N, D] contiguous
    int64_t x_batch_stride;
    int64_t x_head_stride;
    int64_t x_row_stride;
    int64_t rope_batch_stride; // 0 when all batch entries share one table
    int32_t batch;
    int32_t heads;
    int32_t tokens;
    int32_t dim;
} sf_rope_params;

// ---------------------------------------------------------------------------------------
// loss.cu: per-row means of elementwise losses (rows = samples), fp32 results:
//   mse:          (p - t)^2
//   pseudo_huber: sqrt((p - t)^2 + c^2) - c
//   hinge:        max(0, 1 - sign * p)   (sign +1: real logits, -1: fake logits; no target)
typedef struct sf_loss_fwd_params {
    const void* pred;   // [rows, cols]; row r at pred + r * pred_row_stride
    const void* target; // [rows, cols]; row r at target + r * target_row_stride (NULL: hinge)
    float* loss;        // [rows]
    int64_t rows;
    int64_t cols;
    int64_t pred_row_stride;
    int64_t target_row_stride;
    float c;
    float sign;
} sf_loss_fwd_params;

// {mse,pseudo_huber,hinge}_bwd_{dtype}: dpred = dloss[r] / cols * dl/dp, dtarget = -dpred.
typedef struct sf_loss_bwd_params {
    const void* pred;
    const void* target;
    const float* dloss; // [rows]
    void* dpred;        // [rows, cols] contiguous, or NULL
    void* dtarget;      // [rows, cols] contiguous, or NULL
    int64_t rows;
    int64_t cols;
    int64_t pred_row_stride;
    int64_t target_row_stride;
    float c;
    float sign;
} sf_loss_bwd_params;

// ---------------------------------------------------------------------------------------
// rng.cu: Philox4x32-10 fills, element i a pure function of (seed, offset, i) exactly as in
// src/rng/mod.rs (see include/philox.cuh). The host advances its offset by ceil(n / 4).
//   rng_uniform_{dtype}:      lo + (hi - lo) * u, u in (0, 1)  (bit-identical to the CPU in f32)
//   rng_normal_{dtype}:       z ~ N(0, 1)
//   rng_logit_normal_{dtype}: sigmoid(mean + std * z)
typedef struct sf_rng_params {
    void* out; // [n]
    int64_t n;
    uint64_t seed;
    uint64_t offset;
    float lo;
    float hi;
    float mean;
    float std_dev;
} sf_rng_params;

// ---------------------------------------------------------------------------------------
// optim.cu: multi-tensor kernels. The host uploads a table of tensors and the prefix sums of
// their chunk counts (ceil(n / SF_MULTI_TENSOR_CHUNK)); block i finds its tensor by binary
// search, so one launch updates every parameter.

// One parameter of an AdamW step. `param` is the low-precision model copy (NULL when the
// master weights are the parameters themselves, as in f32 runs).
typedef struct sf_adamw_tensor {
    float* master;     // [n] fp32 master weights
    void* param;       // [n] model copy in the kernel's param dtype, or NULL
    const void* grad;  // [n] in the kernel's grad dtype
    float* exp_avg;    // [n] first moment
    float* exp_avg_sq; // [n] second moment
    int64_t n;
} sf_adamw_tensor;

// adamw_step_{param dtype}[_f32grad]: PyTorch AdamW (decoupled weight decay):
//   g = grad * grad_scale; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2
//   w = w (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps)
typedef struct sf_adamw_params {
    const sf_adamw_tensor* tensors; // [num_tensors]
    const int64_t* chunk_starts;    // [num_tensors + 1]
    const float* grad_scale;        // device scalar (clipping), or NULL for 1
    int32_t num_tensors;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float bias_correction1; // 1 - beta1^step, from the host in f64
    float bias_correction2; // 1 - beta2^step
} sf_adamw_params;

// A read-only tensor in a multi-tensor table.
typedef struct sf_tensor_ref {
    const void* data; // [n]
    int64_t n;
} sf_tensor_ref;

// grad_sumsq_{dtype}: partial[i] = sum of squares of chunk i (fp32), for the global norm.
typedef struct sf_grad_sumsq_params {
    const sf_tensor_ref* tensors; // [num_tensors]
    const int64_t* chunk_starts;  // [num_tensors + 1]
    float* partial;               // [chunk_starts[num_tensors]]
    int32_t num_tensors;
} sf_grad_sumsq_params;

// clip_scale_f32 (one block): norm = sqrt(sum partial) (fixed order, f64 accumulation);
// scale = min(1, max_norm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_.
typedef struct sf_clip_scale_params {
    const float* partial; // [count]
    int64_t count;
    float max_norm;
    float* norm;  // [1]
    float* scale; // [1]
} sf_clip_scale_params;

// One pair of an IDA blend: dst <- lambda * dst + (1 - lambda) * src.
typedef struct sf_blend_tensor {
    float* dst_master; // [n] fp32 master weights of the fake score (phi)
    void* dst_param;   // [n] its model copy in the kernel dtype, or NULL
    const float* src;  // [n] fp32 master weights of the generator (theta)
    int64_t n;
} sf_blend_tensor;

// ida_blend_{dtype}: phi <- lambda * phi + (1 - lambda) * theta for every pair.
typedef struct sf_ida_blend_params {
    const sf_blend_tensor* tensors; // [num_tensors]
    const int64_t* chunk_starts;    // [num_tensors + 1]
    int32_t num_tensors;
    float lambda;
} sf_ida_blend_params;

// ---------------------------------------------------------------------------------------
// embedding.cu

// embedding_fwd_{dtype}: out[i] = table[ids[i]]; ids outside [0, vocab) give zeros.
typedef struct sf_embedding_fwd_params {
    const int32_t* ids; // [count]
    const void* table;  // [vocab, dim]
    void* out;          // [count, dim]
    int64_t count;
    int32_t vocab;
    int32_t dim;
} sf_embedding_fwd_params;

// embedding_bwd_{dtype}: dtable[id] (+)= sum of dout[i] over positions i with ids[i] == id.
// The host groups positions by id (CSR), so each block owns one table row: deterministic,
// no atomics. Rows of ids that do not occur are not touched.
typedef struct sf_embedding_bwd_params {
    const int32_t* unique_ids; // [num_unique]
    const int32_t* offsets;    // [num_unique + 1] into positions
    const int32_t* positions;  // [count], ascending within each id
    const void* dout;          // [count, dim]
    void* dtable;              // [vocab, dim]
    int32_t num_unique;
    int32_t dim;
    int32_t accumulate; // 1: dtable += sum; 0: dtable = sum
} sf_embedding_bwd_params;

// timestep_embedding_fwd_{dtype}: diffusers get_timestep_embedding (float32 math):
//   half = dim / 2, freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift)),
//   e = scale * t * freq, out = [sin e, cos e] (or [cos e, sin e] with flip_sin_to_cos),
//   zero-padded when dim is odd. No backward: timesteps are not differentiated.
typedef struct sf_timestep_embedding_params {
    const float* t; // [B]
    void* out;      // [B, dim]
    int32_t batch;
    int32_t dim;
    int32_t flip_sin_to_cos;
    float downscale_freq_shift;
    float scale;
    float max_period;
} sf_timestep_embedding_params;

// ---------------------------------------------------------------------------------------
// conv.cu: convolution as im2col + cuBLAS GEMM: y[b] = W [Cout, C*KH*KW] @ col[b].

typedef struct sf_conv_geometry {
    int32_t batch;
    int32_t channels;
    int32_t height;
    int32_t width;
    int32_t kernel_h;
    int32_t kernel_w;
    int32_t stride_h;
    int32_t stride_w;
    int32_t pad_h;
    int32_t pad_w;
    int32_t dilation_h;
    int32_t dilation_w;
    int32_t out_h;
    int32_t out_w;
} sf_conv_geometry;

// im2col_fwd_{dtype}: col[b, (c, kh, kw), (oh, ow)] = x[b, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
// (zero outside the image).
typedef struct sf_im2col_params {
    const void* x;          // [B, C, H, W]; strides below
    void* col;              // [B, C * KH * KW, OH * OW] contiguous
    int64_t x_strides[4];
    sf_conv_geometry g;
} sf_im2col_params;

// im2col_bwd_{dtype} (col2im): dx[b, c, h, w] = sum of the col entries that read x[b, c, h, w];
// one thread per dx element gathers them (deterministic).
typedef struct sf_col2im_params {
    const void* col; // [B, C * KH * KW, OH * OW] contiguous
    void* dx;        // [B, C, H, W] contiguous
    sf_conv_geometry g;
} sf_col2im_params;

// ---------------------------------------------------------------------------------------
// upsample.cu: nearest-neighbour upsampling by integer factors (torch
// interpolate(mode="nearest", scale_factor=s) with integer s).
typedef struct sf_upsample_nearest_fwd_params {
    const void* x; // [B, C, H, W]; strides below
    void* y;       // [B, C, H * scale_h, W * scale_w] contiguous
    int64_t x_strides[4];
    int32_t batch;
    int32_t channels;
    int32_t height;
    int32_t width;
    int32_t scale_h;
    int32_t scale_w;
} sf_upsample_nearest_fwd_params;

// upsample_nearest_bwd_{dtype}: dx[b, c, h, w] = sum of its scale_h x scale_w block of dy.
typedef struct sf_upsample_nearest_bwd_params {
    const void* dy; // [B, C, H * scale_h, W * scale_w] contiguous
    void* dx;       // [B, C, H, W] contiguous
    int32_t batch;
    int32_t channels;
    int32_t height;
    int32_t width;
    int32_t scale_h;
    int32_t scale_w;
} sf_upsample_nearest_bwd_params;

// ---------------------------------------------------------------------------------------
// attention.cu: softmax(scale * Q K^T + mask) V per (batch, head), no dropout, not causal.
// Each of q, k, v, o (and do, dq, dk, dv) has its own batch / head / row strides, so both
// [B, N, H, D] (fused-QKV projections) and [B, H, N, D] layouts work without copies. Rows of
// the tensor-core kernels must be 16-byte aligned (row strides and bases multiples of 8
// elements). Query rows whose keys are all masked produce zeros and lse = -inf.

typedef struct sf_attn_strides {
    int64_t batch;
    int64_t head;
    int64_t row;
} sf_attn_strides;

// attn_fwd_bf16_d{64,128} (tensor cores), attn_fwd_{f32,bf16_simt} (SIMT, any D <= 512).
typedef struct sf_attn_fwd_params {
    const void* q;           // [B, H, Nq, D] (strided)
    const void* k;           // [B, H, Nk, D]
    const void* v;           // [B, H, Nk, D]
    void* o;                 // [B, H, Nq, D]
    float* lse;              // [B, H, Nq] contiguous: natural-log sum of exp(scale * q.k)
    const uint8_t* key_mask; // [B, Nk], nonzero = attend; row b at key_mask + b * mask_batch_stride; NULL = all
    sf_attn_strides q_strides;
    sf_attn_strides k_strides;
    sf_attn_strides v_strides;
    sf_attn_strides o_strides;
    int64_t mask_batch_stride;
    int32_t batch;
    int32_t heads;
    int32_t q_len;
    int32_t kv_len;
    int32_t head_dim;
    float scale;
} sf_attn_fwd_params;

// attn_bwd_preprocess_{dtype}: delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d].
// attn_bwd_dq_* (one block per query tile): dQ = scale * sum_j dS_ij K_j.
// attn_bwd_dkdv_* (one block per key tile): dV = P^T dO, dK = scale * dS^T Q.
// with P = exp(scale * Q K^T - lse), dS = P * (dO V^T - delta). The two passes recompute P
// instead of accumulating dQ with atomics: deterministic, at the cost of recomputing S and dP.
typedef struct sf_attn_bwd_params {
    const void* q;
    const void* k;
    const void* v;
    const void* o;           // [B, H, Nq, D]
    const void* dout;        // [B, H, Nq, D]
    const float* lse;        // [B, H, Nq] from the forward
    float* delta;            // [B, H, Nq] written by the preprocess kernel
    void* dq;                // [B, H, Nq, D]
    void* dk;                // [B, H, Nk, D]
    void* dv;                // [B, H, Nk, D]
    const uint8_t* key_mask; // as in the forward
    sf_attn_strides q_strides;
    sf_attn_strides k_strides;
    sf_attn_strides v_strides;
    sf_attn_strides o_strides;
    sf_attn_strides do_strides;
    sf_attn_strides dq_strides;
    sf_attn_strides dk_strides;
    sf_attn_strides dv_strides;
    int64_t mask_batch_stride;
    int32_t batch;
    int32_t heads;
    int32_t q_len;
    int32_t kv_len;
    int32_t head_dim;
    float scale;
} sf_attn_bwd_params;

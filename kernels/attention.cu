// Attention: softmax(scale * Q K^T, masked) V per (batch, head), forward and backward.
//
// Kernels:
// - attn_fwd_bf16_d{64,128}: FlashAttention-2 forward on tensor cores. One block of 4 warps
//   per 64-query tile; each warp owns 16 query rows. K and V tiles stream through shared
//   memory with cp.async (V of tile j loads while S_j = Q K_j^T is computed, K of tile j+1
//   while softmax and P V_j run). mma.sync m16n8k16 bf16 -> fp32 via inline PTX, operands
//   through ldmatrix from XOR-swizzled shared memory, online softmax in the exp2 domain,
//   P kept in registers (the accumulator layout of S is the A-operand layout of P V).
// - attn_bwd_preprocess_*: delta = rowsum(dO * O).
// - attn_bwd_dq_bf16_d* (per query tile) and attn_bwd_dkdv_bf16_d* (per key tile): the
//   backward on tensor cores as two passes that each recompute P = exp(scale S - lse) and
//   dP = dO V^T. Compared with FA2's single pass with atomic dQ accumulation this costs two
//   extra GEMMs per tile pair but needs no fp32 dQ buffer, no atomics, and is bitwise
//   deterministic. Every operand stays in the MMA register layouts, so no transpose goes
//   through shared memory.
// - *_f32 and *_bf16_simt: SIMT kernels (one warp per query / key row, head_dim up to
//   SF_ATTN_SIMT_MAX_D), the f32 path for parity tests and the fallback for other head dims.
//
// Invariants:
// - fp32 accumulation and softmax everywhere; P and dS are rounded to bf16 only as MMA
//   inputs (as FA2 does).
// - lse is saved in natural log; masked keys (beyond kv_len, or key_mask == 0) get P = 0.
//   Query rows with every key masked produce O = 0, lse = -inf and zero gradients (torch's
//   SDPA would give NaN there).
// - Query/key tails that are not tile multiples are zero-filled on load and never stored.
// - Tensor-core kernels need 16-byte aligned rows (the launcher checks); only the innermost
//   dimension must be contiguous.
// - Tile sizes are unmeasured first choices (64 x 64, 4 warps), kept as constexpr with
//   static_asserts; tune them with measurements before trusting their performance.
#include "common.cuh"

namespace sf {
namespace attn {

constexpr int kBlockM = SF_ATTN_TC_BLOCK_M;
constexpr int kBlockN = SF_ATTN_TC_BLOCK_N;
constexpr int kThreads = SF_ATTN_TC_THREADS;
constexpr int kWarps = kThreads / kWarp;
static_assert(kThreads % kWarp == 0, "whole warps");
static_assert(kBlockM == 16 * kWarps, "forward / dq: each warp owns one m16 row tile of queries");
static_assert(kBlockN == 16 * kWarps, "dkdv: each warp owns one m16 row tile of keys");
static_assert(kBlockN % 16 == 0 && kBlockM % 16 == 0, "tiles are whole MMA k-steps");

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- PTX wrappers ------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// D = A B + D for one m16n8k16 tile: bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16-byte global -> shared copy; zero-fills the destination when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<const uint32_t*>(&v);
}

// ---- shared-memory tiles ------------------------------------------------------------------

// A tile of ROWS x D bf16, rows of D / 8 16-byte chunks; chunk c of row r is stored at chunk
// c ^ (r & 7), so the 8 rows an ldmatrix phase reads hit 8 different bank groups.
template <int D>
struct Tile {
    static_assert(D % 64 == 0, "the swizzle permutes groups of 8 chunks");
    static constexpr int kChunks = D / 8;
    __device__ __forceinline__ static int offset(int row, int chunk) { return row * D + ((chunk ^ (row & 7)) << 3); }
};

// Copies rows [row0, row0 + ROWS) of a [len, D] matrix (row r at base + r * row_stride) into
// a swizzled tile; rows past `len` become zeros.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* base, int64_t row_stride, int row0, int len) {
    constexpr int kTotal = ROWS * Tile<D>::kChunks;
    static_assert(kTotal % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = threadIdx.x; i < kTotal; i += kThreads) {
        const int r = i / Tile<D>::kChunks, c = i % Tile<D>::kChunks;
        const bool valid = row0 + r < len;
        const bf16* src = valid ? base + static_cast<int64_t>(row0 + r) * row_stride + c * 8 : base;
        cp_async16(smem_addr(tile + Tile<D>::offset(r, c)), src, valid);
    }
}

// ---- warp-level GEMM pieces (one warp, one m16 row tile) ------------------------------------

// A fragments of rows [r0, r0 + 16) x [0, 16 * KSTEPS) of a tile.
template <int D, int KSTEPS>
__device__ __forceinline__ void load_a(uint32_t (&a)[KSTEPS][4], const bf16* tile, int r0) {
    const int lane = threadIdx.x % kWarp;
    const int row = r0 + (lane % 8) + 8 * ((lane / 8) % 2);
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) ldmatrix_x4(a[ks], smem_addr(tile + Tile<D>::offset(row, 2 * ks + lane / 16)));
}

// acc[16 x 8*NT] += A[16 x 16*KSTEPS] * B^T, B a tile with NT * 8 rows (the n index) and the
// k index along its D columns: S = Q K^T, dP = dO V^T and their transposes.
template <int D, int NT, int KSTEPS>
__device__ __forceinline__ void gemm_nt(float (&acc)[NT][4], const uint32_t (&a)[KSTEPS][4], const bf16* b_tile) {
    static_assert(NT % 2 == 0, "n tiles are loaded in pairs");
    const int lane = threadIdx.x % kWarp;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
            uint32_t b[4];
            const int row = j * 8 + (lane % 8) + 8 * (lane / 16);
            ldmatrix_x4(b, smem_addr(b_tile + Tile<D>::offset(row, 2 * ks + (lane / 8) % 2)));
            mma_bf16(acc[j], a[ks], b[0], b[1]);
            mma_bf16(acc[j + 1], a[ks], b[2], b[3]);
        }
    }
}

// As gemm_nt, but the A fragments are read from a shared tile step by step (saves registers).
template <int D, int NT, int KSTEPS>
__device__ __forceinline__ void gemm_nt_sa(float (&acc)[NT][4], const bf16* a_tile, int a_r0, const bf16* b_tile) {
    const int lane = threadIdx.x % kWarp;
    const int arow = a_r0 + (lane % 8) + 8 * ((lane / 8) % 2);
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        uint32_t a[4];
        ldmatrix_x4(a, smem_addr(a_tile + Tile<D>::offset(arow, 2 * ks + lane / 16)));
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
            uint32_t b[4];
            const int row = j * 8 + (lane % 8) + 8 * (lane / 16);
            ldmatrix_x4(b, smem_addr(b_tile + Tile<D>::offset(row, 2 * ks + (lane / 8) % 2)));
            mma_bf16(acc[j], a, b[0], b[1]);
            mma_bf16(acc[j + 1], a, b[2], b[3]);
        }
    }
}

// acc[16 x D] += A[16 x 16*KSTEPS] * B, B a tile with 16 * KSTEPS rows (the k index) and
// D columns (the n index): O += P V, dQ += dS K, dV += P^T dO, dK += dS^T Q.
template <int D, int KSTEPS>
__device__ __forceinline__ void gemm_nn(float (&acc)[D / 8][4], const uint32_t (&a)[KSTEPS][4], const bf16* b_tile) {
    const int lane = threadIdx.x % kWarp;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
        for (int j = 0; j < D / 8; j += 2) {
            uint32_t b[4];
            const int row = ks * 16 + (lane % 8) + 8 * ((lane / 8) % 2);
            ldmatrix_x4_trans(b, smem_addr(b_tile + Tile<D>::offset(row, j + lane / 16)));
            mma_bf16(acc[j], a[ks], b[0], b[1]);
            mma_bf16(acc[j + 1], a[ks], b[2], b[3]);
        }
    }
}

// Accumulator fragments of a 16 x 8*NT tile -> bf16 A fragments of the same 16 x 16*(NT/2)
// matrix (columns become the k index).
template <int NT>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[NT / 2][4], const float (&c)[NT][4]) {
#pragma unroll
    for (int k = 0; k < NT / 2; ++k) {
        a[k][0] = pack_bf16(c[2 * k][0], c[2 * k][1]);
        a[k][1] = pack_bf16(c[2 * k][2], c[2 * k][3]);
        a[k][2] = pack_bf16(c[2 * k + 1][0], c[2 * k + 1][1]);
        a[k][3] = pack_bf16(c[2 * k + 1][2], c[2 * k + 1][3]);
    }
}

template <int NT>
__device__ __forceinline__ void zero(float (&c)[NT][4]) {
#pragma unroll
    for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
}

// Accumulator element e of n-tile j sits at row (lane / 4) + 8 * (e / 2), column
// 8 j + 2 (lane % 4) + (e % 2) of the warp's 16-row tile.
__device__ __forceinline__ int frag_row(int e) { return (threadIdx.x % kWarp) / 4 + 8 * (e / 2); }
__device__ __forceinline__ int frag_col(int j, int e) { return 8 * j + 2 * (threadIdx.x % 4) + (e % 2); }

// Stores a warp's 16 x D fp32 accumulator tile (times `mul`) as bf16 rows; rows >= len skipped.
template <int D>
__device__ __forceinline__ void store_rows(bf16* base, int64_t row_stride, int row0, int len,
                                           const float (&acc)[D / 8][4], float mul) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + frag_row(2 * half);
        if (row >= len) continue;
        bf16* dst = base + static_cast<int64_t>(row) * row_stride;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            *reinterpret_cast<uint32_t*>(dst + frag_col(j, 0)) =
                pack_bf16(acc[j][2 * half] * mul, acc[j][2 * half + 1] * mul);
        }
    }
}

__device__ __forceinline__ bool key_valid(const sf_attn_fwd_params& p, int b, int key) {
    return key < p.kv_len && (p.key_mask == nullptr || p.key_mask[b * p.mask_batch_stride + key] != 0);
}
__device__ __forceinline__ bool key_valid(const sf_attn_bwd_params& p, int b, int key) {
    return key < p.kv_len && (p.key_mask == nullptr || p.key_mask[b * p.mask_batch_stride + key] != 0);
}

__device__ __forceinline__ const bf16* head_ptr(const void* base, const sf_attn_strides& s, int b, int h) {
    return static_cast<const bf16*>(base) + b * s.batch + h * s.head;
}

// ---- forward (tensor cores) ----------------------------------------------------------------

template <int D>
__device__ __forceinline__ void fwd_tc(const sf_attn_fwd_params& p) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* sQ = reinterpret_cast<bf16*>(smem);
    bf16* sK = sQ + kBlockM * D;
    bf16* sV = sK + kBlockN * D;

    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    const int q0 = blockIdx.x * kBlockM;
    const bf16* q = head_ptr(p.q, p.q_strides, b, h);
    const bf16* k = head_ptr(p.k, p.k_strides, b, h);
    const bf16* v = head_ptr(p.v, p.v_strides, b, h);

    load_tile<kBlockM, D>(sQ, q, p.q_strides.row, q0, p.q_len);
    cp_async_commit();
    load_tile<kBlockN, D>(sK, k, p.k_strides.row, 0, p.kv_len);
    cp_async_commit();
    cp_async_wait<1>();  // Q has landed (K_0 may still be in flight)
    __syncthreads();
    uint32_t qa[D / 16][4];
    load_a<D, D / 16>(qa, sQ, warp * 16);

    float o[D / 8][4];
    zero(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const float scale_log2 = p.scale * kLog2e;
    const int n_blocks = (p.kv_len + kBlockN - 1) / kBlockN;

    for (int nb = 0; nb < n_blocks; ++nb) {
        const int k0 = nb * kBlockN;
        load_tile<kBlockN, D>(sV, v, p.v_strides.row, k0, p.kv_len);
        cp_async_commit();
        cp_async_wait<1>();  // K_nb has landed
        __syncthreads();

        float s[kBlockN / 8][4];
        zero(s);
        gemm_nt<D, kBlockN / 8, D / 16>(s, qa, sK);
        __syncthreads();  // every warp is done with sK
        if (nb + 1 < n_blocks) load_tile<kBlockN, D>(sK, k, p.k_strides.row, k0 + kBlockN, p.kv_len);
        cp_async_commit();  // possibly empty: keeps the group count uniform

        // Scale into the exp2 domain and mask.
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[j][e] = key_valid(p, b, k0 + frag_col(j, e)) ? s[j][e] * scale_log2 : -INFINITY;

        // Online softmax on this thread's two rows (the quad of 4 lanes shares a row).
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < kBlockN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[r], mx);
            // With every key so far masked, m_new is -inf; subtract 0 instead (all p are 0).
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            const float alpha = exp2f(m[r] - m_use);
            l[r] *= alpha;
#pragma unroll
            for (int j = 0; j < D / 8; ++j) {
                o[j][2 * r] *= alpha;
                o[j][2 * r + 1] *= alpha;
            }
#pragma unroll
            for (int j = 0; j < kBlockN / 8; ++j) {
                s[j][2 * r] = exp2f(s[j][2 * r] - m_use);
                s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_use);
                l[r] += s[j][2 * r] + s[j][2 * r + 1];
            }
            m[r] = m_new;
        }

        uint32_t pa[kBlockN / 16][4];
        acc_to_a<kBlockN / 8>(pa, s);
        cp_async_wait<1>();  // V_nb has landed (K_{nb+1} may be in flight)
        __syncthreads();
        gemm_nn<D, kBlockN / 16>(o, pa, sV);
        __syncthreads();  // every warp is done with sV before the next tile overwrites it
    }

    bf16* out = static_cast<bf16*>(p.o) + b * p.o_strides.batch + h * p.o_strides.head;
    const int row0 = q0 + warp * 16;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            o[j][2 * r] *= inv;
            o[j][2 * r + 1] *= inv;
        }
        const int row = row0 + frag_row(2 * r);
        if (lane % 4 == 0 && row < p.q_len)
            p.lse[static_cast<int64_t>(bh) * p.q_len + row] = l[r] > 0.f ? m[r] * kLn2 + logf(l[r]) : -INFINITY;
    }
    store_rows<D>(out, p.o_strides.row, row0, p.q_len, o, 1.f);
}

// ---- backward (tensor cores) ---------------------------------------------------------------

// dQ for one 64-query tile. The key loop loads K and V together and does not overlap the
// copies with compute: a simple first version.
template <int D>
__device__ __forceinline__ void bwd_dq_tc(const sf_attn_bwd_params& p) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* sQ = reinterpret_cast<bf16*>(smem);
    bf16* sDO = sQ + kBlockM * D;
    bf16* sK = sDO + kBlockM * D;
    bf16* sV = sK + kBlockN * D;

    const int warp = threadIdx.x / kWarp;
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    const int q0 = blockIdx.x * kBlockM;
    const bf16* k = head_ptr(p.k, p.k_strides, b, h);
    const bf16* v = head_ptr(p.v, p.v_strides, b, h);

    load_tile<kBlockM, D>(sQ, head_ptr(p.q, p.q_strides, b, h), p.q_strides.row, q0, p.q_len);
    load_tile<kBlockM, D>(sDO, head_ptr(p.dout, p.do_strides, b, h), p.do_strides.row, q0, p.q_len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qa[D / 16][4];
    load_a<D, D / 16>(qa, sQ, warp * 16);

    // Per-row lse (exp2 domain) and delta of this thread's two rows.
    float lse2[2], delta[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = q0 + warp * 16 + frag_row(2 * r);
        const int64_t i = static_cast<int64_t>(bh) * p.q_len + row;
        lse2[r] = row < p.q_len ? p.lse[i] * kLog2e : -INFINITY;
        delta[r] = row < p.q_len ? p.delta[i] : 0.f;
    }
    const float scale_log2 = p.scale * kLog2e;

    float dq[D / 8][4];
    zero(dq);
    const int n_blocks = (p.kv_len + kBlockN - 1) / kBlockN;
    for (int nb = 0; nb < n_blocks; ++nb) {
        const int k0 = nb * kBlockN;
        load_tile<kBlockN, D>(sK, k, p.k_strides.row, k0, p.kv_len);
        load_tile<kBlockN, D>(sV, v, p.v_strides.row, k0, p.kv_len);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        float s[kBlockN / 8][4], dp[kBlockN / 8][4];
        zero(s);
        zero(dp);
        gemm_nt<D, kBlockN / 8, D / 16>(s, qa, sK);
        gemm_nt_sa<D, kBlockN / 8, D / 16>(dp, sDO, warp * 16, sV);
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e / 2;
                const bool live = lse2[r] != -INFINITY && key_valid(p, b, k0 + frag_col(j, e));
                const float pr = live ? exp2f(s[j][e] * scale_log2 - lse2[r]) : 0.f;
                s[j][e] = pr * (dp[j][e] - delta[r]);  // dS
            }
        uint32_t dsa[kBlockN / 16][4];
        acc_to_a<kBlockN / 8>(dsa, s);
        gemm_nn<D, kBlockN / 16>(dq, dsa, sK);
        __syncthreads();  // every warp is done with sK / sV
    }
    bf16* dst = static_cast<bf16*>(p.dq) + b * p.dq_strides.batch + h * p.dq_strides.head;
    store_rows<D>(dst, p.dq_strides.row, q0 + warp * 16, p.q_len, dq, p.scale);
}

// Queries per inner step of the dK/dV pass: fewer for d = 128 so that the dK, dV, S^T and
// dP^T accumulators fit in registers. For d = 128 the K fragments are also re-read from
// shared memory each step instead of being held (holding them spilled under ptxas 13.0).
template <int D>
struct DkdvTraits {
    static constexpr int kInnerM = D == 64 ? 64 : 32;
    static constexpr bool kHoldK = D == 64;
    static_assert(kInnerM % 16 == 0 && kInnerM * Tile<D>::kChunks % kThreads == 0, "inner tile");
};

// dK and dV for one 64-key tile; each warp owns 16 keys. Works on the transposed problem
// (keys as rows) so P^T and dS^T come out of the MMAs already in A-operand layout.
template <int D>
__device__ __forceinline__ void bwd_dkdv_tc(const sf_attn_bwd_params& p) {
    constexpr int kM = DkdvTraits<D>::kInnerM;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* sK = reinterpret_cast<bf16*>(smem);
    bf16* sV = sK + kBlockN * D;
    bf16* sQ = sV + kBlockN * D;
    bf16* sDO = sQ + kM * D;
    float* sLse = reinterpret_cast<float*>(sDO + kM * D);  // [kM], exp2 domain
    float* sDelta = sLse + kM;                              // [kM]

    const int warp = threadIdx.x / kWarp;
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    const int k0 = blockIdx.x * kBlockN;
    const bf16* q = head_ptr(p.q, p.q_strides, b, h);
    const bf16* dout = head_ptr(p.dout, p.do_strides, b, h);

    load_tile<kBlockN, D>(sK, head_ptr(p.k, p.k_strides, b, h), p.k_strides.row, k0, p.kv_len);
    load_tile<kBlockN, D>(sV, head_ptr(p.v, p.v_strides, b, h), p.v_strides.row, k0, p.kv_len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t ka[DkdvTraits<D>::kHoldK ? D / 16 : 1][4];
    if constexpr (DkdvTraits<D>::kHoldK) load_a<D, D / 16>(ka, sK, warp * 16);
    bool kvalid[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) kvalid[r] = key_valid(p, b, k0 + warp * 16 + frag_row(2 * r));
    const float scale_log2 = p.scale * kLog2e;

    float dk[D / 8][4], dv[D / 8][4];
    zero(dk);
    zero(dv);
    const int m_blocks = (p.q_len + kM - 1) / kM;
    for (int mb = 0; mb < m_blocks; ++mb) {
        const int q0 = mb * kM;
        load_tile<kM, D>(sQ, q, p.q_strides.row, q0, p.q_len);
        load_tile<kM, D>(sDO, dout, p.do_strides.row, q0, p.q_len);
        cp_async_commit();
        for (int i = threadIdx.x; i < kM; i += kThreads) {
            const int row = q0 + i;
            const int64_t idx = static_cast<int64_t>(bh) * p.q_len + row;
            sLse[i] = row < p.q_len ? p.lse[idx] * kLog2e : -INFINITY;
            sDelta[i] = row < p.q_len ? p.delta[idx] : 0.f;
        }
        cp_async_wait<0>();
        __syncthreads();

        float st[kM / 8][4], dpt[kM / 8][4];  // S^T and dP^T: 16 keys x kM queries
        zero(st);
        zero(dpt);
        if constexpr (DkdvTraits<D>::kHoldK) gemm_nt<D, kM / 8, D / 16>(st, ka, sQ);
        else gemm_nt_sa<D, kM / 8, D / 16>(st, sK, warp * 16, sQ);
        gemm_nt_sa<D, kM / 8, D / 16>(dpt, sV, warp * 16, sDO);
#pragma unroll
        for (int j = 0; j < kM / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = frag_col(j, e);
                const float lse = sLse[col];
                const bool live = kvalid[e / 2] && lse != -INFINITY;
                st[j][e] = live ? exp2f(st[j][e] * scale_log2 - lse) : 0.f;  // P^T
                dpt[j][e] = st[j][e] * (dpt[j][e] - sDelta[col]);            // dS^T
            }
        uint32_t pa[kM / 16][4], dsa[kM / 16][4];
        acc_to_a<kM / 8>(pa, st);
        acc_to_a<kM / 8>(dsa, dpt);
        gemm_nn<D, kM / 16>(dv, pa, sDO);
        gemm_nn<D, kM / 16>(dk, dsa, sQ);
        __syncthreads();  // every warp is done with sQ / sDO / sLse / sDelta
    }
    bf16* dkp = static_cast<bf16*>(p.dk) + b * p.dk_strides.batch + h * p.dk_strides.head;
    bf16* dvp = static_cast<bf16*>(p.dv) + b * p.dv_strides.batch + h * p.dv_strides.head;
    store_rows<D>(dkp, p.dk_strides.row, k0 + warp * 16, p.kv_len, dk, p.scale);
    store_rows<D>(dvp, p.dv_strides.row, k0 + warp * 16, p.kv_len, dv, 1.f);
}

// ---- SIMT kernels (any dtype, head_dim <= SF_ATTN_SIMT_MAX_D) ------------------------------

constexpr int kSimtWarps = SF_ATTN_SIMT_WARPS;
constexpr int kSimtPerLane = SF_ATTN_SIMT_MAX_D / kWarp;
static_assert(SF_ATTN_SIMT_MAX_D % kWarp == 0, "head dim splits over lanes");

// Lane `lane` holds elements lane + 32 i of a head vector.
template <typename T>
__device__ __forceinline__ void load_lane(float (&x)[kSimtPerLane], const void* base, int64_t off, int d) {
    const int lane = threadIdx.x % kWarp;
#pragma unroll
    for (int i = 0; i < kSimtPerLane; ++i) {
        const int c = lane + kWarp * i;
        x[i] = c < d ? load<T>(base, off + c) : 0.f;
    }
}

template <typename T>
__device__ __forceinline__ float dot_lane(const float (&x)[kSimtPerLane], const void* base, int64_t off, int d) {
    const int lane = threadIdx.x % kWarp;
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < kSimtPerLane; ++i) {
        const int c = lane + kWarp * i;
        if (c < d) acc += x[i] * load<T>(base, off + c);
    }
    return warp_sum(acc);
}

template <typename T>
__device__ __forceinline__ void axpy_lane(float (&y)[kSimtPerLane], float a, const void* base, int64_t off, int d) {
    const int lane = threadIdx.x % kWarp;
#pragma unroll
    for (int i = 0; i < kSimtPerLane; ++i) {
        const int c = lane + kWarp * i;
        if (c < d) y[i] += a * load<T>(base, off + c);
    }
}

template <typename T>
__device__ __forceinline__ void store_lane(const float (&x)[kSimtPerLane], float mul, void* base, int64_t off, int d) {
    const int lane = threadIdx.x % kWarp;
#pragma unroll
    for (int i = 0; i < kSimtPerLane; ++i) {
        const int c = lane + kWarp * i;
        if (c < d) store<T>(base, off + c, x[i] * mul);
    }
}

__device__ __forceinline__ int64_t row_off(const sf_attn_strides& s, int b, int h, int row) {
    return b * s.batch + h * s.head + static_cast<int64_t>(row) * s.row;
}

template <typename T>
__device__ __forceinline__ void fwd_simt(const sf_attn_fwd_params& p) {
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    const int row = blockIdx.x * kSimtWarps + threadIdx.x / kWarp;
    if (row >= p.q_len) return;  // whole warps leave together
    float q[kSimtPerLane], o[kSimtPerLane];
    load_lane<T>(q, p.q, row_off(p.q_strides, b, h, row), p.head_dim);
#pragma unroll
    for (int i = 0; i < kSimtPerLane; ++i) o[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int j = 0; j < p.kv_len; ++j) {
        if (!key_valid(p, b, j)) continue;
        const float s = dot_lane<T>(q, p.k, row_off(p.k_strides, b, h, j), p.head_dim) * p.scale;
        const float m_new = fmaxf(m, s);
        const float alpha = expf(m - m_new), pr = expf(s - m_new);
        l = l * alpha + pr;
#pragma unroll
        for (int i = 0; i < kSimtPerLane; ++i) o[i] *= alpha;
        axpy_lane<T>(o, pr, p.v, row_off(p.v_strides, b, h, j), p.head_dim);
        m = m_new;
    }
    store_lane<T>(o, l > 0.f ? 1.f / l : 0.f, p.o, row_off(p.o_strides, b, h, row), p.head_dim);
    if (threadIdx.x % kWarp == 0) p.lse[static_cast<int64_t>(bh) * p.q_len + row] = l > 0.f ? m + logf(l) : -INFINITY;
}

template <typename T>
__device__ __forceinline__ void bwd_preprocess(const sf_attn_bwd_params& p) {
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    const int row = blockIdx.x * kSimtWarps + threadIdx.x / kWarp;
    if (row >= p.q_len) return;
    float o[kSimtPerLane];
    load_lane<T>(o, p.o, row_off(p.o_strides, b, h, row), p.head_dim);
    const float d = dot_lane<T>(o, p.dout, row_off(p.do_strides, b, h, row), p.head_dim);
    if (threadIdx.x % kWarp == 0) p.delta[static_cast<int64_t>(bh) * p.q_len + row] = d;
}

template <typename T>
__device__ __forceinline__ void bwd_dq_simt(const sf_attn_bwd_params& p) {
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    const int row = blockIdx.x * kSimtWarps + threadIdx.x / kWarp;
    if (row >= p.q_len) return;
    const int64_t i = static_cast<int64_t>(bh) * p.q_len + row;
    const float lse = p.lse[i], delta = p.delta[i];
    float q[kSimtPerLane], g[kSimtPerLane], dq[kSimtPerLane];
    load_lane<T>(q, p.q, row_off(p.q_strides, b, h, row), p.head_dim);
    load_lane<T>(g, p.dout, row_off(p.do_strides, b, h, row), p.head_dim);
#pragma unroll
    for (int c = 0; c < kSimtPerLane; ++c) dq[c] = 0.f;
    if (lse != -INFINITY) {
        for (int j = 0; j < p.kv_len; ++j) {
            if (!key_valid(p, b, j)) continue;
            const int64_t ko = row_off(p.k_strides, b, h, j);
            const float pr = expf(dot_lane<T>(q, p.k, ko, p.head_dim) * p.scale - lse);
            const float dp = dot_lane<T>(g, p.v, row_off(p.v_strides, b, h, j), p.head_dim);
            axpy_lane<T>(dq, pr * (dp - delta), p.k, ko, p.head_dim);
        }
    }
    store_lane<T>(dq, p.scale, p.dq, row_off(p.dq_strides, b, h, row), p.head_dim);
}

template <typename T>
__device__ __forceinline__ void bwd_dkdv_simt(const sf_attn_bwd_params& p) {
    const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads;
    const int key = blockIdx.x * kSimtWarps + threadIdx.x / kWarp;
    if (key >= p.kv_len) return;
    float k[kSimtPerLane], v[kSimtPerLane], dk[kSimtPerLane], dv[kSimtPerLane];
    load_lane<T>(k, p.k, row_off(p.k_strides, b, h, key), p.head_dim);
    load_lane<T>(v, p.v, row_off(p.v_strides, b, h, key), p.head_dim);
#pragma unroll
    for (int c = 0; c < kSimtPerLane; ++c) dk[c] = dv[c] = 0.f;
    if (key_valid(p, b, key)) {
        for (int i = 0; i < p.q_len; ++i) {
            const int64_t si = static_cast<int64_t>(bh) * p.q_len + i;
            const float lse = p.lse[si];
            if (lse == -INFINITY) continue;
            const int64_t qo = row_off(p.q_strides, b, h, i), go = row_off(p.do_strides, b, h, i);
            const float pr = expf(dot_lane<T>(k, p.q, qo, p.head_dim) * p.scale - lse);
            axpy_lane<T>(dv, pr, p.dout, go, p.head_dim);
            const float ds = pr * (dot_lane<T>(v, p.dout, go, p.head_dim) - p.delta[si]);
            axpy_lane<T>(dk, ds, p.q, qo, p.head_dim);
        }
    }
    store_lane<T>(dk, p.scale, p.dk, row_off(p.dk_strides, b, h, key), p.head_dim);
    store_lane<T>(dv, 1.f, p.dv, row_off(p.dv_strides, b, h, key), p.head_dim);
}

}  // namespace attn
}  // namespace sf

#define SF_ATTN_TC(D)                                                                                        \
    extern "C" __global__ void __launch_bounds__(sf::attn::kThreads) attn_fwd_bf16_d##D(const sf_attn_fwd_params p) { \
        sf::attn::fwd_tc<D>(p);                                                                              \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(sf::attn::kThreads) attn_bwd_dq_bf16_d##D(const sf_attn_bwd_params p) { \
        sf::attn::bwd_dq_tc<D>(p);                                                                           \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(sf::attn::kThreads) attn_bwd_dkdv_bf16_d##D(                \
        const sf_attn_bwd_params p) {                                                                        \
        sf::attn::bwd_dkdv_tc<D>(p);                                                                         \
    }

SF_ATTN_TC(64)
SF_ATTN_TC(128)

#define SF_ATTN_SIMT(SUFFIX, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(sf::attn::kSimtWarps * 32) attn_fwd_##SUFFIX(              \
        const sf_attn_fwd_params p) {                                                                        \
        sf::attn::fwd_simt<T>(p);                                                                            \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(sf::attn::kSimtWarps * 32) attn_bwd_dq_##SUFFIX(           \
        const sf_attn_bwd_params p) {                                                                        \
        sf::attn::bwd_dq_simt<T>(p);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(sf::attn::kSimtWarps * 32) attn_bwd_dkdv_##SUFFIX(         \
        const sf_attn_bwd_params p) {                                                                        \
        sf::attn::bwd_dkdv_simt<T>(p);                                                                       \
    }

SF_ATTN_SIMT(f32, float)
SF_ATTN_SIMT(bf16_simt, sf::bf16)

extern "C" __global__ void __launch_bounds__(sf::attn::kSimtWarps * 32) attn_bwd_preprocess_f32(
    const sf_attn_bwd_params p) {
    sf::attn::bwd_preprocess<float>(p);
}
extern "C" __global__ void __launch_bounds__(sf::attn::kSimtWarps * 32) attn_bwd_preprocess_bf16(
    const sf_attn_bwd_params p) {
    sf::attn::bwd_preprocess<sf::bf16>(p);
}

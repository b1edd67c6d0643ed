// Elementwise kernels: unary activations (fwd/bwd), affine, casts, broadcasting binary ops.
//
// Invariants:
// - fp32 math; formulas match src/ops/unary.rs (the CPU reference) term by term, with the
//   accurate libdevice functions (no fast-math intrinsics).
// - Unary backward recomputes f'(x) from x alone: one tensor read less than loading y, and
//   more accurate than differentiating through a rounded bf16 y.
// - Contiguous paths move 16 bytes per thread per step when every pointer is 16-byte
//   aligned (the allocator's buffers are; views with odd offsets take the scalar path).
// - Grid-stride loops: the host launches at most enough blocks to fill the GPU; any n works.
// - Binary backward: one thread per gradient element sums its broadcast positions in a fixed
//   order (deterministic, no atomics).
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;
static_assert(kThreads % kWarp == 0 && kThreads <= 1024, "block size");

constexpr float kSqrt2OverPi = 0.7978845608f;
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.3989422804f;  // 0.5 * sqrt(2 / pi), as the CPU writes it

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

template <int OP>
__device__ __forceinline__ float unary_f(float x, float alpha) {
    if constexpr (OP == SF_UNARY_EXP) return expf(x);
    else if constexpr (OP == SF_UNARY_LOG) return logf(x);
    else if constexpr (OP == SF_UNARY_SQRT) return sqrtf(x);
    else if constexpr (OP == SF_UNARY_RSQRT) return 1.f / sqrtf(x);
    else if constexpr (OP == SF_UNARY_TANH) return tanhf(x);
    else if constexpr (OP == SF_UNARY_SIGMOID) return sigmoid(x);
    else if constexpr (OP == SF_UNARY_SILU) return x * sigmoid(x);
    else if constexpr (OP == SF_UNARY_GELU_ERF) return 0.5f * x * (1.f + erff(x * kInvSqrt2));
    else if constexpr (OP == SF_UNARY_GELU_TANH)
        return 0.5f * x * (1.f + tanhf(kSqrt2OverPi * (x + 0.044715f * x * x * x)));
    else if constexpr (OP == SF_UNARY_QUICK_GELU) return x * sigmoid(1.702f * x);
    else if constexpr (OP == SF_UNARY_RELU) return fmaxf(x, 0.f);
    else if constexpr (OP == SF_UNARY_LEAKY_RELU) return x > 0.f ? x : alpha * x;
    else if constexpr (OP == SF_UNARY_SQR) return x * x;
    else {
        static_assert(OP == SF_UNARY_ABS, "every sf_unary_op has a forward");
        return fabsf(x);
    }
}

template <int OP>
__device__ __forceinline__ float unary_df(float x, float alpha) {
    if constexpr (OP == SF_UNARY_EXP) return expf(x);
    else if constexpr (OP == SF_UNARY_LOG) return 1.f / x;
    else if constexpr (OP == SF_UNARY_SQRT) return 0.5f / sqrtf(x);
    else if constexpr (OP == SF_UNARY_RSQRT) {
        const float y = 1.f / sqrtf(x);
        return -0.5f * y * y * y;
    } else if constexpr (OP == SF_UNARY_TANH) {
        const float t = tanhf(x);
        return 1.f - t * t;
    } else if constexpr (OP == SF_UNARY_SIGMOID) {
        const float s = sigmoid(x);
        return s * (1.f - s);
    } else if constexpr (OP == SF_UNARY_SILU) {
        const float s = sigmoid(x);
        return s * (1.f + x * (1.f - s));
    } else if constexpr (OP == SF_UNARY_GELU_ERF) {
        const float cdf = 0.5f * (1.f + erff(x * kInvSqrt2));
        const float pdf = expf(-0.5f * x * x) * kInvSqrt2Pi;
        return cdf + x * pdf;
    } else if constexpr (OP == SF_UNARY_GELU_TANH) {
        const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
        const float t = tanhf(u);
        const float du = kSqrt2OverPi * (1.f + 3.f * 0.044715f * x * x);
        return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
    } else if constexpr (OP == SF_UNARY_QUICK_GELU) {
        const float s = sigmoid(1.702f * x);
        return s + 1.702f * x * s * (1.f - s);
    } else if constexpr (OP == SF_UNARY_RELU) return x > 0.f ? 1.f : 0.f;
    else if constexpr (OP == SF_UNARY_LEAKY_RELU) return x > 0.f ? 1.f : alpha;
    else if constexpr (OP == SF_UNARY_SQR) return 2.f * x;
    else {
        static_assert(OP == SF_UNARY_ABS, "every sf_unary_op has a derivative");
        return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f);
    }
}

__device__ __forceinline__ int64_t global_thread() {
    return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
    return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// y[i] = f(x[i]) for i < n, vectorized when both pointers are 16-byte aligned.
template <typename T, typename F>
__device__ __forceinline__ void map1(const void* x, void* y, int64_t n, F f) {
    constexpr int N = VecIO<T>::N;
    const int64_t tid = global_thread(), stride = grid_threads();
    int64_t done = 0;
    if (aligned16(x) && aligned16(y)) {
        const int64_t nv = n / N;
        for (int64_t v = tid; v < nv; v += stride) {
            float a[N];
            VecIO<T>::load(x, v * N, a);
#pragma unroll
            for (int k = 0; k < N; ++k) a[k] = f(a[k]);
            VecIO<T>::store(y, v * N, a);
        }
        done = nv * N;
    }
    for (int64_t i = done + tid; i < n; i += stride) store<T>(y, i, f(load<T>(x, i)));
}

// z[i] = f(x[i], y[i]).
template <typename T, typename F>
__device__ __forceinline__ void map2(const void* x, const void* y, void* z, int64_t n, F f) {
    constexpr int N = VecIO<T>::N;
    const int64_t tid = global_thread(), stride = grid_threads();
    int64_t done = 0;
    if (aligned16(x) && aligned16(y) && aligned16(z)) {
        const int64_t nv = n / N;
        for (int64_t v = tid; v < nv; v += stride) {
            float a[N], b[N];
            VecIO<T>::load(x, v * N, a);
            VecIO<T>::load(y, v * N, b);
#pragma unroll
            for (int k = 0; k < N; ++k) a[k] = f(a[k], b[k]);
            VecIO<T>::store(z, v * N, a);
        }
        done = nv * N;
    }
    for (int64_t i = done + tid; i < n; i += stride) store<T>(z, i, f(load<T>(x, i), load<T>(y, i)));
}

#define SF_FOR_EACH_UNARY(X)                                                                  \
    X(SF_UNARY_EXP) X(SF_UNARY_LOG) X(SF_UNARY_SQRT) X(SF_UNARY_RSQRT) X(SF_UNARY_TANH)       \
    X(SF_UNARY_SIGMOID) X(SF_UNARY_SILU) X(SF_UNARY_GELU_ERF) X(SF_UNARY_GELU_TANH)           \
    X(SF_UNARY_QUICK_GELU) X(SF_UNARY_RELU) X(SF_UNARY_LEAKY_RELU) X(SF_UNARY_SQR)             \
    X(SF_UNARY_ABS)

template <typename T>
__device__ __forceinline__ void unary_fwd(const sf_unary_fwd_params& p) {
    const float alpha = p.alpha;
    switch (p.op) {
#define SF_CASE(OP)                                                                         \
    case OP:                                                                                \
        map1<T>(p.x, p.y, p.n, [alpha](float x) { return unary_f<OP>(x, alpha); });         \
        break;
        SF_FOR_EACH_UNARY(SF_CASE)
#undef SF_CASE
        default:
            break;  // the host validates op codes
    }
}

template <typename T>
__device__ __forceinline__ void unary_bwd(const sf_unary_bwd_params& p) {
    const float alpha = p.alpha;
    switch (p.op) {
#define SF_CASE(OP)                                                                              \
    case OP:                                                                                     \
        map2<T>(p.x, p.dy, p.dx, p.n, [alpha](float x, float g) { return g * unary_df<OP>(x, alpha); }); \
        break;
        SF_FOR_EACH_UNARY(SF_CASE)
#undef SF_CASE
        default:
            break;
    }
}

template <typename T>
__device__ __forceinline__ void affine_fwd(const sf_affine_params& p) {
    const float s = p.scale, b = p.shift;
    map1<T>(p.x, p.y, p.n, [s, b](float x) { return fmaf(x, s, b); });
}

// 8 elements per step: 16 bytes of bf16, 32 bytes of f32.
template <typename Src, typename Dst>
__device__ __forceinline__ void cast(const sf_cast_params& p) {
    constexpr int N = 8;
    const int64_t tid = global_thread(), stride = grid_threads();
    int64_t done = 0;
    if (aligned16(p.x) && aligned16(p.y)) {
        const int64_t nv = p.n / N;
        for (int64_t v = tid; v < nv; v += stride) {
            alignas(16) Src in[N];
            alignas(16) Dst out[N];
            const uint4* src = reinterpret_cast<const uint4*>(static_cast<const Src*>(p.x) + v * N);
#pragma unroll
            for (int k = 0; k < int(N * sizeof(Src) / 16); ++k) reinterpret_cast<uint4*>(in)[k] = src[k];
#pragma unroll
            for (int k = 0; k < N; ++k) out[k] = from_f32<Dst>(to_f32(in[k]));
            uint4* dst = reinterpret_cast<uint4*>(static_cast<Dst*>(p.y) + v * N);
#pragma unroll
            for (int k = 0; k < int(N * sizeof(Dst) / 16); ++k) dst[k] = reinterpret_cast<const uint4*>(out)[k];
        }
        done = nv * N;
    }
    for (int64_t i = done + tid; i < p.n; i += stride) store<Dst>(p.y, i, load<Src>(p.x, i));
}

__device__ __forceinline__ float binary_f(int op, float a, float b) {
    switch (op) {
        case SF_BINARY_ADD: return a + b;
        case SF_BINARY_SUB: return a - b;
        case SF_BINARY_MUL: return a * b;
        default: return a / b;
    }
}

template <typename T>
__device__ __forceinline__ void binary_fwd(const sf_binary_fwd_params& p) {
    const int op = p.op;
    if (p.contiguous) {
        switch (op) {
            case SF_BINARY_ADD: map2<T>(p.a, p.b, p.out, p.n, [](float a, float b) { return a + b; }); break;
            case SF_BINARY_SUB: map2<T>(p.a, p.b, p.out, p.n, [](float a, float b) { return a - b; }); break;
            case SF_BINARY_MUL: map2<T>(p.a, p.b, p.out, p.n, [](float a, float b) { return a * b; }); break;
            default: map2<T>(p.a, p.b, p.out, p.n, [](float a, float b) { return a / b; }); break;
        }
        return;
    }
    const int64_t tid = global_thread(), stride = grid_threads();
    for (int64_t i = tid; i < p.n; i += stride) {
        int64_t rem = i, oa = 0, ob = 0;
        for (int d = p.rank - 1; d >= 0; --d) {
            const int64_t c = rem % p.shape[d];
            rem /= p.shape[d];
            oa += c * p.a_strides[d];
            ob += c * p.b_strides[d];
        }
        store<T>(p.out, i, binary_f(op, load<T>(p.a, oa), load<T>(p.b, ob)));
    }
}

// Gradient of one operand (`which` 0: a, 1: b) at the out position given by storage offsets.
__device__ __forceinline__ float binary_grad(int op, int which, float g, float a, float b) {
    switch (op) {
        case SF_BINARY_ADD: return g;
        case SF_BINARY_SUB: return which == 0 ? g : -g;
        case SF_BINARY_MUL: return which == 0 ? g * b : g * a;
        default: return which == 0 ? g / b : -g * a / (b * b);
    }
}

template <typename T>
__device__ __forceinline__ void binary_bwd(const sf_binary_bwd_params& p) {
    const int which = blockIdx.y;
    void* dst = which == 0 ? p.da : p.db;
    if (dst == nullptr) return;
    const int64_t* xshape = which == 0 ? p.a_shape : p.b_shape;
    const int64_t count = which == 0 ? p.na : p.nb;
    const int rank = p.rank;

    // Contiguous strides of dout, and the dims this operand was broadcast over.
    int64_t out_stride[SF_MAX_DIMS];
    int64_t s = 1;
    for (int d = rank - 1; d >= 0; --d) {
        out_stride[d] = s;
        s *= p.shape[d];
    }
    int bdims[SF_MAX_DIMS];
    int nb = 0;
    int64_t positions = 1;
    for (int d = 0; d < rank; ++d) {
        if (xshape[d] == 1 && p.shape[d] > 1) {
            bdims[nb++] = d;
            positions *= p.shape[d];
        }
    }

    const int64_t tid = global_thread(), stride = grid_threads();
    for (int64_t e = tid; e < count; e += stride) {
        int64_t coord[SF_MAX_DIMS];
        int64_t rem = e;
        for (int d = rank - 1; d >= 0; --d) {
            coord[d] = rem % xshape[d];
            rem /= xshape[d];
        }
        int64_t go = 0, ao = 0, bo = 0;
        for (int d = 0; d < rank; ++d) {
            go += coord[d] * out_stride[d];
            ao += coord[d] * p.a_strides[d];
            bo += coord[d] * p.b_strides[d];
        }
        float acc = 0.f;
        int64_t k[SF_MAX_DIMS] = {};
        for (int64_t pos = 0; pos < positions; ++pos) {
            acc += binary_grad(p.op, which, load<T>(p.dout, go), load<T>(p.a, ao), load<T>(p.b, bo));
            // Odometer over the broadcast dims, innermost first.
            for (int j = nb - 1; j >= 0; --j) {
                const int d = bdims[j];
                go += out_stride[d];
                ao += p.a_strides[d];
                bo += p.b_strides[d];
                if (++k[j] < p.shape[d]) break;
                go -= k[j] * out_stride[d];
                ao -= k[j] * p.a_strides[d];
                bo -= k[j] * p.b_strides[d];
                k[j] = 0;
            }
        }
        store<T>(dst, e, acc);
    }
}

}  // namespace sf

#define SF_ELEMENTWISE(SUFFIX, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) unary_fwd_##SUFFIX(const sf_unary_fwd_params p) { \
        sf::unary_fwd<T>(p);                                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) unary_bwd_##SUFFIX(const sf_unary_bwd_params p) { \
        sf::unary_bwd<T>(p);                                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) affine_fwd_##SUFFIX(const sf_affine_params p) { \
        sf::affine_fwd<T>(p);                                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) binary_fwd_##SUFFIX(const sf_binary_fwd_params p) { \
        sf::binary_fwd<T>(p);                                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) binary_bwd_##SUFFIX(const sf_binary_bwd_params p) { \
        sf::binary_bwd<T>(p);                                                                      \
    }

SF_ELEMENTWISE(f32, float)
SF_ELEMENTWISE(bf16, sf::bf16)

extern "C" __global__ void __launch_bounds__(sf::kThreads) cast_bf16_to_f32(const sf_cast_params p) {
    sf::cast<sf::bf16, float>(p);
}
extern "C" __global__ void __launch_bounds__(sf::kThreads) cast_f32_to_bf16(const sf_cast_params p) {
    sf::cast<float, sf::bf16>(p);
}

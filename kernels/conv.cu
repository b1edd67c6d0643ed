// Convolution support: im2col (forward) and col2im (its backward). cuBLAS does the GEMMs:
//   y[b] = W [Cout, C*KH*KW] @ col[b] [C*KH*KW, OH*OW]      (output already NCHW)
//   dW  += dy[b] @ col[b]^T,  dcol[b] = W^T @ dy[b],  dx = col2im(dcol)
//
// Invariants:
// - col rows are ordered (c, kh, kw), matching a [Cout, C, KH, KW] weight reshaped to
//   [Cout, C*KH*KW]; columns are (oh, ow). Padding reads as zero.
// - col2im is a gather: one thread per dx element sums the col entries that read it, in a
//   fixed (kh, kw) order. Deterministic, no atomics.
#include "common.cuh"

namespace sf {

constexpr int kThreads = SF_BLOCK_THREADS;

template <typename T>
__device__ __forceinline__ void im2col(const sf_im2col_params& p) {
    const sf_conv_geometry& g = p.g;
    const int64_t ohw = static_cast<int64_t>(g.out_h) * g.out_w;
    const int64_t kk = static_cast<int64_t>(g.kernel_h) * g.kernel_w;
    const int64_t n = static_cast<int64_t>(g.batch) * g.channels * kk * ohw;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t col = i % ohw;
        int64_t row = i / ohw;
        const int64_t k = row % kk;
        row /= kk;
        const int64_t c = row % g.channels, b = row / g.channels;
        const int oh = static_cast<int>(col / g.out_w), ow = static_cast<int>(col % g.out_w);
        const int kh = static_cast<int>(k / g.kernel_w), kw = static_cast<int>(k % g.kernel_w);
        const int ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
        const int iw = ow * g.stride_w - g.pad_w + kw * g.dilation_w;
        float v = 0.f;
        if (ih >= 0 && ih < g.height && iw >= 0 && iw < g.width)
            v = load<T>(p.x, b * p.x_strides[0] + c * p.x_strides[1] + ih * p.x_strides[2] + iw * p.x_strides[3]);
        store<T>(p.col, i, v);
    }
}

template <typename T>
__device__ __forceinline__ void col2im(const sf_col2im_params& p) {
    const sf_conv_geometry& g = p.g;
    const int64_t ohw = static_cast<int64_t>(g.out_h) * g.out_w;
    const int64_t kk = static_cast<int64_t>(g.kernel_h) * g.kernel_w;
    const int64_t n = static_cast<int64_t>(g.batch) * g.channels * g.height * g.width;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int w = static_cast<int>(i % g.width);
        int64_t r = i / g.width;
        const int h = static_cast<int>(r % g.height);
        r /= g.height;  // r = b * C + c
        const int64_t col_base = r * kk * ohw;
        float acc = 0.f;
        for (int kh = 0; kh < g.kernel_h; ++kh) {
            const int th = h + g.pad_h - kh * g.dilation_h;
            if (th < 0 || th % g.stride_h != 0) continue;
            const int oh = th / g.stride_h;
            if (oh >= g.out_h) continue;
            for (int kw = 0; kw < g.kernel_w; ++kw) {
                const int tw = w + g.pad_w - kw * g.dilation_w;
                if (tw < 0 || tw % g.stride_w != 0) continue;
                const int ow = tw / g.stride_w;
                if (ow >= g.out_w) continue;
                acc += load<T>(p.col, col_base + (kh * g.kernel_w + kw) * ohw + static_cast<int64_t>(oh) * g.out_w + ow);
            }
        }
        store<T>(p.dx, i, acc);
    }
}

}  // namespace sf

#define SF_CONV(SUFFIX, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) im2col_fwd_##SUFFIX(const sf_im2col_params p) { \
        sf::im2col<T>(p);                                                                        \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(sf::kThreads) im2col_bwd_##SUFFIX(const sf_col2im_params p) { \
        sf::col2im<T>(p);                                                                        \
    }

SF_CONV(f32, float)
SF_CONV(bf16, sf::bf16)

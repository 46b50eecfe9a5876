// Convolutions (MEDSA_SPEC 3.1 patch embed, 3.5 neck, 4 mask downscaling, TinyViT's convs, 5.5
// mask head): the Backend ops `conv2d` and `conv_transpose2x2`. Storage `elem_t` (DTYPE_BF16),
// compute f32.
//
//   conv2d_im2col           x [N, Cin, H, W] -> cols [N, G, Cin/G * KH * KW, HO * WO] for any
//                           stride, zero padding and group count G; the host then runs one
//                           batched GEMM per image (W_g [Cout/G, Cin/G KH KW] x cols_g) and
//                           conv2d_add_bias.
//   conv2d_add_bias         y[n, c, p] += b[c] over [N, C, P].
//   conv_transpose2x2_fwd   the 2x2 / stride-2 transposed conv: y[n, o, 2i + di, 2j + dj] =
//                           b[o] + sum_c x[n, c, i, j] w[c, o, di, dj]; one thread per output.

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Layout shared with the host (kernels/src/params.rs, #[repr(C)] ConvParams).
struct ConvParams {
    const elem_t* x;
    elem_t* cols;
    int n, cin, h, w, kh, kw, stride, pad, groups, ho, wo;
};

extern "C" __global__ void conv2d_im2col(const ConvParams p) {
    const i64 npix = (i64)p.ho * p.wo;
    // cols index ((n * G + g) * kdim + (ci * KH + ky) * KW + kx) * npix + pix is the same number
    // as (((n * Cin + ch) * KH + ky) * KW + kx) * npix + pix with ch = g * cpg + ci.
    GRID_STRIDE(i, (i64)p.n * p.cin * p.kh * p.kw * npix) {
        const i64 pix = i % npix;
        i64 r = i / npix;
        const int kx = (int)(r % p.kw);
        r /= p.kw;
        const int ky = (int)(r % p.kh);
        r /= p.kh;
        const int ch = (int)(r % p.cin);  // g * cpg + ci: the channel order of the input
        const int n = (int)(r / p.cin);
        const int oy = (int)(pix / p.wo), ox = (int)(pix - (i64)oy * p.wo);
        const int iy = oy * p.stride + ky - p.pad, ix = ox * p.stride + kx - p.pad;
        float v = 0.f;
        if (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w) v = ld_elem(p.x + (((i64)n * p.cin + ch) * p.h + iy) * p.w + ix);
        st_elem(p.cols + i, v);
    }
}

extern "C" __global__ void conv_transpose2x2_fwd(const elem_t* x, const elem_t* w, const float* b, elem_t* y,
                                                 int n, int cin, int cout, int h, int wd) {
    const int oh = 2 * h, ow = 2 * wd;
    GRID_STRIDE(i, (i64)n * cout * oh * ow) {
        const int ox = (int)(i % ow), oy = (int)((i / ow) % oh);
        const i64 r = i / ((i64)oh * ow);
        const int o = (int)(r % cout), bi = (int)(r / cout);
        const int iy = oy >> 1, ix = ox >> 1, tap = (oy & 1) * 2 + (ox & 1);
        float acc = b[o];
        const elem_t* xp = x + (i64)bi * cin * h * wd + (i64)iy * wd + ix;
        for (int c = 0; c < cin; ++c) acc = fmaf(ld_elem(xp + (i64)c * h * wd), ld_elem(w + ((i64)c * cout + o) * 4 + tap), acc);
        st_elem(y + i, acc);
    }
}

extern "C" __global__ void conv2d_add_bias(elem_t* y, const float* b, int n, int c, i64 p) {
    GRID_STRIDE(i, (i64)n * c * p) st_elem(y + i, ld_elem(y + i) + b[(i / p) % c]);
}

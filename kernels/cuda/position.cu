// Positional encodings (MEDSA_SPEC 3.3, 4): SAM's relative-position table and the prompt
// encoder's random-Fourier encoding. Tables are f32; the encoding is stored as `elem_t`.
//
//   rel_pos_table_fwd   out [qs, ks, d] = resample(table [rows, d], l = 2 max(qs, ks) - 1)[r],
//                       r = clamp(trunc(i sq - j sk + off), 0, l - 1); the resampling is
//                       PyTorch's linear interpolation (align_corners False), evaluated per
//                       output element (the host passes scale = rows / l; 1 when rows = l).
//   pe_encode_fwd       out [P, 2F]: u = 2 pi ((2 x - 1) g[0, j] + (2 y - 1) g[1, j]),
//                       out[p, j] = sin u, out[p, F + j] = cos u.

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

extern "C" __global__ void rel_pos_table_fwd(const float* table, float* out, int rows, int d, int qs, int ks,
                                             int l, float scale, float sq, float sk, float off) {
    GRID_STRIDE(i, (i64)qs * ks * d) {
        const int c = (int)(i % d);
        const i64 qk = i / d;
        const int qi = (int)(qk / ks), kj = (int)(qk - (i64)qi * ks);
        const float rf = ((float)qi * sq - (float)kj * sk) + off;
        const int r = min(max((int)rf, 0), l - 1);
        float v;
        if (rows == l) {
            v = table[(i64)r * d + c];
        } else {
            const float src = fmaxf(scale * ((float)r + 0.5f) - 0.5f, 0.f);
            const int i0 = min((int)src, rows - 1);
            const int i1 = i0 < rows - 1 ? i0 + 1 : i0;
            const float l1 = fminf(fmaxf(src - (float)i0, 0.f), 1.f), l0 = 1.f - l1;
            v = l0 * table[(i64)i0 * d + c] + l1 * table[(i64)i1 * d + c];
        }
        out[i] = v;
    }
}

extern "C" __global__ void pe_encode_fwd(const float* coords, const float* g, elem_t* out, i64 points, int f) {
    const float two_pi = 6.283185307179586f;
    GRID_STRIDE(i, points * f) {
        const i64 pt = i / f;
        const int j = (int)(i - pt * f);
        const float x = 2.f * coords[2 * pt] - 1.f, y = 2.f * coords[2 * pt + 1] - 1.f;
        const float u = two_pi * (x * g[j] + y * g[f + j]);
        st_elem(out + pt * 2 * f + j, sinf(u));
        st_elem(out + pt * 2 * f + f + j, cosf(u));
    }
}

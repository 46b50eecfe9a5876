// CUDA-core attention with the decomposed relative-position bias (MEDSA_SPEC 3.3, decoder 5.2):
// out = softmax(scale * q k^T + bias) v for any head dim and value dim <= HD_MAX. It is the f32
// parity path of the encoder attention and the path of the decoder's attentions (head dims 16 /
// 32, and the factored token-to-image attention with 256-wide heads: the HD_MAX 256 config).
//
// One warp per (b*h, query). The warp first builds the query's bias tables
// relh[ki] = <q, Rh[qi, ki]>, relw[kj] = <q, Rw[qj, kj]> in shared memory, then streams the keys
// 32 at a time (lane = key) with an online softmax; each lane owns output dims lane + 32 i (i < dv).
// Shared memory per warp: (hd + kh + kw + 32) floats with a bias, (hd + 32) without.
//
// Defines: DTYPE_BF16 (storage), HD_MAX.

#ifndef HD_MAX
#define HD_MAX 128
#endif
#define DCH ((HD_MAX + 31) / 32)

// Layout shared with the host (kernels/src/params.rs, #[repr(C)] ScalarAttnParams).
struct ScalarAttnParams {
    const elem_t* q;
    const elem_t* k;
    const elem_t* v;
    elem_t* o;
    const float* rh;  // [qh, kh, hd] or null (no bias)
    const float* rw;  // [qw, kw, hd]
    i64 q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, o_sb, o_sh;
    int q_sr, k_sr, v_sr, o_sr;
    int heads, nq, nk, qh, qw, kh, kw, hd;
    float scale;
    int dv;  // value / output dim (v and o rows hold dv elements)
};

extern "C" __global__ void __launch_bounds__(128) attention_scalar_fwd(const ScalarAttnParams p) {
    extern __shared__ __align__(16) float sm[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    // The bias tables take shared memory only when there is a bias (as the host sizes it).
    const int hd = p.hd, rs = p.rh != nullptr ? p.kh + p.kw : 0;
    float* qv = sm + warp * (hd + rs + 32);
    float* relv = qv + hd;
    float* pbuf = relv + rs;

    const int row = blockIdx.x * nwarps + warp;
    if (row >= p.nq) return;
    const int bh = blockIdx.y, b = bh / p.heads, h = bh - b * p.heads;
    const elem_t* q = p.q + b * p.q_sb + h * p.q_sh + (i64)row * p.q_sr;
    const elem_t* k = p.k + b * p.k_sb + h * p.k_sh;
    const elem_t* v = p.v + b * p.v_sb + h * p.v_sh;
    elem_t* o = p.o + b * p.o_sb + h * p.o_sh + (i64)row * p.o_sr;

    for (int c = lane; c < hd; c += 32) qv[c] = ld_elem(q + c);
    __syncwarp();
    const bool has_rel = p.rh != nullptr;
    if (has_rel) {
        const int qi = row / p.qw, qj = row - qi * p.qw;
        for (int e = lane; e < rs; e += 32) {
            const float* R = e < p.kh ? p.rh + ((i64)qi * p.kh + e) * hd
                                      : p.rw + ((i64)qj * p.kw + (e - p.kh)) * hd;
            float a = 0.f;
            for (int c = 0; c < hd; ++c) a = fmaf(qv[c], __ldg(R + c), a);
            relv[e] = a;
        }
        __syncwarp();
    }

    float m = NEG_INF_F, l = 0.f;
    float acc[DCH];
#pragma unroll
    for (int i = 0; i < DCH; ++i) acc[i] = 0.f;

    for (int c0 = 0; c0 < p.nk; c0 += 32) {
        const int key = c0 + lane;
        float s = NEG_INF_F;
        if (key < p.nk) {
            const elem_t* kr = k + (i64)key * p.k_sr;
            float a = 0.f;
            for (int c = 0; c < hd; ++c) a = fmaf(qv[c], ld_elem(kr + c), a);
            s = a * p.scale;
            if (has_rel) {
                const int ki = key / p.kw, kj = key - ki * p.kw;
                s += relv[ki] + relv[p.kh + kj];
            }
        }
        const float mx = warp_max(s);
        const float mn = fmaxf(m, mx);
        const float corr = __expf(m - mn);
        const float e = key < p.nk ? __expf(s - mn) : 0.f;
        l = l * corr + warp_sum(e);
        m = mn;
        pbuf[lane] = e;
        __syncwarp();
        const int nvalid = min(32, p.nk - c0);
#pragma unroll
        for (int i = 0; i < DCH; ++i) {
            const int c = lane + 32 * i;
            float a = acc[i] * corr;
            if (c < p.dv) {
                for (int j = 0; j < nvalid; ++j) a = fmaf(pbuf[j], ld_elem(v + (i64)(c0 + j) * p.v_sr + c), a);
            }
            acc[i] = a;
        }
        __syncwarp();
    }
    const float inv = 1.f / l;
#pragma unroll
    for (int i = 0; i < DCH; ++i) {
        const int c = lane + 32 * i;
        if (c < p.dv) st_elem(o + c, acc[i] * inv);
    }
}

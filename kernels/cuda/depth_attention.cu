// SD-Trans depth attention (MEDSA_SPEC 3.6, golden README 5.2). Reads q, k, v straight out of the
// qkv projection of the window-partitioned batch `xw` ([N0, P, 3C], N0 = B*D*nW, P = hh*ww,
// channels [q | k | v], head-major inside each) and writes the attention output back in the same
// token layout ([N0, P, C]); the transposed [(N0/D)*P, D, C] tensor is never materialised.
// (The norm, qkv and proj Linears are per-token, so they commute with the regrouping.)
//
// A depth sequence s of D tokens (d = 0 .. D-1, on the dh x dw grid d = i*dw + j):
//   grouping 0 (official):   token d = row (s / P) * D + d, position s % P
//   grouping 1 (per_window): s = (b*nW + win)*P + p, token d = row (b*D + d)*nW + win, position p
//
// One warp per (sequence, head). K and V of the sequence are staged in shared memory (row stride
// hd + 1: conflict-free lane-per-key reads); per query the warp builds the bias tables from the
// resampled Rh [dh, dh, hd], Rw [dw, dw, hd], then runs an online softmax over keys (lane = key).
// Shared memory per warp: (2 D (hd + 1) + hd + dh + dw + 32) floats.
//
// Defines: DTYPE_BF16 (storage), HD_MAX.

#ifndef HD_MAX
#define HD_MAX 128
#endif
#define DCH ((HD_MAX + 31) / 32)

// Layout shared with the host (kernels/src/params.rs, #[repr(C)] DepthParams).
struct DepthParams {
    const elem_t* qkv;
    elem_t* out;
    const float* rh;
    const float* rw;
    int n0, p, c, heads, hd, depth, dh, dw, nw, grouping, nseq;
    float scale;
};

__device__ __forceinline__ i64 depth_row(const DepthParams& p, int s, int d) {
    const int bw = s / p.p;
    if (p.grouping == 0) return (i64)bw * p.depth + d;
    const int b = bw / p.nw, win = bw - b * p.nw;
    return ((i64)b * p.depth + d) * p.nw + win;
}

extern "C" __global__ void __launch_bounds__(128) depth_attention_fwd(const DepthParams p) {
    extern __shared__ __align__(16) float sm[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    const int D = p.depth, hd = p.hd, ks = hd + 1;
    float* kv = sm + warp * (2 * D * ks + hd + p.dh + p.dw + 32);
    float* vv = kv + D * ks;
    float* qv = vv + D * ks;
    float* relv = qv + hd;
    float* pbuf = relv + p.dh + p.dw;

    const i64 gw = (i64)blockIdx.x * nwarps + warp;
    if (gw >= (i64)p.nseq * p.heads) return;
    const int s = (int)(gw / p.heads), h = (int)(gw - (i64)s * p.heads);
    const int pos = s % p.p;
    const i64 c3 = 3 * (i64)p.c;

    for (int d = 0; d < D; ++d) {
        const elem_t* t = p.qkv + (depth_row(p, s, d) * p.p + pos) * c3 + (i64)h * hd;
        for (int c = lane; c < hd; c += 32) {
            kv[d * ks + c] = ld_elem(t + p.c + c);
            vv[d * ks + c] = ld_elem(t + 2 * p.c + c);
        }
    }
    __syncwarp();

    const bool has_rel = p.rh != nullptr;
    for (int d = 0; d < D; ++d) {
        const i64 tok = depth_row(p, s, d) * p.p + pos;
        const elem_t* qt = p.qkv + tok * c3 + (i64)h * hd;
        for (int c = lane; c < hd; c += 32) qv[c] = ld_elem(qt + c);
        __syncwarp();
        if (has_rel) {
            const int qi = d / p.dw, qj = d - qi * p.dw;
            for (int e = lane; e < p.dh + p.dw; e += 32) {
                const float* R = e < p.dh ? p.rh + ((i64)qi * p.dh + e) * hd
                                          : p.rw + ((i64)qj * p.dw + (e - p.dh)) * hd;
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
        for (int c0 = 0; c0 < D; c0 += 32) {
            const int key = c0 + lane;
            float sc = NEG_INF_F;
            if (key < D) {
                const float* kr = kv + key * ks;
                float a = 0.f;
                for (int c = 0; c < hd; ++c) a = fmaf(qv[c], kr[c], a);
                sc = a * p.scale;
                if (has_rel) {
                    const int ki = key / p.dw, kj = key - ki * p.dw;
                    sc += relv[ki] + relv[p.dh + kj];
                }
            }
            const float mn = fmaxf(m, warp_max(sc));
            const float corr = __expf(m - mn);
            const float e = key < D ? __expf(sc - mn) : 0.f;
            l = l * corr + warp_sum(e);
            m = mn;
            pbuf[lane] = e;
            __syncwarp();
            const int nvalid = min(32, D - c0);
#pragma unroll
            for (int i = 0; i < DCH; ++i) {
                const int c = lane + 32 * i;
                float a = acc[i] * corr;
                if (c < hd) {
                    for (int j = 0; j < nvalid; ++j) a = fmaf(pbuf[j], vv[(c0 + j) * ks + c], a);
                }
                acc[i] = a;
            }
            __syncwarp();
        }
        const float inv = 1.f / l;
        elem_t* ot = p.out + tok * p.c + (i64)h * hd;
#pragma unroll
        for (int i = 0; i < DCH; ++i) {
            const int c = lane + 32 * i;
            if (c < hd) st_elem(ot + c, acc[i] * inv);
        }
        __syncwarp();  // qv / relv are rewritten by the next query
    }
}

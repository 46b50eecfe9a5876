// Tensor-core attention with SAM's decomposed relative-position bias (MEDSA_SPEC 3.3), bf16
// storage, f32 accumulation and softmax: the device side of the Backend op `attention`.
//
//   attention_flash_fwd    global attention, FlashAttention-2 style: one CTA per (BLOCK_M-query
//                          tile, b*h), K/V tiles of 64 keys streamed through a cp.async double buffer,
//                          Q fragments in registers, online softmax in the log2 domain, no N x N
//                          matrix anywhere. The bias is added per element from the small
//                          per-query tables relh[q, ki] = <q, Rh[qi, ki]> and
//                          relw[q, kj] = <q, Rw[qj, kj]> produced by attention_rel_tables
//                          (N * (kh + kw) floats per head instead of N * N).
//   attention_window_fwd   windowed attention (SAM's 14 x 14 windows, padded windows included):
//                          one CTA per (window * head); the whole window's K and V are staged
//                          once in shared memory, each warp takes WARP_M-query tiles and computes their
//                          per-query bias tables in-kernel from Rh / Rw (eight lanes per dot
//                          product, so the table rows are read in 32-byte runs).
//   attention_rel_tables   the per-query tables for attention_flash_fwd.
//
// Config defines: HEAD_DIM (64 or 80; any multiple of 16 works), BLOCK_N (keys per chunk, 64),
// NUM_WARPS (4), M_TILES (m16 query tiles per warp, 2: each K / V fragment loaded from shared
// memory feeds M_TILES mma's). WARP_M = 16 * M_TILES query rows per warp, BLOCK_M = WARP_M *
// NUM_WARPS per flash CTA.
// Requirements checked by the host: all row strides multiples of 8 elements, 16-byte aligned bases.

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
#endif
#ifndef BLOCK_N
#define BLOCK_N 64
#endif
#ifndef NUM_WARPS
#define NUM_WARPS 4
#endif
#ifndef M_TILES
#define M_TILES 2
#endif
#if (HEAD_DIM % 16) != 0 || (BLOCK_N % 16) != 0
#error "HEAD_DIM and BLOCK_N must be multiples of 16"
#endif

#define HD HEAD_DIM
#define LDS (HD + 8)             // shared row stride in elements: 8 consecutive rows hit 8 distinct 16-B bank groups
#define KSTEPS (HD / 16)
#define DTILES (HD / 8)
#define NTILES (BLOCK_N / 8)
#define WARP_M (16 * M_TILES)   // query rows per warp: M_TILES m16 tiles share every K / V fragment
#define BLOCK_M (WARP_M * NUM_WARPS)
#define NTHREADS (32 * NUM_WARPS)

// Layout shared with the host (kernels/src/params.rs, #[repr(C)] AttnParams).
struct AttnParams {
    const u16* q;
    const u16* k;
    const u16* v;
    u16* o;
    const float* rel;   // flash: [B*heads, nq, kh + kw] per-query tables, or null for no bias
    const float* rh;    // window: [qh, kh, HD] f32, or null for no bias
    const float* rw;    // window: [qw, kw, HD] f32
    i64 q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, o_sb, o_sh;  // batch / head strides (elements)
    int q_sr, k_sr, v_sr, o_sr;                          // row strides (elements)
    int heads, nq, nk, qh, qw, kh, kw;
    float scale;
};

__device__ __forceinline__ void load_q_frags(u32 (&qf)[M_TILES][KSTEPS][4], const u16* qs, int live,
                                             int lane) {
    // A operand of m16n8k16: matrices (rows 0-7,k 0-7) (rows 8-15,k 0-7) (rows 0-7,k 8-15) (rows 8-15,k 8-15).
    const u32 base = smem_u32(qs + (lane & 15) * LDS + (lane >> 4) * 8);
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks)
            if (mt < live)
                ldmatrix_x4(qf[mt][ks][0], qf[mt][ks][1], qf[mt][ks][2], qf[mt][ks][3],
                            base + (mt * 16 * LDS + ks * 16) * 2);
}

// Online-softmax state of one warp: M_TILES m16 tiles of query rows (lane holds rows g and g + 8
// of each), their running maxima m, sums l and unnormalised outputs o.
struct WarpState {
    float m[M_TILES][2], l[M_TILES][2], o[M_TILES][DTILES][4];
    __device__ __forceinline__ void init() {
#pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) {
            m[mt][0] = m[mt][1] = NEG_INF_F;
            l[mt][0] = l[mt][1] = 0.f;
#pragma unroll
            for (int i = 0; i < DTILES; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
        }
    }
};

// One warp, its first `live` (1..M_TILES) m16 tiles of query rows, one chunk of `chunk` (multiple
// of 16, <= BLOCK_N) keys whose first row sits at `ks` / `vs` in shared memory and is key number
// `n0`. Keys >= nk are masked. Every K / V fragment is loaded once and feeds all live tiles.
// rel: the per-query bias row (kh + kw floats) of the lane's row g of tile 0, rows `rsp` floats
// apart (row r of the warp at rel + (r - g) * rsp), or null.
__device__ __forceinline__ void attend_chunk(const u32 (&qf)[M_TILES][KSTEPS][4], const u16* ks,
                                             const u16* vs, int n0, int nk, int chunk, int live,
                                             const float* rel, int rsp, int kh, int kw,
                                             float scale_log2, WarpState& st, int lane) {
    const int t = lane & 3;
    float s[M_TILES][NTILES][4];
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
        for (int i = 0; i < NTILES; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;

    // S = Q K^T. B operand from K rows via ldmatrix (non-transposed): two n8 tiles per x4.
    const u32 kbase = smem_u32(ks + ((lane >> 4) * 8 + (lane & 7)) * LDS + ((lane >> 3) & 1) * 8);
#pragma unroll
    for (int np = 0; np < NTILES / 2; ++np) {
        if (np * 16 < chunk) {
#pragma unroll
            for (int kk = 0; kk < KSTEPS; ++kk) {
                u32 b0, b1, b2, b3;
                ldmatrix_x4(b0, b1, b2, b3, kbase + (np * 16 * LDS + kk * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < M_TILES; ++mt) {
                    if (mt < live) {
                        mma_bf16_16816(s[mt][2 * np], qf[mt][kk], b0, b1);
                        mma_bf16_16816(s[mt][2 * np + 1], qf[mt][kk], b2, b3);
                    }
                }
            }
        }
    }

    // Scale, bias, mask. The lane's keys are n0 + 2t + {0, 1, 8, 9, 16, ...}: their (ki, kj)
    // split is stepped incrementally (no division per element) and shared by all rows.
    int ki = 0, kj = 0;
    if (rel != nullptr) {
        ki = (n0 + 2 * t) / kw;
        kj = n0 + 2 * t - ki * kw;
    }
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int key = n0 + nt * 8 + 2 * t + e;
            const bool valid = (nt * 8 < chunk) && key < nk;
#pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                float ba = 0.f, bb = 0.f;
                if (valid && rel != nullptr) {
                    const float* ra = rel + mt * 16 * rsp;
                    const float* rb = ra + 8 * rsp;
                    ba = ra[ki] + ra[kh + kj];
                    bb = rb[ki] + rb[kh + kj];
                }
                s[mt][nt][e] = valid ? fmaf(s[mt][nt][e], scale_log2, ba * LOG2E_F) : NEG_INF_F;
                s[mt][nt][2 + e] = valid ? fmaf(s[mt][nt][2 + e], scale_log2, bb * LOG2E_F) : NEG_INF_F;
            }
            if (rel != nullptr) {
                kj += e == 0 ? 1 : 7;
                while (kj >= kw) {
                    kj -= kw;
                    ++ki;
                }
            }
        }
    }

    // Online softmax per tile: chunk row maxima, rescale, exponentiate, row sums.
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
        if (mt >= live) continue;
        float mx0 = NEG_INF_F, mx1 = NEG_INF_F;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            mx0 = fmaxf(mx0, fmaxf(s[mt][nt][0], s[mt][nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[mt][nt][2], s[mt][nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(st.m[mt][0], mx0), mn1 = fmaxf(st.m[mt][1], mx1);
        const float c0 = exp2f(st.m[mt][0] - mn0), c1 = exp2f(st.m[mt][1] - mn1);
        st.m[mt][0] = mn0;
        st.m[mt][1] = mn1;
        float ls0 = 0.f, ls1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < NTILES; ++nt) {
            s[mt][nt][0] = exp2f(s[mt][nt][0] - mn0);
            s[mt][nt][1] = exp2f(s[mt][nt][1] - mn0);
            s[mt][nt][2] = exp2f(s[mt][nt][2] - mn1);
            s[mt][nt][3] = exp2f(s[mt][nt][3] - mn1);
            ls0 += s[mt][nt][0] + s[mt][nt][1];
            ls1 += s[mt][nt][2] + s[mt][nt][3];
        }
        st.l[mt][0] = st.l[mt][0] * c0 + ls0;
        st.l[mt][1] = st.l[mt][1] * c1 + ls1;
#pragma unroll
        for (int dt = 0; dt < DTILES; ++dt) {
            st.o[mt][dt][0] *= c0;
            st.o[mt][dt][1] *= c0;
            st.o[mt][dt][2] *= c1;
            st.o[mt][dt][3] *= c1;
        }
    }

    // O += P V. The C layout of two adjacent n8 tiles is the A layout of one k16 step;
    // V's B operand comes from ldmatrix.trans on the V rows, once for all tiles.
    const u32 vbase = smem_u32(vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * LDS + (lane >> 4) * 8);
#pragma unroll
    for (int kk = 0; kk < NTILES / 2; ++kk) {
        if (kk * 16 < chunk) {
            u32 a[M_TILES][4];
#pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                a[mt][0] = pack_bf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                a[mt][1] = pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                a[mt][2] = pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                a[mt][3] = pack_bf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < HD / 16; ++dp) {
                u32 b0, b1, b2, b3;
                ldmatrix_x4_trans(b0, b1, b2, b3, vbase + (kk * 16 * LDS + dp * 16) * 2);
#pragma unroll
                for (int mt = 0; mt < M_TILES; ++mt) {
                    if (mt < live) {
                        mma_bf16_16816(st.o[mt][2 * dp], a[mt], b0, b1);
                        mma_bf16_16816(st.o[mt][2 * dp + 1], a[mt], b2, b3);
                    }
                }
            }
        }
    }
}

// Normalises and stores the warp's live tiles (rows q0 .. q0 + 16 * live - 1).
__device__ __forceinline__ void store_out(u16* o_base, int o_sr, int q0, int nq, int live,
                                          WarpState& st, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
        if (mt >= live) continue;
        float l0 = st.l[mt][0], l1 = st.l[mt][1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float i0 = 1.f / l0, i1 = 1.f / l1;
        const int r0 = q0 + mt * 16 + g, r1 = r0 + 8;
#pragma unroll
        for (int dt = 0; dt < DTILES; ++dt) {
            const int c = dt * 8 + 2 * t;
            if (r0 < nq) *(u32*)(o_base + (i64)r0 * o_sr + c) = pack_bf16x2(st.o[mt][dt][0] * i0, st.o[mt][dt][1] * i0);
            if (r1 < nq) *(u32*)(o_base + (i64)r1 * o_sr + c) = pack_bf16x2(st.o[mt][dt][2] * i1, st.o[mt][dt][3] * i1);
        }
    }
}

// Live m16 tiles of a warp whose rows start at q0 (at least one; tiles wholly past nq are skipped).
__device__ __forceinline__ int live_tiles(int q0, int nq) {
    const int left = (nq - q0 + 15) / 16;
    return left < 1 ? 1 : (left > M_TILES ? M_TILES : left);
}

// Stages rows [r_begin, r_begin + nrows) of a [*, HD] matrix (row stride `sr`) into shared rows of
// stride LDS, zero-filling rows >= rlimit. Cooperative over `nthr` threads starting at `tid`.
__device__ __forceinline__ void stage_rows(u16* dst, const u16* src, int sr, int r_begin, int nrows,
                                           int rlimit, int tid, int nthr) {
    const int CPR = HD / 8;  // 16-byte chunks per row
    for (int i = tid; i < nrows * CPR; i += nthr) {
        const int r = i / CPR, c = i - r * CPR;
        const int row = r_begin + r;
        const bool ok = row < rlimit;
        cp_async16(smem_u32(dst + r * LDS + c * 8), src + (i64)(ok ? row : 0) * sr + c * 8, ok);
    }
}

extern "C" __global__ void __launch_bounds__(NTHREADS) attention_flash_fwd(const AttnParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    // Two K / V buffers [K0 | V0 | K1 | V1] of BLOCK_N rows each; the Q tile is staged over the
    // second buffer (Q lives in registers once loaded, before tile 1 is prefetched), then the
    // CTA's per-query bias rows.
    u16* kvbuf = (u16*)smem;
    u16* qs = kvbuf + 2 * BLOCK_N * LDS;
    const int q_rows = BLOCK_M > 2 * BLOCK_N ? BLOCK_M : 2 * BLOCK_N;
    float* rel_s = (float*)(kvbuf + (2 * BLOCK_N + q_rows) * LDS);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int bh = blockIdx.y, b = bh / p.heads, h = bh - b * p.heads;
    const int q0 = blockIdx.x * BLOCK_M;
    const u16* q = p.q + b * p.q_sb + h * p.q_sh;
    const u16* k = p.k + b * p.k_sb + h * p.k_sh;
    const u16* v = p.v + b * p.v_sb + h * p.v_sh;
    u16* o = p.o + b * p.o_sb + h * p.o_sh;
    // Shared bias rows are rsp = (kh + kw) | 1 floats apart: an odd stride puts the 8 rows a
    // warp's fragment reads (g = lane / 4) in 8 different banks (kh + kw = 128 would be one).
    const int nk = p.nk, rs = p.kh + p.kw, rsp = rs | 1;

    stage_rows(qs, q, p.q_sr, q0, BLOCK_M, p.nq, tid, NTHREADS);
    stage_rows(kvbuf, k, p.k_sr, 0, BLOCK_N, nk, tid, NTHREADS);
    stage_rows(kvbuf + BLOCK_N * LDS, v, p.v_sr, 0, BLOCK_N, nk, tid, NTHREADS);
    cp_async_commit();
    const bool has_rel = p.rel != nullptr;
    if (has_rel) {
        for (int i = tid; i < BLOCK_M * rs; i += NTHREADS) {
            const int r = i / rs, row = q0 + r, e = i - r * rs;
            rel_s[r * rsp + e] = row < p.nq ? p.rel[((i64)bh * p.nq + row) * rs + e] : 0.f;
        }
    }

    u32 qf[M_TILES][KSTEPS][4];
    WarpState st;
    st.init();
    const float scale_log2 = p.scale * LOG2E_F;
    const int wq0 = q0 + warp * WARP_M, live = live_tiles(wq0, p.nq);
    const float* rel = has_rel ? rel_s + (warp * WARP_M + (lane >> 2)) * rsp : nullptr;

    const int ntiles = (nk + BLOCK_N - 1) / BLOCK_N;
    for (int j = 0; j < ntiles; ++j) {
        cp_async_wait_all();
        __syncthreads();  // tile j visible; every warp is done with buffer (j + 1) & 1
        if (j == 0) {
            load_q_frags(qf, qs + warp * WARP_M * LDS, live, lane);
            __syncthreads();  // every warp holds its Q fragments: buffer 1 may be overwritten
        }
        if (j + 1 < ntiles) {
            u16* nb = kvbuf + ((j + 1) & 1) * 2 * BLOCK_N * LDS;
            stage_rows(nb, k, p.k_sr, (j + 1) * BLOCK_N, BLOCK_N, nk, tid, NTHREADS);
            stage_rows(nb + BLOCK_N * LDS, v, p.v_sr, (j + 1) * BLOCK_N, BLOCK_N, nk, tid, NTHREADS);
            cp_async_commit();
        }
        const int left = nk - j * BLOCK_N;
        const int chunk = left >= BLOCK_N ? BLOCK_N : ((left + 15) & ~15);
        const u16* cb = kvbuf + (j & 1) * 2 * BLOCK_N * LDS;
        attend_chunk(qf, cb, cb + BLOCK_N * LDS, j * BLOCK_N, nk, chunk, live, rel, rsp, p.kh, p.kw,
                     scale_log2, st, lane);
    }
    store_out(o, p.o_sr, wq0, p.nq, live, st, lane);
}

extern "C" __global__ void __launch_bounds__(NTHREADS) attention_window_fwd(const AttnParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int nk = p.nk, kv_rows = (nk + 15) & ~15, rs = p.kh + p.kw;
    u16* ks = (u16*)smem;
    u16* vs = ks + kv_rows * LDS;
    u16* qs = vs + kv_rows * LDS + warp * WARP_M * LDS;
    float* rel_s = (float*)(vs + kv_rows * LDS + NUM_WARPS * WARP_M * LDS) + warp * WARP_M * rs;

    const int bh = blockIdx.x, b = bh / p.heads, h = bh - b * p.heads;
    const u16* q = p.q + b * p.q_sb + h * p.q_sh;
    const u16* k = p.k + b * p.k_sb + h * p.k_sh;
    const u16* v = p.v + b * p.v_sb + h * p.v_sh;
    u16* o = p.o + b * p.o_sb + h * p.o_sh;

    stage_rows(ks, k, p.k_sr, 0, kv_rows, nk, tid, NTHREADS);
    stage_rows(vs, v, p.v_sr, 0, kv_rows, nk, tid, NTHREADS);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    const bool has_rel = p.rh != nullptr;
    const float scale_log2 = p.scale * LOG2E_F;
    for (int tile = warp; tile * WARP_M < p.nq; tile += NUM_WARPS) {
        const int q0 = tile * WARP_M, live = live_tiles(q0, p.nq), rows = 16 * live;
        stage_rows(qs, q, p.q_sr, q0, rows, p.nq, lane, 32);
        cp_async_commit();
        cp_async_wait_all();
        __syncwarp();
        if (has_rel) {
            // Per-query tables: rel[r, e] = <q_r, Rh[qi, e]> (e < kh), <q_r, Rw[qj, e - kh]> (e >= kh).
            // Eight lanes share one dot product (lane g of the group takes c = g, g + 8, ...), so
            // each load instruction reads four 32-byte runs of table rows instead of 32 rows'
            // scattered words; the group sums by three xor-shuffles.
            const int g = lane & 7;
            for (int base = 0; base < rows * rs; base += 4) {
                const int idx = base + (lane >> 3);
                const int r = idx / rs, e = idx - r * rs, row = q0 + r;
                float a = 0.f;
                if (idx < rows * rs && row < p.nq) {
                    const int qi = row / p.qw, qj = row - qi * p.qw;
                    const float* R = e < p.kh ? p.rh + ((i64)qi * p.kh + e) * HD
                                              : p.rw + ((i64)qj * p.kw + (e - p.kh)) * HD;
                    const u16* qr = qs + r * LDS;
#pragma unroll
                    for (int c = g; c < HD; c += 8) a = fmaf(bf16_to_f32(qr[c]), __ldg(R + c), a);
                }
                a += __shfl_xor_sync(0xffffffffu, a, 1);
                a += __shfl_xor_sync(0xffffffffu, a, 2);
                a += __shfl_xor_sync(0xffffffffu, a, 4);
                if (g == 0 && idx < rows * rs) rel_s[idx] = a;
            }
            __syncwarp();
        }
        u32 qf[M_TILES][KSTEPS][4];
        load_q_frags(qf, qs, live, lane);
        WarpState st;
        st.init();
        const float* rel = has_rel ? rel_s + (lane >> 2) * rs : nullptr;
        for (int n0 = 0; n0 < nk; n0 += BLOCK_N) {
            const int chunk = min(BLOCK_N, kv_rows - n0);
            attend_chunk(qf, ks + n0 * LDS, vs + n0 * LDS, n0, nk, chunk, live, rel, rs, p.kh, p.kw,
                         scale_log2, st, lane);
        }
        store_out(o, p.o_sr, q0, p.nq, live, st, lane);
        __syncwarp();  // before the next tile overwrites qs / rel_s
    }
}

// out[bh, i, e] = <q[bh, i, :], Rh[qi, e, :]> for e < kh, <q[bh, i, :], Rw[qj, e - kh, :]> else,
// with the unscaled q (spec 3.3). Eight threads per output element (thread g of the group takes
// c = g, g + 8, ...: table rows read in 32-byte runs), summed by xor-shuffles; every lane of a
// warp reaches the shuffles.
extern "C" __global__ void __launch_bounds__(256) attention_rel_tables(const AttnParams p, float* out) {
    const int rs = p.kh + p.kw;
    const i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 idx = t >> 3;
    const int g = (int)(t & 7), bh = blockIdx.y;
    const bool live = idx < (i64)p.nq * rs;
    float a = 0.f;
    if (live) {
        const int row = (int)(idx / rs), e = (int)(idx - (i64)row * rs);
        const int b = bh / p.heads, h = bh - b * p.heads;
        const u16* q = p.q + b * p.q_sb + h * p.q_sh + (i64)row * p.q_sr;
        const int qi = row / p.qw, qj = row - qi * p.qw;
        const float* R = e < p.kh ? p.rh + ((i64)qi * p.kh + e) * HD : p.rw + ((i64)qj * p.kw + (e - p.kh)) * HD;
#pragma unroll
        for (int c = g; c < HD; c += 8) a = fmaf(bf16_to_f32(__ldg(q + c)), __ldg(R + c), a);
    }
    a += __shfl_xor_sync(0xffffffffu, a, 1);
    a += __shfl_xor_sync(0xffffffffu, a, 2);
    a += __shfl_xor_sync(0xffffffffu, a, 4);
    if (live && g == 0) out[(i64)bh * p.nq * rs + idx] = a;
}

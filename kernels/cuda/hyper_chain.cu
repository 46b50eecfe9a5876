// The fused HyP-Adpt hyper-weight chain (MEDSA_SPEC 5.4, golden README 5.3): for every prompt
// set b and token t, d <- ReLU(LayerNorm_n(d · W[b, n])) for n = 0 .. HYP_LAYERS-1, where W[b, n]
// is the r x r matrix generated from b's prompt (row vector times matrix:
// y[j] = sum_i d[i] W[b, n, i, j]) and LayerNorm_n is over r with affine (gamma_n, beta_n).
// All layers in one launch: one CTA per (token tile, b); W[b] is staged once in shared memory
// (f32), one warp per token keeps d in shared memory between layers.
//
// Defines: DTYPE_BF16 (storage), HYP_R (r <= 128), HYP_LAYERS.
// Shared memory: (HYP_LAYERS r^2 + warps r) floats.

#ifndef HYP_R
#error "HYP_R must be defined"
#endif
#ifndef HYP_LAYERS
#define HYP_LAYERS 3
#endif
#define R HYP_R
#define RPL ((R + 31) / 32)

// Layout shared with the host (kernels/src/params.rs, #[repr(C)] HypParams).
struct HypParams {
    const elem_t* x;      // [B, T, r]
    const elem_t* w;      // [B, HYP_LAYERS, r, r]
    const float* gamma;   // [HYP_LAYERS, r]
    const float* beta;    // [HYP_LAYERS, r]
    elem_t* y;            // [B, T, r]
    int b, t;
    float eps;
};

extern "C" __global__ void __launch_bounds__(256) hyper_chain_fwd(const HypParams p) {
    extern __shared__ __align__(16) float sm[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    float* ws = sm;
    float* dv = sm + HYP_LAYERS * R * R + warp * R;
    const int b = blockIdx.y;
    const elem_t* wb = p.w + (i64)b * HYP_LAYERS * R * R;
    for (int i = threadIdx.x; i < HYP_LAYERS * R * R; i += blockDim.x) ws[i] = ld_elem(wb + i);
    __syncthreads();

    const int tok = blockIdx.x * nwarps + warp;
    if (tok >= p.t) return;
    const i64 base = ((i64)b * p.t + tok) * R;
    for (int j = lane; j < R; j += 32) dv[j] = ld_elem(p.x + base + j);
    __syncwarp();

    float yv[RPL];
#pragma unroll
    for (int n = 0; n < HYP_LAYERS; ++n) {
        const float* wn = ws + n * R * R;
        float sum = 0.f;
#pragma unroll
        for (int q = 0; q < RPL; ++q) {
            const int j = lane + 32 * q;
            float a = 0.f;
            if (j < R) {
#pragma unroll 8
                for (int i = 0; i < R; ++i) a = fmaf(dv[i], wn[i * R + j], a);
            }
            yv[q] = a;
            sum += a;
        }
        const float mean = warp_sum(sum) * (1.f / R);
        float sq = 0.f;
#pragma unroll
        for (int q = 0; q < RPL; ++q) {
            const int j = lane + 32 * q;
            const float dlt = j < R ? yv[q] - mean : 0.f;
            sq += dlt * dlt;
        }
        const float rstd = rsqrtf(warp_sum(sq) * (1.f / R) + p.eps);
        __syncwarp();  // every lane has read dv
#pragma unroll
        for (int q = 0; q < RPL; ++q) {
            const int j = lane + 32 * q;
            if (j < R) {
                const float z = (yv[q] - mean) * rstd * p.gamma[n * R + j] + p.beta[n * R + j];
                dv[j] = fmaxf(z, 0.f);
            }
        }
        __syncwarp();
    }
    for (int j = lane; j < R; j += 32) st_elem(p.y + base + j, dv[j]);
}

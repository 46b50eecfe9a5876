// Probe kernels: each exercises one primitive of the preludes on its own, so the emulator's
// warp-level helpers can be tested against the ISA's layout tables (kernels/tests/emulator.rs),
// and the same tests confirm on a GPU that the emulator and the hardware agree.
//
//   probe_mma          one warp: lane t loads its A / B / C fragment registers from a[4t..],
//                      b[2t..], c[4t..], runs one mma_bf16_16816, stores its D registers.
//   probe_ldmatrix     one warp: four 8 x 8 b16 matrices staged in shared memory (row stride 16
//                      elements), lane t gives the address of row t % 8 of matrix t / 8; stores the
//                      four registers of ldmatrix_x4 (trans = 0) or ldmatrix_x4_trans (trans = 1).
//   probe_shfl_xor     y[t] = __shfl_xor_sync(full, x[t], lane_mask), one warp.
//   probe_cp_async     one warp copies 32 rows of 16 bytes to shared memory with cp_async16; rows
//                      >= nvalid are zero-filled; then the rows are copied out.
//   probe_barrier      128 threads: s[t] = x[t]; __syncthreads; y[t] = s[127 - t].
//   probe_bf16         y[i] = f32_to_bf16(x[i]); packed[i / 2] = pack_bf16x2(x[i], x[i + 1]).

extern "C" __global__ void probe_mma(const u32* a, const u32* b, const float* c, float* d) {
    const int t = threadIdx.x;
    u32 af[4] = {a[4 * t], a[4 * t + 1], a[4 * t + 2], a[4 * t + 3]};
    float df[4] = {c[4 * t], c[4 * t + 1], c[4 * t + 2], c[4 * t + 3]};
    mma_bf16_16816(df, af, b[2 * t], b[2 * t + 1]);
    for (int i = 0; i < 4; ++i) d[4 * t + i] = df[i];
}

extern "C" __global__ void probe_ldmatrix(const u16* m, u32* out, int trans) {
    extern __shared__ __align__(16) unsigned char smem[];
    u16* s = (u16*)smem;
    const int t = threadIdx.x;
    // Row r of matrix i sits at shared row 8 i + r, 16 elements apart (8 used, 8 padding).
    for (int e = t; e < 32 * 8; e += 32) s[(e / 8) * 16 + e % 8] = m[e];
    __syncwarp();
    const u32 addr = smem_u32(s + t * 16);
    u32 r0, r1, r2, r3;
    if (trans) ldmatrix_x4_trans(r0, r1, r2, r3, addr);
    else ldmatrix_x4(r0, r1, r2, r3, addr);
    out[4 * t] = r0;
    out[4 * t + 1] = r1;
    out[4 * t + 2] = r2;
    out[4 * t + 3] = r3;
}

extern "C" __global__ void probe_shfl_xor(const float* x, float* y, int lane_mask) {
    const int t = threadIdx.x;
    y[t] = __shfl_xor_sync(0xffffffffu, x[t], lane_mask);
}

extern "C" __global__ void probe_cp_async(const u16* src, u16* out, int nvalid) {
    extern __shared__ __align__(16) unsigned char smem[];
    u16* s = (u16*)smem;
    const int t = threadIdx.x;
    cp_async16(smem_u32(s + t * 8), src + (t < nvalid ? t : 0) * 8, t < nvalid);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    for (int e = t; e < 32 * 8; e += 32) out[e] = s[e];
}

extern "C" __global__ void probe_barrier(const float* x, float* y) {
    extern __shared__ __align__(16) unsigned char smem[];
    float* s = (float*)smem;
    const int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    y[t] = s[blockDim.x - 1 - t];
}

extern "C" __global__ void probe_bf16(const float* x, u16* y, u32* packed, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = f32_to_bf16(x[i]);
    if (i % 2 == 0 && i + 1 < n) packed[i / 2] = pack_bf16x2(x[i], x[i + 1]);
}

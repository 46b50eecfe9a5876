// medsa-kernels device prelude: the parts of the kernels' environment that only a GPU has.
// NVRTC sees: the per-config #defines, this file, common.cuh, then the kernel source. The CPU
// emulator (kernels/src/emulator.rs) puts emulator_prelude.hpp in its place; both preludes define
// the same types and primitives with the same signatures:
//   u32, u16, i64; f32_to_bf16, pack_bf16x2 (round to nearest even); smem_u32; cp_async16,
//   cp_async_commit, cp_async_wait_all; ldmatrix_x4, ldmatrix_x4_trans; mma_bf16_16816.
// There are no #includes anywhere, so NVRTC needs no CUDA headers.
typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

// ---- bf16 conversions (raw bits in u16) --------------------------------------------------------
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Packs two floats as bf16x2: `lo` in bits 0..15, `hi` in bits 16..31.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// ---- shared-memory addresses and async copies (sm_80+) -----------------------------------------
__device__ __forceinline__ u32 smem_u32(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// 16-byte global->shared copy; when `valid` is false the destination is zero-filled and the
// source is not read (src-size 0), so out-of-range rows cost nothing and need no branch.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// ---- ldmatrix / mma (bf16 in, f32 accumulate) --------------------------------------------------
__device__ __forceinline__ void ldmatrix_x4(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
// d = a * b + d for one m16n8k16 tile.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

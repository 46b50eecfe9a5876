// medsa-kernels common prelude. Prepended (after the per-config #defines) to every kernel source
// by the host; there are no #includes anywhere, so NVRTC needs no CUDA headers.
//
// Defines every config may set:
//   DTYPE_BF16  1: storage type `elem_t` is bf16 (raw 16-bit), 0: f32.
typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#ifndef DTYPE_BF16
#define DTYPE_BF16 0
#endif

#define LOG2E_F 1.4426950408889634f
#define NEG_INF_F (-__int_as_float(0x7f800000))

// ---- bf16 helpers (raw bits in u16) ------------------------------------------------------------
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

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

#if DTYPE_BF16
typedef u16 elem_t;
__device__ __forceinline__ float ld_elem(const elem_t* p) { return bf16_to_f32(*p); }
__device__ __forceinline__ void st_elem(elem_t* p, float v) { *p = f32_to_bf16(v); }
#else
typedef float elem_t;
__device__ __forceinline__ float ld_elem(const elem_t* p) { return *p; }
__device__ __forceinline__ void st_elem(elem_t* p, float v) { *p = v; }
#endif

// ---- warp reductions ---------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
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

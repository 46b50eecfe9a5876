// medsa-kernels common helpers, portable across the device and emulator preludes (see
// device_prelude.cuh for what a prelude provides). Included after the prelude, before the source.
//
// Defines every config may set:
//   DTYPE_BF16  1: storage type `elem_t` is bf16 (raw 16-bit), 0: f32.
#ifndef DTYPE_BF16
#define DTYPE_BF16 0
#endif

#define LOG2E_F 1.4426950408889634f
#define NEG_INF_F (-__int_as_float(0x7f800000))

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

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

// medsa-kernels CPU emulator prelude: the stand-in for `device_prelude.cuh` when a kernel source
// is compiled as C++ by the host compiler (kernels/src/emulator.rs). Everything a kernel source
// may use beyond plain C++ is defined here: the CUDA keywords, the thread / block indices, shared
// memory, __syncthreads / __syncwarp, warp shuffles, and the PTX primitives of the device prelude
// (bf16 conversions, cp.async, ldmatrix, mma.sync). The kernel sources are not changed.
//
// Execution model. One launch runs its blocks on a few host threads (blocks are independent);
// inside a block every CUDA thread is a fiber with its own stack (a hand-written x86-64 context
// switch, ucontext elsewhere), so a block of 128 threads is 128 execution contexts on one host
// thread, switched at synchronisation points:
// __syncthreads and the warp collectives (__syncwarp, shuffles, ldmatrix, mma). The block
// scheduler is warp-major: one warp runs its lanes one after another up to the next collective,
// evaluates the collective on the 32 deposited operands at once (exactly the data movement the
// ISA describes), and goes on until it waits at __syncthreads or exits; then the next warp. Once
// every live thread waits at __syncthreads (exited threads count as arrived) the barrier opens.
// Lanes of one warp at different collectives, or a collective some lanes never reach, is an
// error. Warps and lanes run in an order chosen per launch (forward, reverse, or a seeded
// shuffle), and warps drift as far apart as the barriers allow, so a missing barrier shows as a
// wrong result (reads of poisoned shared memory) in at least one order, deterministically.
// With EMU_CONCURRENT 1 every CUDA thread is a host thread instead, with real barriers (the last
// arrival at a warp collective evaluates it), one block at a time.
//
// Memory checks: dynamic shared memory is filled with 0xFF (a NaN in f32 and bf16) at the start
// of every block, so reading shared memory nobody wrote shows up as NaN; 1 KiB past the
// requested size is checked after the block (a write past the end is an error); shared addresses
// handed to ldmatrix / cp.async are bounds- and alignment-checked. cp.async copies are deferred
// to the thread's cp.async.wait_group, so reading staged data before the wait reads poison.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// EMU_CONCURRENT 0: fibers, one block per host thread at a time, so shared memory is per host
// thread. EMU_CONCURRENT 1: every CUDA thread is a host thread, one block at a time, so shared
// memory is one static array.
#ifndef EMU_CONCURRENT
#define EMU_CONCURRENT 0
#endif
#if EMU_CONCURRENT
#define EMU_SHARED_STORAGE
#else
#define EMU_SHARED_STORAGE thread_local
#endif
#define __shared__ EMU_SHARED_STORAGE
#define __restrict__ __restrict

#ifndef EMU_SMEM_MAX
#define EMU_SMEM_MAX (227 * 1024)
#endif
#define EMU_SMEM_GUARD 1024
#define EMU_STACK_BYTES (64 * 1024)

namespace emu {

// ---- fiber contexts -----------------------------------------------------------------------------
#if defined(__x86_64__)
// A context is its saved stack pointer; the six callee-saved registers of the System V ABI sit
// on that stack. No signal mask is saved, so a switch is a few instructions, not a syscall.
struct Context {
    void* sp = nullptr;
};
extern "C" void medsa_emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.p2align 4
.type medsa_emu_switch,@function
medsa_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size medsa_emu_switch, .-medsa_emu_switch
)");
static inline void switch_to(Context& save, Context& load) { medsa_emu_switch(&save.sp, load.sp); }
// Prepares `c` to start `entry()` on the stack [stack, stack + bytes) at its first switch_to.
static inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack + bytes)) & ~(uintptr_t)15;
    void** r = (void**)(top - 16);  // `ret` pops entry from here; entry then sees rsp % 16 == 8
    r[0] = (void*)entry;
    r[1] = nullptr;
    void** regs = r - 6;  // r15 .. rbp, popped before the ret
    for (int i = 0; i < 6; ++i) regs[i] = nullptr;
    c.sp = regs;
}
#else
struct Context {
    ucontext_t uc;
};
static inline void switch_to(Context& save, Context& load) { swapcontext(&save.uc, &load.uc); }
static inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

enum Wait : int { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, DONE = 3 };
enum Op : int { OP_SYNCWARP = 0, OP_SHFL = 1, OP_LDMATRIX = 2, OP_LDMATRIX_T = 3, OP_MMA = 4 };
static const char* const OP_NAMES[] = {"__syncwarp", "__shfl_xor_sync", "ldmatrix.x4", "ldmatrix.x4.trans",
                                       "mma.sync.m16n8k16"};

struct PendingCopy {
    unsigned char* dst;
    const unsigned char* src;
    bool valid;
};

struct Worker;
struct Fiber {
    Context ctx;
    Worker* worker = nullptr;
    int wait = RUNNABLE;
    dim3 tid;
    int lane = 0, warp = 0;
    // Operands deposited at a warp collective, and its results.
    int op = 0;
    u32 mask = 0, val = 0, addr = 0;
    int src = 0;
    u32 a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    u32 r[4] = {0, 0, 0, 0};
    float d[4] = {0, 0, 0, 0};
    std::vector<PendingCopy> pending;
};

// One host thread's view of the launch it is running.
struct Worker {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;  // EMU_STACK_BYTES per fiber, aligned to it (from the stack pool)
    size_t stack_bytes = 0;
    dim3 bidx, bdim, gdim;   // the block being run (what blockIdx / blockDim / gridDim read)
    Context sched;
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    std::atomic<bool> failed{false};
    char msg[512] = {0};
    // EMU_CONCURRENT: the barriers (one mutex guards them all and msg).
    std::mutex m;
    std::condition_variable cv;
    int live = 0, arrived = 0;
    unsigned gen = 0;
    int warp_live[32] = {0}, warp_arrived[32] = {0};
    unsigned warp_gen[32] = {0};
    size_t smem_bytes = 0;
    int nshared = 0;
    unsigned char* shared[4] = {nullptr, nullptr, nullptr, nullptr};
};

thread_local Fiber* cur = nullptr;
thread_local Worker* wk = nullptr;
thread_local dim3 block_idx, block_dim, grid_dim;

// The running fiber, found without thread-local storage (which costs a __tls_get_addr call per
// access in a dlopen'ed module): fiber stacks are EMU_STACK_BYTES-aligned slots whose lowest
// word holds their Fiber.
#if defined(__x86_64__) && !EMU_CONCURRENT
static inline Fiber* me() {
    uintptr_t sp;
    asm("movq %%rsp, %0" : "=r"(sp));
    return *(Fiber**)(sp & ~(uintptr_t)(EMU_STACK_BYTES - 1));
}
#else
static inline Fiber* me() { return cur; }
#endif

// Fiber stacks are reused across launches (fresh pages would be faulted in and cleared).
static std::mutex stack_pool_mutex;
static std::vector<std::pair<size_t, char*>> stack_pool;
static char* take_stacks(size_t bytes) {
    std::lock_guard<std::mutex> g(stack_pool_mutex);
    for (size_t i = 0; i < stack_pool.size(); ++i)
        if (stack_pool[i].first >= bytes) {
            char* p = stack_pool[i].second;
            stack_pool.erase(stack_pool.begin() + i);
            return p;
        }
    return (char*)aligned_alloc(EMU_STACK_BYTES, bytes);
}
static void give_stacks(size_t bytes, char* p) {
    if (!p) return;
    std::lock_guard<std::mutex> g(stack_pool_mutex);
    stack_pool.emplace_back(bytes, p);
}

// The dynamic shared arrays of this translation unit (defined by the generated epilogue).
typedef int (*SharedArraysFn)(unsigned char** bases);
static SharedArraysFn shared_arrays = nullptr;

struct Abort {};
static void evaluate(Fiber* w, int op);

// Stops the current thread: the launch fails with `msg` (every other thread is dropped).
__attribute__((noinline)) static void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char* fmt, ...) {
    {
        std::unique_lock<std::mutex> g(wk->m, std::defer_lock);
        if (EMU_CONCURRENT) g.lock();
        if (!wk->failed) {
            va_list ap;
            va_start(ap, fmt);
            int n = snprintf(wk->msg, sizeof wk->msg, "block (%u,%u,%u) thread %u: ", block_idx.x, block_idx.y,
                             block_idx.z, cur ? cur->tid.x : 0u);
            if (n > 0 && (size_t)n < sizeof wk->msg) vsnprintf(wk->msg + n, sizeof wk->msg - n, fmt, ap);
            va_end(ap);
            wk->failed = true;
        }
    }
#if EMU_CONCURRENT
    wk->cv.notify_all();
    throw Abort{};
#else
    cur->wait = DONE;
    switch_to(cur->ctx, wk->sched);
    abort();  // a failed fiber is never resumed
#endif
}

#if EMU_CONCURRENT
// Waits (holding `g`) until `done()`; a failure elsewhere or 60 s without progress aborts.
template <class F>
static void wait_for(std::unique_lock<std::mutex>& g, const char* where, F done) {
    const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done()) {
        if (wk->failed) throw Abort{};
        if (wk->cv.wait_until(g, limit) == std::cv_status::timeout && !done()) {
            g.unlock();
            fail("deadlock: no progress for 60 s at %s", where);
        }
    }
}

static void block_barrier() {
    std::unique_lock<std::mutex> g(wk->m);
    const unsigned gen = wk->gen;
    if (++wk->arrived == wk->live) {
        wk->arrived = 0;
        ++wk->gen;
        wk->cv.notify_all();
        return;
    }
    wait_for(g, "__syncthreads", [&] { return wk->gen != gen; });
}

static void warp_barrier(int op) {
    const int w = cur->warp;
    Fiber* lanes = cur - cur->lane;
    std::unique_lock<std::mutex> g(wk->m);
    const unsigned gen = wk->warp_gen[w];
    if (++wk->warp_arrived[w] == wk->warp_live[w]) {
        if (wk->warp_live[w] != 32) {
            g.unlock();
            fail("warp %d: %s with %d live lanes: a warp collective needs all 32", w, OP_NAMES[op], wk->warp_live[w]);
        }
        for (int l = 0; l < 32; ++l)
            if (lanes[l].op != op) {
                g.unlock();
                fail("warp %d: divergent collectives: lane %d at %s, lane %d at %s", w, cur->lane, OP_NAMES[op], l,
                     OP_NAMES[lanes[l].op]);
            }
        evaluate(lanes, op);
        wk->warp_arrived[w] = 0;
        ++wk->warp_gen[w];
        wk->cv.notify_all();
        return;
    }
    wait_for(g, OP_NAMES[op], [&] { return wk->warp_gen[w] != gen; });
}

// A thread exits: it no longer counts for the barriers.
static void thread_exit() {
    std::unique_lock<std::mutex> g(wk->m);
    const int w = cur->warp;
    --wk->live;
    --wk->warp_live[w];
    if (wk->warp_arrived[w] > 0 && !wk->failed) {
        snprintf(wk->msg, sizeof wk->msg, "block (%u,%u,%u) warp %d: lane %d exited while %d lanes wait at %s",
                 block_idx.x, block_idx.y, block_idx.z, w, cur->lane, wk->warp_arrived[w],
                 OP_NAMES[(cur - cur->lane)[0].op]);
        wk->failed = true;
    }
    if (wk->arrived > 0 && wk->arrived == wk->live) {
        wk->arrived = 0;
        ++wk->gen;
    }
    wk->cv.notify_all();
}
#endif

static inline void yield(int wait) {
#if EMU_CONCURRENT
    (void)wait;
    block_barrier();
#else
    cur->wait = wait;
    switch_to(cur->ctx, wk->sched);
#endif
}

static inline void warp_collective(int op, u32 mask) {
    if (mask != 0xffffffffu) fail("%s with mask %#x: only full-warp masks are emulated", OP_NAMES[op], mask);
    cur->op = op;
    cur->mask = mask;
#if EMU_CONCURRENT
    warp_barrier(op);
#else
    yield(AT_WARP);
#endif
}

// A shared-memory address as the kernels see it: (array index << 24) | byte offset.
static inline unsigned char* shared_ptr(u32 a, size_t bytes, size_t align, const char* what) {
    const u32 idx = a >> 24, off = a & 0xffffffu;
    if ((int)idx >= wk->nshared) fail("%s: %#x is not a shared-memory address", what, a);
    if (off % align != 0) fail("%s: shared address %#x is not %zu-byte aligned", what, off, align);
    if (off + bytes > wk->smem_bytes)
        fail("%s: shared bytes [%u, %zu) outside the %zu bytes of dynamic shared memory", what, off, off + bytes,
             wk->smem_bytes);
    return wk->shared[idx] + off;
}

static inline u32 to_shared(const void* p) {
    const unsigned char* q = (const unsigned char*)p;
    for (int i = 0; i < wk->nshared; ++i) {
        if (q >= wk->shared[i] && q < wk->shared[i] + EMU_SMEM_MAX + EMU_SMEM_GUARD)
            return ((u32)i << 24) | (u32)(q - wk->shared[i]);
    }
    fail("__cvta_generic_to_shared: %p is not in shared memory", p);
    return 0;
}

static inline u32 f32_bits(float f) {
    u32 u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float bits_f32(u32 u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// cvt.rn.bf16.f32: round to nearest, ties to even; NaN becomes the canonical NaN 0x7fff.
static inline u16 bf16_rn(float f) {
    const u32 u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)0x7fff;
    return (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float bf16_f32(u16 h) { return bits_f32((u32)h << 16); }

// ---- the collectives, evaluated on a whole warp ------------------------------------------------
static inline u16 half_of(u32 v, int hi) { return (u16)(hi ? v >> 16 : v & 0xffffu); }
static inline u16 shared_u16(const Fiber& f, int col) {
    // f.addr is a row address of 8 b16 (checked when it was deposited).
    u16 v;
    memcpy(&v, wk->shared[f.addr >> 24] + (f.addr & 0xffffffu) + 2 * col, 2);
    return v;
}

static void evaluate(Fiber* w, int op) {
    switch (op) {
        case OP_SYNCWARP:
            break;
        case OP_SHFL:
            for (int t = 0; t < 32; ++t) w[t].r[0] = w[w[t].src].val;
            break;
        case OP_LDMATRIX:
            // Matrix i's row j address comes from lane 8 i + j; lane t receives row t / 4,
            // columns 2 (t % 4) and 2 (t % 4) + 1 of every matrix (low half = lower column).
            for (int t = 0; t < 32; ++t)
                for (int i = 0; i < 4; ++i) {
                    const Fiber& row = w[8 * i + t / 4];
                    w[t].r[i] = (u32)shared_u16(row, 2 * (t % 4)) | ((u32)shared_u16(row, 2 * (t % 4) + 1) << 16);
                }
            break;
        case OP_LDMATRIX_T:
            // .trans: lane t receives column t / 4, rows 2 (t % 4) and 2 (t % 4) + 1.
            for (int t = 0; t < 32; ++t)
                for (int i = 0; i < 4; ++i) {
                    const Fiber& r0 = w[8 * i + 2 * (t % 4)];
                    const Fiber& r1 = w[8 * i + 2 * (t % 4) + 1];
                    w[t].r[i] = (u32)shared_u16(r0, t / 4) | ((u32)shared_u16(r1, t / 4) << 16);
                }
            break;
        case OP_MMA: {
            // m16n8k16, A row-major 16 x 16, B column-major 16 x 8, C / D 16 x 8 f32.
            // groupID g = lane / 4, threadID_in_group q = lane % 4:
            //   A: a{0,1} (g, 2q + {0,1}), a{2,3} (g + 8, 2q + {0,1}), a{4,5} (g, 2q + 8 + {0,1}),
            //      a{6,7} (g + 8, 2q + 8 + {0,1}); two bf16 per register, a0 in the low half.
            //   B: b{0,1} (2q + {0,1}, g), b{2,3} (2q + 8 + {0,1}, g).
            //   C, D: c{0,1} (g, 2q + {0,1}), c{2,3} (g + 8, 2q + {0,1}).
            float A[16][16], B[16][8], C[16][8];
            for (int t = 0; t < 32; ++t) {
                const int g = t / 4, q = t % 4;
                for (int h = 0; h < 2; ++h) {
                    A[g][2 * q + h] = bf16_f32(half_of(w[t].a[0], h));
                    A[g + 8][2 * q + h] = bf16_f32(half_of(w[t].a[1], h));
                    A[g][2 * q + 8 + h] = bf16_f32(half_of(w[t].a[2], h));
                    A[g + 8][2 * q + 8 + h] = bf16_f32(half_of(w[t].a[3], h));
                    B[2 * q + h][g] = bf16_f32(half_of(w[t].b[0], h));
                    B[2 * q + 8 + h][g] = bf16_f32(half_of(w[t].b[1], h));
                    C[g][2 * q + h] = w[t].c[h];
                    C[g + 8][2 * q + h] = w[t].c[2 + h];
                }
            }
            for (int t = 0; t < 32; ++t) {
                const int g = t / 4, q = t % 4;
                for (int e = 0; e < 4; ++e) {
                    const int row = g + (e >= 2 ? 8 : 0), col = 2 * q + (e & 1);
                    // bf16 products are exact in f32; the sum is formed in double and rounded once.
                    double s = C[row][col];
                    for (int k = 0; k < 16; ++k) s += (double)A[row][k] * (double)B[k][col];
                    w[t].d[e] = (float)s;
                }
            }
            break;
        }
    }
}

// ---- the block scheduler -----------------------------------------------------------------------
// A thread that exits with copies in flight: they complete (the hardware would finish them).
static void flush_copies() {
    for (const PendingCopy& p : cur->pending) {
        if (p.valid) memcpy(p.dst, p.src, 16);
        else memset(p.dst, 0, 16);
    }
    cur->pending.clear();
}

// A fiber's first frame: runs the kernel, then hands control back for good.
static void fiber_main() {
    wk->body(wk->body_arg);
    flush_copies();
    cur->wait = DONE;
    switch_to(cur->ctx, wk->sched);
    abort();  // a finished fiber is never resumed
}

static uint64_t next_rand(uint64_t& s) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

static bool block_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static bool block_error(const char* fmt, ...) {
    int n = snprintf(wk->msg, sizeof wk->msg, "block (%u,%u,%u): ", block_idx.x, block_idx.y, block_idx.z);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof wk->msg) vsnprintf(wk->msg + n, sizeof wk->msg - n, fmt, ap);
    va_end(ap);
    wk->failed = true;
    return false;
}

// The start of every block: its dynamic shared memory (and guard) poisoned, so unwritten bytes
// read as NaN, and every thread's index and state reset.
static void start_block(Worker& W, int nthreads) {
    const size_t poison = std::min<size_t>(W.smem_bytes + EMU_SMEM_GUARD, EMU_SMEM_MAX + EMU_SMEM_GUARD);
    for (int i = 0; i < W.nshared; ++i) memset(W.shared[i], 0xff, poison);
    for (int t = 0; t < nthreads; ++t) {
        Fiber& f = W.fibers[t];
        f.wait = RUNNABLE;
        f.tid.x = (unsigned)(t % W.bdim.x);
        f.tid.y = (unsigned)((t / W.bdim.x) % W.bdim.y);
        f.tid.z = (unsigned)(t / (W.bdim.x * W.bdim.y));
        f.lane = t & 31;
        f.warp = t >> 5;
        f.pending.clear();
        f.worker = &W;
    }
}

static bool check_shared_guard();

static void permute(std::vector<int>& v, int order, uint64_t& rng) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = (int)i;
    if (order == 1) std::reverse(v.begin(), v.end());
    if (order == 2)
        for (size_t i = v.size() - 1; i > 0 && v.size() > 1; --i) std::swap(v[i], v[next_rand(rng) % (i + 1)]);
}

// Runs one block to completion; false (with wk->msg) on any error.
//
// Warp-major: each warp in turn runs as far as it can (its lanes one after another up to the
// next collective, the collective, and so on) until it waits at __syncthreads or exits; then the
// next warp. Warps therefore drift as far apart as the barriers allow, so shared memory read
// before the barrier that should publish it reads another warp's unwritten (poisoned) bytes.
static bool run_block(int nthreads, int order, uint64_t& rng) {
    Worker& W = *wk;
    start_block(W, nthreads);
    for (int t = 0; t < nthreads; ++t) {
        Fiber& f = W.fibers[t];
        *(Fiber**)(W.stacks + (size_t)t * EMU_STACK_BYTES) = &f;
        make_context(f.ctx, W.stacks + (size_t)t * EMU_STACK_BYTES, EMU_STACK_BYTES, fiber_main);
    }
    const int nwarps = (nthreads + 31) / 32;
    std::vector<int> warps(nwarps), lanes32(32);
    for (;;) {
        permute(warps, order, rng);
        for (int w : warps) {
            Fiber* lanes = &W.fibers[w * 32];
            const int n = std::min(32, nthreads - w * 32);
            for (;;) {
                permute(lanes32, order, rng);
                for (int l : lanes32) {
                    if (l >= n || lanes[l].wait != RUNNABLE) continue;
                    cur = &lanes[l];
                    switch_to(W.sched, lanes[l].ctx);
                    cur = nullptr;
                    if (W.failed) return false;
                }
                int at_warp = 0, at_bar = 0, done = 0;
                for (int l = 0; l < n; ++l) {
                    at_warp += lanes[l].wait == AT_WARP;
                    at_bar += lanes[l].wait == AT_BARRIER;
                    done += lanes[l].wait == DONE;
                }
                if (at_warp == 0) break;  // at __syncthreads or exited
                if (at_warp != 32) {
                    int first = 0;
                    while (lanes[first].wait != AT_WARP) ++first;
                    return block_error("warp %d: %d lanes at %s, %d at __syncthreads, %d exited: a warp collective "
                                       "needs all 32 lanes",
                                       w, at_warp, OP_NAMES[lanes[first].op], at_bar, done);
                }
                const int op = lanes[0].op;
                for (int l = 1; l < 32; ++l)
                    if (lanes[l].op != op)
                        return block_error("warp %d: divergent collectives: lane 0 at %s, lane %d at %s", w,
                                           OP_NAMES[op], l, OP_NAMES[lanes[l].op]);
                evaluate(lanes, op);
                for (int l = 0; l < 32; ++l) lanes[l].wait = RUNNABLE;
            }
        }
        bool all_done = true;
        for (int t = 0; t < nthreads; ++t) all_done = all_done && W.fibers[t].wait == DONE;
        if (all_done) break;
        // Every live thread waits at __syncthreads (exited threads count as arrived).
        for (int t = 0; t < nthreads; ++t)
            if (W.fibers[t].wait == AT_BARRIER) W.fibers[t].wait = RUNNABLE;
    }
    return check_shared_guard();
}

static bool check_shared_guard() {
    Worker& W = *wk;
    for (int i = 0; i < W.nshared; ++i) {
        const unsigned char* g = W.shared[i] + W.smem_bytes;
        for (size_t j = 0; j < EMU_SMEM_GUARD && W.smem_bytes + j < EMU_SMEM_MAX + EMU_SMEM_GUARD; ++j) {
            if (g[j] != 0xff)
                return block_error("wrote shared byte %zu, past the %zu bytes of dynamic shared memory",
                                   W.smem_bytes + j, W.smem_bytes);
        }
    }
    return true;
}

#if EMU_CONCURRENT
// Runs one block with every CUDA thread on its own host thread and real barriers.
static bool run_block_concurrent(int nthreads) {
    Worker& W = *wk;
    start_block(W, nthreads);
    W.live = nthreads;
    W.arrived = 0;
    for (int w = 0; w < 32; ++w) {
        W.warp_live[w] = std::max(0, std::min(32, nthreads - w * 32));
        W.warp_arrived[w] = 0;
    }
    const dim3 bi = block_idx, bd = block_dim, gd = grid_dim;
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (int t = 0; t < nthreads; ++t) {
        Fiber& f = W.fibers[t];
        threads.emplace_back([&W, &f, bi, bd, gd] {
            wk = &W;
            cur = &f;
            block_idx = bi;
            block_dim = bd;
            grid_dim = gd;
            try {
                W.body(W.body_arg);
                flush_copies();
            } catch (const Abort&) {
            }
            thread_exit();
        });
    }
    for (auto& t : threads) t.join();
    if (W.failed) return false;
    return check_shared_guard();
}
#endif

// What the host passes to a launch (kernels/src/emulator.rs, #[repr(C)] LaunchSpec).
struct LaunchSpec {
    u32 grid[3];
    u32 block[3];
    u32 smem;
    int order;  // 0 forward, 1 reverse, 2 shuffled
    unsigned long long seed;
    u32 workers;
};

static int run_grid(const LaunchSpec* s, void (*body)(void*), void* arg, char* err, int errlen) {
    const long long nthreads = (long long)s->block[0] * s->block[1] * s->block[2];
    const long long nblocks = (long long)s->grid[0] * s->grid[1] * s->grid[2];
    if (nthreads <= 0 || nthreads > 1024) {
        snprintf(err, errlen, "block of %lld threads (1..1024)", nthreads);
        return 4;
    }
    if (s->smem > EMU_SMEM_MAX) {
        snprintf(err, errlen, "%u bytes of dynamic shared memory > %d", s->smem, EMU_SMEM_MAX);
        return 4;
    }
    if (nblocks <= 0) return 0;
    std::atomic<long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex m;
    std::string first;
    auto work = [&]() {
        Worker W;
        wk = &W;
        W.body = body;
        W.body_arg = arg;
        W.smem_bytes = s->smem;
        W.fibers.resize((size_t)nthreads);
#if !EMU_CONCURRENT
        W.stack_bytes = (size_t)nthreads * EMU_STACK_BYTES;
        W.stacks = take_stacks(W.stack_bytes);
#endif
        block_dim.x = s->block[0];
        block_dim.y = s->block[1];
        block_dim.z = s->block[2];
        grid_dim.x = s->grid[0];
        grid_dim.y = s->grid[1];
        grid_dim.z = s->grid[2];
        W.bdim = block_dim;
        W.gdim = grid_dim;
        W.nshared = shared_arrays ? shared_arrays(W.shared) : 0;
        for (;;) {
            const long long b = next.fetch_add(1);
            if (b >= nblocks || failed.load()) break;
            block_idx.x = (unsigned)(b % s->grid[0]);
            block_idx.y = (unsigned)((b / s->grid[0]) % s->grid[1]);
            block_idx.z = (unsigned)(b / ((long long)s->grid[0] * s->grid[1]));
            W.bidx = block_idx;
            uint64_t rng = (s->seed ^ ((uint64_t)b * 0x9E3779B97F4A7C15ull)) | 1u;
#if EMU_CONCURRENT
            const bool ok = run_block_concurrent((int)nthreads);
#else
            const bool ok = run_block((int)nthreads, s->order, rng);
#endif
            if (!ok) {
                std::lock_guard<std::mutex> g(m);
                if (!failed.exchange(true)) first = W.msg;
                break;
            }
        }
        give_stacks(W.stack_bytes, W.stacks);
        wk = nullptr;
    };
    // Concurrent mode: one block at a time (its shared memory is one static array).
    const long long nw = EMU_CONCURRENT ? 1 : std::max<long long>(1, std::min<long long>(s->workers, nblocks));
    std::vector<std::thread> pool;
    for (long long i = 1; i < nw; ++i) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();
    if (failed.load()) {
        snprintf(err, errlen, "%s", first.c_str());
        return 5;
    }
    return 0;
}

template <class... A, size_t... I>
static void invoke(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(args[I])...);
}

// Launches kernel `f` with the argument bytes `args[i]` (sizes[i] bytes each, checked against
// the kernel's own parameter types).
template <class... A>
static int launch(void (*f)(A...), const LaunchSpec* s, void** args, const unsigned* sizes, int nargs, char* err,
                  int errlen) {
    const size_t want[] = {sizeof(A)..., 0};
    if (nargs != (int)sizeof...(A)) {
        snprintf(err, errlen, "the kernel takes %zu arguments, %d given", sizeof...(A), nargs);
        return 3;
    }
    for (int i = 0; i < nargs; ++i) {
        if (sizes[i] != want[i]) {
            snprintf(err, errlen, "argument %d is %u bytes, the kernel takes %zu", i, sizes[i], want[i]);
            return 3;
        }
    }
    struct Ctx {
        void (*f)(A...);
        void** args;
    } ctx{f, args};
    auto body = [](void* p) {
        Ctx* c = (Ctx*)p;
        invoke(c->f, c->args, std::index_sequence_for<A...>{});
    };
    return run_grid(s, body, &ctx, err, errlen);
}

}  // namespace emu

// ---- the CUDA built-ins the kernels use ---------------------------------------------------------
#define threadIdx (::emu::me()->tid)
#if EMU_CONCURRENT
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#else
#define blockIdx (::emu::me()->worker->bidx)
#define blockDim (::emu::me()->worker->bdim)
#define gridDim (::emu::me()->worker->gdim)
#endif

static inline void __syncthreads() { emu::yield(emu::AT_BARRIER); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_collective(emu::OP_SYNCWARP, mask); }

static inline u32 emu_shfl_xor(unsigned mask, u32 v, int lane_mask, int width) {
    if (width != 32) emu::fail("__shfl_xor_sync width %d: only 32 is emulated", width);
    emu::cur->val = v;
    emu::cur->src = (emu::cur->lane ^ lane_mask) & 31;
    emu::warp_collective(emu::OP_SHFL, mask);
    return emu::cur->r[0];
}
static inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = 32) {
    return emu::bits_f32(emu_shfl_xor(mask, emu::f32_bits(v), lane_mask, width));
}
static inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int width = 32) {
    return (int)emu_shfl_xor(mask, (u32)v, lane_mask, width);
}
static inline unsigned __shfl_xor_sync(unsigned mask, unsigned v, int lane_mask, int width = 32) {
    return emu_shfl_xor(mask, v, lane_mask, width);
}

template <class T>
static inline T __ldg(const T* p) {
    return *p;
}
static inline float __int_as_float(int i) { return emu::bits_f32((u32)i); }
static inline float __uint_as_float(u32 u) { return emu::bits_f32(u); }
static inline u32 __float_as_uint(float f) { return emu::f32_bits(f); }
static inline int __float_as_int(float f) { return (int)emu::f32_bits(f); }
#define __expf(x) expf(x)
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline i64 min(i64 a, i64 b) { return a < b ? a : b; }
static inline i64 max(i64 a, i64 b) { return a > b ? a : b; }
static inline size_t __cvta_generic_to_shared(const void* p) { return emu::to_shared(p); }

// ---- the device prelude's primitives (same names and signatures as device_prelude.cuh) ---------
__device__ __forceinline__ u16 f32_to_bf16(float f) { return emu::bf16_rn(f); }

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)emu::bf16_rn(lo) | ((u32)emu::bf16_rn(hi) << 16);
}

__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    if ((uintptr_t)src % 16 != 0) emu::fail("cp.async: global address %p is not 16-byte aligned", src);
    unsigned char* d = emu::shared_ptr(dst, 16, 16, "cp.async");
    emu::cur->pending.push_back({d, (const unsigned char*)src, valid});
}
__device__ __forceinline__ void cp_async_commit() {}
__device__ __forceinline__ void cp_async_wait_all() {
    for (const emu::PendingCopy& p : emu::cur->pending) {
        if (p.valid) memcpy(p.dst, p.src, 16);
        else memset(p.dst, 0, 16);
    }
    emu::cur->pending.clear();
}

__device__ __forceinline__ void emu_ldmatrix(int op, u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    emu::shared_ptr(addr, 16, 16, emu::OP_NAMES[op]);
    emu::cur->addr = addr;
    emu::warp_collective(op, 0xffffffffu);
    r0 = emu::cur->r[0];
    r1 = emu::cur->r[1];
    r2 = emu::cur->r[2];
    r3 = emu::cur->r[3];
}
__device__ __forceinline__ void ldmatrix_x4(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    emu_ldmatrix(emu::OP_LDMATRIX, r0, r1, r2, r3, addr);
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32& r0, u32& r1, u32& r2, u32& r3, u32 addr) {
    emu_ldmatrix(emu::OP_LDMATRIX_T, r0, r1, r2, r3, addr);
}

// d = a * b + d for one m16n8k16 tile.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    emu::Fiber* f = emu::cur;
    for (int i = 0; i < 4; ++i) {
        f->a[i] = a[i];
        f->c[i] = d[i];
    }
    f->b[0] = b0;
    f->b[1] = b1;
    emu::warp_collective(emu::OP_MMA, 0xffffffffu);
    for (int i = 0; i < 4; ++i) d[i] = emu::cur->d[i];
}

//! The CPU implementation of [`Device`]: the kernels of `kernels/cuda/` compiled a second time,
//! as C++, by the host compiler, and run on the CPU.
//!
//! A module is the per-config `#define`s, `emulator_prelude.hpp` (in place of
//! `device_prelude.cuh`), `common.cuh`, the unchanged kernel source, and a generated epilogue
//! that defines the dynamic shared arrays and one launch entry point. It is compiled with
//! `$CXX` (default `c++`) into a shared library, cached by content hash under
//! `$MEDSA_EMU_CACHE` (default `target/medsa-emu`), and loaded with `dlopen`. See the prelude for
//! the execution model (every CUDA thread a fiber; warps and barriers released by a scheduler;
//! forward, reverse or shuffled order between synchronisation points; or, in
//! [`ThreadOrder::Concurrent`], every CUDA thread a host thread with real barriers).
//!
//! Memory is host memory: a [`Buffer`]'s address is a host pointer, with a 4 KiB guard of `0xFF`
//! bytes on both sides (a NaN in f32 and bf16 when read); every launch and GEMM checks the guards
//! of all live buffers afterwards, and GEMM operands are bounds-checked against the allocations
//! before they are touched. GEMMs follow `cublasGemmStridedBatchedEx`'s documented semantics
//! (column-major, `op(A)` `m x k`, leading dimensions at least the stored rows, `beta = 0` does
//! not read C): the operands are gathered by those rules, multiplied by `medsa_ref`'s f32
//! matmul, and the result rounded to the storage type.

use crate::device::{Buffer, Device, DeviceKind, GemmCall, GemmType, KernelArgs};
use crate::error::{KernelError, Result};
use crate::geometry::Launch;
use crate::source::{KernelConfig, COMMON, EMULATOR_PRELUDE};
use medsa_core::{Backend, Tensor};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The order in which a block's threads run between synchronisation points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadOrder {
    /// Thread 0 first.
    Forward,
    /// The last thread first.
    Reverse,
    /// A fresh seeded permutation of warps and lanes at every step (deterministic per seed and
    /// block).
    Shuffled(u64),
    /// Every CUDA thread a host thread, with real barriers (`__syncthreads`, and a 32-lane
    /// barrier whose last arrival evaluates the collective); blocks one at a time. The order is
    /// the operating system's, so a race shows as an unstable result. Slow: for small launches.
    Concurrent,
}

/// A textual change to a kernel source before it is compiled (mutation testing: a test that must
/// fail when the kernel is broken in a known way). `find` must occur in the source exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourcePatch {
    /// Text to replace.
    pub find: String,
    /// Replacement.
    pub replace: String,
}

/// Settings of an [`Emulator`].
#[derive(Clone, Debug)]
pub struct EmuOptions {
    /// Thread order inside a block.
    pub order: ThreadOrder,
    /// Host threads running blocks in parallel (0: the machine's parallelism).
    pub workers: usize,
    /// Source patches, applied to every module they match once.
    pub patches: Vec<SourcePatch>,
}

impl Default for EmuOptions {
    fn default() -> Self {
        EmuOptions { order: ThreadOrder::Forward, workers: 0, patches: Vec::new() }
    }
}

const GUARD: usize = 4096;

#[repr(C)]
struct LaunchSpec {
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    order: i32,
    seed: u64,
    workers: u32,
    _pad: u32,
}

type LaunchFn = unsafe extern "C" fn(
    entry: *const c_char,
    spec: *const LaunchSpec,
    args: *mut *mut c_void,
    sizes: *const u32,
    nargs: i32,
    err: *mut c_char,
    errlen: i32,
) -> i32;

struct Module {
    _lib: libloading::Library,
    launch: LaunchFn,
}

#[derive(Default)]
struct Registry {
    /// Live allocations: address -> bytes (guards on both sides).
    live: BTreeMap<u64, usize>,
}

impl Registry {
    /// The first guard byte that is no longer `0xFF`, as (allocation address, offset).
    fn corrupted_guard(&self) -> Option<(u64, isize)> {
        for (&addr, &bytes) in &self.live {
            // SAFETY: every live entry names an allocation of GUARD + bytes + GUARD bytes that
            // is freed only after its entry is removed under this lock.
            let before = unsafe { std::slice::from_raw_parts((addr as usize - GUARD) as *const u8, GUARD) };
            let after = unsafe { std::slice::from_raw_parts((addr as usize + bytes) as *const u8, GUARD) };
            if let Some(i) = before.iter().position(|&b| b != 0xff) {
                return Some((addr, i as isize - GUARD as isize));
            }
            if let Some(i) = after.iter().position(|&b| b != 0xff) {
                return Some((addr, (bytes + i) as isize));
            }
        }
        None
    }

    /// Whether `[addr, addr + len)` lies inside one live allocation.
    fn contains(&self, addr: u64, len: usize) -> bool {
        match self.live.range(..=addr).next_back() {
            Some((&base, &bytes)) => addr + len as u64 <= base + bytes as u64,
            None => false,
        }
    }
}

struct Allocation {
    _mem: Vec<u128>,
    addr: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Ok(mut r) = self.registry.lock() {
            r.live.remove(&self.addr);
        }
    }
}

/// The CPU emulator of the CUDA device.
pub struct Emulator {
    opts: EmuOptions,
    compiler: String,
    compiler_id: String,
    cache_dir: PathBuf,
    modules: Mutex<HashMap<KernelConfig, Arc<Module>>>,
    registry: Arc<Mutex<Registry>>,
    launched: Mutex<std::collections::BTreeSet<(&'static str, String)>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Emulator({:?})", self.opts.order)
    }
}

fn emu_err(msg: impl Into<String>) -> KernelError {
    KernelError::Emulator(msg.into())
}

/// FNV-1a, 64 bit: a stable content hash for the module cache.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const CXX_FLAGS: [&str; 8] = [
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-pthread",
    "-Wno-unknown-pragmas",
    "-w",
];

fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MEDSA_EMU_CACHE") {
        return PathBuf::from(d);
    }
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target");
    if target.is_dir() {
        return target.join("medsa-emu");
    }
    std::env::temp_dir().join("medsa-emu")
}

/// The `extern __shared__` arrays a source declares, as (element type, name).
fn shared_arrays(src: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("extern __shared__") {
        let decl = &rest[i + "extern __shared__".len()..];
        let end = decl.find(';').unwrap_or(decl.len());
        let mut d = decl[..end].to_string();
        if let Some(a) = d.find("__align__(") {
            if let Some(b) = d[a..].find(')') {
                d.replace_range(a..a + b + 1, "");
            }
        }
        let d = d.trim().trim_end_matches("[]").trim();
        if let Some(sp) = d.rfind(|c: char| c.is_whitespace() || c == '*') {
            let (ty, name) = (d[..=sp].trim().to_string(), d[sp + 1..].trim().to_string());
            if !out.iter().any(|(_, n)| *n == name) {
                out.push((ty, name));
            }
        }
        rest = &decl[end..];
    }
    out
}

impl Emulator {
    /// An emulator with `opts`; fails with [`KernelError::Emulator`] when no host C++ compiler
    /// runs (`$CXX`, default `c++`).
    pub fn new(opts: EmuOptions) -> Result<Self> {
        let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = std::process::Command::new(&compiler)
            .arg("--version")
            .output()
            .map_err(|e| emu_err(format!("no host C++ compiler: `{compiler} --version`: {e} (set $CXX)")))?;
        if !out.status.success() {
            return Err(emu_err(format!("`{compiler} --version` failed (set $CXX)")));
        }
        let compiler_id = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
        Ok(Emulator {
            opts,
            compiler,
            compiler_id,
            cache_dir: default_cache_dir(),
            modules: Mutex::new(HashMap::new()),
            registry: Arc::new(Mutex::new(Registry::default())),
            launched: Mutex::new(Default::default()),
        })
    }

    /// The settings.
    pub fn options(&self) -> &EmuOptions {
        &self.opts
    }

    /// Every (source file, entry point) launched successfully so far.
    pub fn launched(&self) -> Vec<(&'static str, String)> {
        self.launched.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// The C++ text of `cfg`'s module (with this emulator's patches applied).
    pub fn module_source(&self, cfg: &KernelConfig) -> Result<String> {
        let mut src = cfg.source.text().to_string();
        for p in &self.opts.patches {
            match src.matches(p.find.as_str()).count() {
                0 => {}
                1 => src = src.replacen(p.find.as_str(), &p.replace, 1),
                n => {
                    return Err(emu_err(format!(
                        "patch {:?} matches {n} times in {}",
                        p.find,
                        cfg.source.file_name()
                    )))
                }
            }
        }
        let mut s = String::new();
        for (k, v) in &cfg.defines {
            s.push_str(&format!("#define {k} {v}\n"));
        }
        if self.opts.order == ThreadOrder::Concurrent {
            s.push_str("#define EMU_CONCURRENT 1\n");
        }
        s.push_str(EMULATOR_PRELUDE);
        s.push('\n');
        s.push_str(COMMON);
        s.push('\n');
        s.push_str(&src);
        s.push_str("\n// ---- emulator epilogue (generated by kernels/src/emulator.rs) ----\n");
        let arrays = shared_arrays(&src);
        for (ty, name) in &arrays {
            s.push_str(&format!(
                "EMU_SHARED_STORAGE __attribute__((aligned(16))) {ty} {name}[(EMU_SMEM_MAX + EMU_SMEM_GUARD) / sizeof({ty})];\n"
            ));
        }
        s.push_str("static int emu_shared_arrays(unsigned char** b) {\n");
        for (i, (_, name)) in arrays.iter().enumerate() {
            s.push_str(&format!("    b[{i}] = (unsigned char*){name};\n"));
        }
        s.push_str(&format!("    return {};\n}}\n", arrays.len()));
        s.push_str(
            "extern \"C\" __attribute__((visibility(\"default\"))) int medsa_emu_launch(const char* entry, \
             const emu::LaunchSpec* s, void** args, const unsigned* sizes, int nargs, char* err, int errlen) {\n    \
             emu::shared_arrays = emu_shared_arrays;\n",
        );
        for e in cfg.source.entries() {
            s.push_str(&format!(
                "    if (strcmp(entry, \"{e}\") == 0) return emu::launch({e}, s, args, sizes, nargs, err, errlen);\n"
            ));
        }
        s.push_str(
            "    snprintf(err, errlen, \"no entry point %s in this module\", entry);\n    return 2;\n}\n",
        );
        Ok(s)
    }

    fn module(&self, cfg: &KernelConfig) -> Result<Arc<Module>> {
        let mut cache = self.modules.lock().map_err(|_| emu_err("module cache poisoned"))?;
        if let Some(m) = cache.get(cfg) {
            return Ok(m.clone());
        }
        let text = self.module_source(cfg)?;
        let flags = CXX_FLAGS.join(" ");
        let hash = fnv1a(&[text.as_bytes(), self.compiler_id.as_bytes(), flags.as_bytes()]);
        let stem = format!("{}-{hash:016x}", cfg.stem());
        let lib_path = self.cache_dir.join(format!("{stem}.so"));
        if !lib_path.is_file() {
            std::fs::create_dir_all(&self.cache_dir)
                .map_err(|e| emu_err(format!("creating {}: {e}", self.cache_dir.display())))?;
            let src_path = self.cache_dir.join(format!("{stem}.cpp"));
            let tmp = |ext: &str| self.cache_dir.join(format!("{stem}.{}.tmp{ext}", std::process::id()));
            std::fs::write(tmp(".cpp"), &text)
                .map_err(|e| emu_err(format!("writing {}: {e}", src_path.display())))?;
            std::fs::rename(tmp(".cpp"), &src_path)
                .map_err(|e| emu_err(format!("writing {}: {e}", src_path.display())))?;
            let out = std::process::Command::new(&self.compiler)
                .args(CXX_FLAGS)
                .arg("-o")
                .arg(tmp(".so"))
                .arg(&src_path)
                .output()
                .map_err(|e| emu_err(format!("running {}: {e}", self.compiler)))?;
            if !out.status.success() {
                let _ = std::fs::remove_file(tmp(".so"));
                return Err(KernelError::EmulatorCompile {
                    config: cfg.label(),
                    source_path: src_path.display().to_string(),
                    log: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            std::fs::rename(tmp(".so"), &lib_path)
                .map_err(|e| emu_err(format!("writing {}: {e}", lib_path.display())))?;
        }
        // SAFETY: the library was built from our own generated source; loading it runs only the
        // C++ static initialisers of that source (none with side effects).
        let lib = unsafe { libloading::Library::new(&lib_path) }
            .map_err(|e| emu_err(format!("loading {}: {e}", lib_path.display())))?;
        // SAFETY: the generated epilogue defines medsa_emu_launch with exactly this signature.
        let launch: LaunchFn = unsafe {
            *lib.get::<LaunchFn>(b"medsa_emu_launch\0")
                .map_err(|e| emu_err(format!("{}: {e}", lib_path.display())))?
        };
        let m = Arc::new(Module { _lib: lib, launch });
        cache.insert(cfg.clone(), m.clone());
        Ok(m)
    }

    fn registry(&self) -> Result<std::sync::MutexGuard<'_, Registry>> {
        self.registry.lock().map_err(|_| emu_err("allocation registry poisoned"))
    }

    fn check_guards(&self, after: &str) -> Result<()> {
        match self.registry()?.corrupted_guard() {
            None => Ok(()),
            Some((addr, off)) => Err(emu_err(format!(
                "{after} wrote outside an allocation: byte {off} of the buffer at {addr:#x}"
            ))),
        }
    }
}

fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

impl Device for Emulator {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Emulated
    }

    fn name(&self) -> String {
        format!("CPU emulator ({:?} thread order, {})", self.opts.order, self.compiler_id)
    }

    fn max_shared_memory(&self) -> usize {
        227 * 1024
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let total = GUARD + bytes + GUARD;
        let mut mem = vec![0u128; total.div_ceil(16)];
        let base = mem.as_mut_ptr().cast::<u8>();
        // SAFETY: `mem` holds at least `total` bytes.
        unsafe {
            std::ptr::write_bytes(base, 0xff, GUARD);
            std::ptr::write_bytes(base.add(GUARD + bytes), 0xff, GUARD);
        }
        let addr = base as u64 + GUARD as u64;
        self.registry()?.live.insert(addr, bytes);
        let keep = Allocation { _mem: mem, addr, registry: self.registry.clone() };
        Ok(Buffer::new(addr, bytes, Box::new(keep)))
    }

    fn copy_in(&self, dst: &Buffer, src: &[u8]) -> Result<()> {
        if src.len() > dst.bytes() {
            return Err(KernelError::unsupported("copy_in", format!("{} B into {dst:?}", src.len())));
        }
        // SAFETY: dst is live (borrowed) and holds at least src.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.addr() as *mut u8, src.len()) };
        Ok(())
    }

    fn copy_out(&self, src: &Buffer, dst: &mut [u8]) -> Result<()> {
        if dst.len() > src.bytes() {
            return Err(KernelError::unsupported("copy_out", format!("{} B from {src:?}", dst.len())));
        }
        // SAFETY: src is live (borrowed) and holds at least dst.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.addr() as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn launch(&self, cfg: &KernelConfig, entry: &str, l: &Launch, args: &KernelArgs) -> Result<()> {
        let m = self.module(cfg)?;
        let (order, seed) = match self.opts.order {
            ThreadOrder::Forward => (0, 0),
            ThreadOrder::Reverse => (1, 0),
            ThreadOrder::Shuffled(s) => (2, s),
            ThreadOrder::Concurrent => (3, 0),
        };
        let workers = match self.opts.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let spec = LaunchSpec {
            grid: [l.grid.0, l.grid.1, l.grid.2],
            block: [l.block.0, l.block.1, l.block.2],
            smem: l.smem,
            order,
            seed,
            workers: workers as u32,
            _pad: 0,
        };
        // Each argument in its own 16-byte-aligned copy (the kernels read them as typed values).
        let mut copies: Vec<Vec<u128>> =
            args.iter().map(|a| vec![0u128; a.len().div_ceil(16).max(1)]).collect();
        for (c, a) in copies.iter_mut().zip(args.iter()) {
            bytemuck::cast_slice_mut::<u128, u8>(c)[..a.len()].copy_from_slice(a);
        }
        let mut ptrs: Vec<*mut c_void> = copies.iter_mut().map(|c| c.as_mut_ptr().cast::<c_void>()).collect();
        let sizes: Vec<u32> = args.iter().map(|a| a.len() as u32).collect();
        let name = CString::new(entry).map_err(|_| emu_err(format!("entry name {entry:?}")))?;
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: the launch function checks the argument count and sizes against the kernel's
        // parameter types before running it; the pointers inside the arguments name live buffers
        // (or the kernel faults exactly as it would on a GPU).
        let rc = unsafe {
            (m.launch)(
                name.as_ptr(),
                &spec,
                ptrs.as_mut_ptr(),
                sizes.as_ptr(),
                sizes.len() as i32,
                err.as_mut_ptr(),
                err.len() as i32,
            )
        };
        if rc != 0 {
            // SAFETY: the launch function writes a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(KernelError::Launch { entry: entry.to_string(), config: cfg.label(), msg });
        }
        self.check_guards(entry)?;
        if let Ok(mut l) = self.launched.lock() {
            l.insert((cfg.source.file_name(), entry.to_string()));
        }
        Ok(())
    }

    fn gemm(&self, g: &GemmCall) -> Result<()> {
        let reg = self.registry()?;
        let bad = |msg: String| Err(emu_err(format!("gemm: {msg} (cuBLAS: CUBLAS_STATUS_INVALID_VALUE)")));
        if g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0 {
            return bad(format!("negative extent m {} n {} k {} batch {}", g.m, g.n, g.k, g.batch));
        }
        let (m, n, k, batch) = (g.m as usize, g.n as usize, g.k as usize, g.batch as usize);
        let (a_rows, a_cols) = if g.trans_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if g.trans_b { (n, k) } else { (k, n) };
        for (name, ld, rows) in [("lda", g.lda, a_rows), ("ldb", g.ldb, b_rows), ("ldc", g.ldc, m)] {
            if (ld as i64) < rows.max(1) as i64 {
                return bad(format!("{name} = {ld} < max(1, {rows})"));
            }
        }
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let es = g.dtype.size();
        // Extent of one operand over all batches, in elements.
        let extent = |ld: i32, rows: usize, cols: usize, stride: i64| -> Option<usize> {
            if cols == 0 || rows == 0 {
                return Some(0);
            }
            let one = (cols - 1) * ld as usize + rows;
            let s = usize::try_from(stride).ok()?;
            Some((batch - 1) * s + one)
        };
        let ops = [
            ("A", g.a, extent(g.lda, a_rows, a_cols, g.stride_a)),
            ("B", g.b, extent(g.ldb, b_rows, b_cols, g.stride_b)),
            ("C", g.c, extent(g.ldc, m, n, g.stride_c)),
        ];
        for (name, addr, ext) in ops {
            match ext {
                Some(e) if e == 0 || reg.contains(addr, e * es) => {}
                Some(e) => {
                    return Err(emu_err(format!(
                        "gemm: {name} reads {e} elements at {addr:#x}, outside every allocation"
                    )))
                }
                None => return bad(format!("negative stride of {name}")),
            }
        }
        let read = |addr: u64, idx: usize| -> f32 {
            // SAFETY: every index below is inside the extents checked above.
            unsafe {
                match g.dtype {
                    GemmType::F32 => *(addr as *const f32).add(idx),
                    GemmType::Bf16 => bf16_bits_to_f32(*(addr as *const u16).add(idx)),
                }
            }
        };
        // op(A) [m, k] and op(B) [k, n] gathered row-major in f32 (the storage values exactly),
        // their product by the reference's matmul (f32 accumulation), C written per element.
        let mut a_rm = vec![0f32; m * k];
        let mut b_rm = vec![0f32; k * n];
        for bi in 0..batch {
            let (a0, b0, c0) = (bi * g.stride_a as usize, bi * g.stride_b as usize, bi * g.stride_c as usize);
            let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
            for i in 0..m {
                for l in 0..k {
                    a_rm[i * k + l] = read(g.a, a0 + if g.trans_a { l + i * lda } else { i + l * lda });
                }
            }
            for l in 0..k {
                for j in 0..n {
                    b_rm[l * n + j] = read(g.b, b0 + if g.trans_b { j + l * ldb } else { l + j * ldb });
                }
            }
            let prod = if k == 0 {
                Tensor::zeros(vec![m, n])
            } else {
                let at = Tensor::new(vec![m, k], std::mem::take(&mut a_rm))?;
                let bt = Tensor::new(vec![k, n], std::mem::take(&mut b_rm))?;
                let p = medsa_ref::Cpu.matmul(&at, &bt);
                a_rm = at.into_data();
                b_rm = bt.into_data();
                p
            }?;
            for j in 0..n {
                for i in 0..m {
                    let ci = c0 + i + j * ldc;
                    let old = if g.beta == 0.0 { 0.0 } else { read(g.c, ci) };
                    let v = g.alpha * prod.data()[i * n + j] + g.beta * old;
                    // SAFETY: ci is inside C's checked extent.
                    unsafe {
                        match g.dtype {
                            GemmType::F32 => *(g.c as *mut f32).add(ci) = v,
                            GemmType::Bf16 => *(g.c as *mut u16).add(ci) = half::bf16::from_f32(v).to_bits(),
                        }
                    }
                }
            }
        }
        drop(reg);
        self.check_guards("gemm")
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_arrays_are_found_with_their_types() {
        let src = "extern __shared__ __align__(16) unsigned char smem[];\n x; extern __shared__ float sm[]; \
                   extern __shared__ __align__(16) float sm[];";
        assert_eq!(
            shared_arrays(src),
            vec![("unsigned char".to_string(), "smem".to_string()), ("float".to_string(), "sm".to_string())]
        );
    }

    #[test]
    fn gemm_follows_cublas_column_major_semantics() {
        let emu = Emulator::new(EmuOptions::default()).unwrap();
        // Column-major A (2 x 3, lda 3: one padding row), B (3 x 2), C = A B.
        let a: [f32; 9] = [1.0, 4.0, -9.0, 2.0, 5.0, -9.0, 3.0, 6.0, -9.0];
        let b: [f32; 6] = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let (ad, bd, cd) = (emu.alloc(36).unwrap(), emu.alloc(24).unwrap(), emu.alloc(16).unwrap());
        emu.copy_in(&ad, bytemuck::cast_slice(&a)).unwrap();
        emu.copy_in(&bd, bytemuck::cast_slice(&b)).unwrap();
        let call = GemmCall {
            dtype: GemmType::F32,
            trans_a: false,
            trans_b: false,
            m: 2,
            n: 2,
            k: 3,
            alpha: 1.0,
            a: ad.addr(),
            lda: 3,
            stride_a: 0,
            b: bd.addr(),
            ldb: 3,
            stride_b: 0,
            beta: 0.0,
            c: cd.addr(),
            ldc: 2,
            stride_c: 0,
            batch: 1,
        };
        emu.gemm(&call).unwrap();
        let mut c = [0f32; 4];
        emu.copy_out(&cd, bytemuck::cast_slice_mut(&mut c)).unwrap();
        // C[:, 0] = A (1, 0, 1) = (4, 10); C[:, 1] = A (0, 1, 1) = (5, 11).
        assert_eq!(c, [4.0, 10.0, 5.0, 11.0]);
        // An lda below the stored rows, and an operand past its allocation, are refused.
        assert!(emu.gemm(&GemmCall { lda: 1, ..call }).is_err());
        assert!(emu.gemm(&GemmCall { k: 4, lda: 3, ldb: 4, ..call }).is_err());
    }

    #[test]
    fn guards_catch_a_write_past_the_end() {
        let emu = Emulator::new(EmuOptions::default()).unwrap();
        let b = emu.alloc(8).unwrap();
        emu.check_guards("nothing").unwrap();
        // SAFETY: byte 8 is inside the trailing guard of the allocation.
        unsafe { *((b.addr() + 8) as *mut u8) = 0 };
        let e = emu.check_guards("test").unwrap_err().to_string();
        assert!(e.contains("byte 8"), "{e}");
    }
}

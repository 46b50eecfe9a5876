//! A restricted, non-executing unpickler for the pickles `torch.save` writes.
//!
//! The virtual machine builds plain data (numbers, strings, tuples, lists, dicts) in an arena and
//! understands exactly the callables torch state dicts need, each implemented here in Rust:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor{,_v2}`,
//! `torch._utils._rebuild_parameter{,_with_state}`, and the `torch.*Storage` classes as storage
//! type tags of persistent ids. A `GLOBAL` / `STACK_GLOBAL` naming anything else fails at once
//! with [`Error::UnsafeGlobal`]; nothing is ever imported, looked up or called.
//!
//! Objects live in an arena addressed by [`Id`]; the memo and the stack hold ids, so a memoised
//! dict that is filled later (`EMPTY_DICT BINPUT ... SETITEMS`) is shared as Python shares it.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Index of an object in the arena.
pub(crate) type Id = usize;

/// Element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageDType {
    /// `torch.float64` (`DoubleStorage`).
    F64,
    /// `torch.float32` (`FloatStorage`).
    F32,
    /// `torch.float16` (`HalfStorage`).
    F16,
    /// `torch.bfloat16` (`BFloat16Storage`).
    BF16,
    /// `torch.int64` (`LongStorage`).
    I64,
    /// `torch.int32` (`IntStorage`).
    I32,
    /// `torch.int16` (`ShortStorage`).
    I16,
    /// `torch.int8` (`CharStorage`).
    I8,
    /// `torch.uint8` (`ByteStorage`).
    U8,
    /// `torch.bool` (`BoolStorage`).
    Bool,
}

impl StorageDType {
    fn from_storage_class(name: &str) -> Option<StorageDType> {
        Some(match name {
            "DoubleStorage" => StorageDType::F64,
            "FloatStorage" => StorageDType::F32,
            "HalfStorage" => StorageDType::F16,
            "BFloat16Storage" => StorageDType::BF16,
            "LongStorage" => StorageDType::I64,
            "IntStorage" => StorageDType::I32,
            "ShortStorage" => StorageDType::I16,
            "CharStorage" => StorageDType::I8,
            "ByteStorage" => StorageDType::U8,
            "BoolStorage" => StorageDType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDType::F64 | StorageDType::I64 => 8,
            StorageDType::F32 | StorageDType::I32 => 4,
            StorageDType::F16 | StorageDType::BF16 | StorageDType::I16 => 2,
            StorageDType::I8 | StorageDType::U8 | StorageDType::Bool => 1,
        }
    }

    /// True for the floating-point dtypes (their values are read as f32).
    pub fn is_float(self) -> bool {
        matches!(self, StorageDType::F64 | StorageDType::F32 | StorageDType::F16 | StorageDType::BF16)
    }

    /// PyTorch's name (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StorageDType::F64 => "float64",
            StorageDType::F32 => "float32",
            StorageDType::F16 => "float16",
            StorageDType::BF16 => "bfloat16",
            StorageDType::I64 => "int64",
            StorageDType::I32 => "int32",
            StorageDType::I16 => "int16",
            StorageDType::I8 => "int8",
            StorageDType::U8 => "uint8",
            StorageDType::Bool => "bool",
        }
    }
}

impl std::fmt::Display for StorageDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The callables and classes the unpickler knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageDType),
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", s) => Global::Storage(StorageDType::from_storage_class(s)?),
            _ => return None,
        })
    }
}

/// A view of a storage, as `_rebuild_tensor_v2` describes it (not yet read).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: String,
    pub dtype: StorageDType,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// An unpickled object.
#[derive(Clone, Debug)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(usize),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage { key: String, dtype: StorageDType },
    Tensor(TensorRef),
}

impl Obj {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "class or function",
            Obj::Storage { .. } => "storage",
            Obj::Tensor(_) => "tensor",
        }
    }
}

/// The result of unpickling: the arena and the id of the top-level object.
pub(crate) struct Pickled {
    pub arena: Vec<Obj>,
    pub root: Id,
}

/// Longest `GLOBAL` line accepted.
const MAX_LINE: usize = 1024;

struct Vm<'a> {
    b: &'a [u8],
    pos: usize,
    op_pos: usize,
    file: &'a str,
    arena: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

/// Runs the restricted unpickler over `bytes` (the contents of `data.pkl`).
pub(crate) fn unpickle(bytes: &[u8], file: &str) -> Result<Pickled> {
    let mut vm = Vm {
        b: bytes,
        pos: 0,
        op_pos: 0,
        file,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = vm.run()?;
    Ok(Pickled { arena: vm.arena, root })
}

impl<'a> Vm<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Pickle { file: self.file.into(), offset: self.op_pos, msg: msg.into() }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = (self.b.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!("needs {n} more bytes, {left} left (truncated pickle)")));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.le()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.le()?))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.b[self.pos..];
        let end = rest
            .iter()
            .take(MAX_LINE)
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("unterminated GLOBAL line"))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.err("GLOBAL line is not UTF-8"))
    }

    fn push(&mut self, o: Obj) {
        self.arena.push(o);
        self.stack.push(self.arena.len() - 1);
    }
    fn pop(&mut self) -> Result<Id> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("pop reaches below the current MARK"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&self) -> Result<Id> {
        self.stack.last().copied().ok_or_else(|| self.err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(self.stack.split_off(m))
    }
    fn string(&mut self, n: u64) -> Result<()> {
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| self.err("string is not UTF-8"))?;
        self.push(Obj::Str(s.to_owned()));
        Ok(())
    }
    fn long(&mut self, n: u64) -> Result<()> {
        if n > 8 {
            return Err(self.err(format!("integer of {n} bytes does not fit in 64 bits")));
        }
        let raw = self.take(n)?;
        let mut a = [0u8; 8];
        a[..raw.len()].copy_from_slice(raw);
        if raw.last().is_some_and(|&b| b & 0x80 != 0) {
            a[raw.len()..].fill(0xff);
        }
        self.push(Obj::Int(i64::from_le_bytes(a)));
        Ok(())
    }
    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::lookup(module, name) {
            Some(g) => {
                self.push(Obj::Global(g));
                Ok(())
            }
            None => {
                Err(Error::UnsafeGlobal { file: self.file.into(), module: module.into(), name: name.into() })
            }
        }
    }
    fn memo_put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }
    fn memo_get(&mut self, key: u64) -> Result<()> {
        let id = *self.memo.get(&key).ok_or_else(|| self.err(format!("memo key {key} unset")))?;
        self.stack.push(id);
        Ok(())
    }
    fn str_of(&self, id: Id) -> Option<&str> {
        match &self.arena[id] {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }
    fn uint_of(&self, id: Id, what: &str) -> Result<u64> {
        match self.arena[id] {
            Obj::Int(v) if v >= 0 => Ok(v as u64),
            ref o => Err(self.err(format!("{what} must be a non-negative int, got {}", o.kind()))),
        }
    }
    fn uint_tuple(&self, id: Id, what: &str) -> Result<Vec<u64>> {
        match &self.arena[id] {
            Obj::Tuple(v) | Obj::List(v) => v.iter().map(|&i| self.uint_of(i, what)).collect(),
            o => Err(self.err(format!("{what} must be a tuple, got {}", o.kind()))),
        }
    }

    fn setitems(&mut self, target: Id, items: Vec<Id>) -> Result<()> {
        if !items.chunks_exact(2).remainder().is_empty() {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        match &mut self.arena[target] {
            Obj::Dict(d) => {
                d.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            o => {
                let k = o.kind();
                Err(self.err(format!("SETITEM(S) on a {k}")))
            }
        }
    }
    fn appends(&mut self, target: Id, items: Vec<Id>) -> Result<()> {
        match &mut self.arena[target] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            o => {
                let k = o.kind();
                Err(self.err(format!("APPEND(S)/ADDITEMS on a {k}")))
            }
        }
    }

    /// Applies an allowed callable to its argument tuple.
    fn call(&mut self, func: Id, args: Id) -> Result<()> {
        let g = match self.arena[func] {
            Obj::Global(g) => g,
            ref o => return Err(self.err(format!("REDUCE on a {}, not a callable", o.kind()))),
        };
        let args = match &self.arena[args] {
            Obj::Tuple(a) => a.clone(),
            o => return Err(self.err(format!("REDUCE arguments are a {}, not a tuple", o.kind()))),
        };
        match g {
            Global::OrderedDict => {
                let mut items = Vec::new();
                if let Some(&pairs) = args.first() {
                    let list = match &self.arena[pairs] {
                        Obj::List(l) | Obj::Tuple(l) => l.clone(),
                        o => return Err(self.err(format!("OrderedDict({})", o.kind()))),
                    };
                    for p in list {
                        match &self.arena[p] {
                            Obj::Tuple(kv) | Obj::List(kv) if kv.len() == 2 => items.push((kv[0], kv[1])),
                            _ => return Err(self.err("OrderedDict item is not a pair")),
                        }
                    }
                }
                self.push(Obj::Dict(items));
            }
            Global::RebuildTensor | Global::RebuildTensorV2 => {
                if args.len() < 4 {
                    return Err(self.err(format!("_rebuild_tensor with {} arguments", args.len())));
                }
                let (key, dtype) = match &self.arena[args[0]] {
                    Obj::Storage { key, dtype } => (key.clone(), *dtype),
                    o => return Err(self.err(format!("_rebuild_tensor on a {}, not a storage", o.kind()))),
                };
                let offset = self.uint_of(args[1], "storage offset")?;
                let shape = self.uint_tuple(args[2], "size")?;
                let stride = self.uint_tuple(args[3], "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err(format!("size {shape:?} and stride {stride:?} differ in rank")));
                }
                self.push(Obj::Tensor(TensorRef { storage: key, dtype, offset, shape, stride }));
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(&t) if matches!(self.arena[t], Obj::Tensor(_)) => self.stack.push(t),
                _ => return Err(self.err("_rebuild_parameter without a tensor")),
            },
            Global::Storage(_) => return Err(self.err("a storage class cannot be called")),
        }
        Ok(())
    }

    /// `BINPERSID`: `('storage', storage_type, key, location, numel)`.
    fn persistent(&mut self, pid: Id) -> Result<()> {
        let t = match &self.arena[pid] {
            Obj::Tuple(t) if t.len() >= 3 => t.clone(),
            o => return Err(self.err(format!("persistent id is a {}", o.kind()))),
        };
        if self.str_of(t[0]) != Some("storage") {
            return Err(self.err("persistent id is not a ('storage', ...) tuple"));
        }
        let dtype = match self.arena[t[1]] {
            Obj::Global(Global::Storage(d)) => d,
            ref o => return Err(self.err(format!("storage type is a {}", o.kind()))),
        };
        let key = self.str_of(t[2]).ok_or_else(|| self.err("storage key is not a str"))?;
        if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
            return Err(self.err(format!("storage key {key:?} is not a plain name")));
        }
        let key = key.to_owned();
        self.push(Obj::Storage { key, dtype });
        Ok(())
    }

    fn run(&mut self) -> Result<Id> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("pickle protocol {v} is newer than 5")));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => {
                    let id = self.pop()?;
                    return Ok(id);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Obj::Dict(Vec::new())),
                b']' | 0x8f => self.push(Obj::List(Vec::new())),
                b')' => self.push(Obj::Tuple(Vec::new())),
                b'N' => self.push(Obj::None),
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Obj::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Obj::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as u64;
                    self.long(n)?;
                }
                0x8b => {
                    let n = self.u32()? as u64;
                    self.long(n)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Obj::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    self.string(n)?;
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    self.string(n)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    self.string(n)?;
                }
                b'T' | b'U' => {
                    // Python 2 byte strings (BINSTRING / SHORT_BINSTRING), read as Latin-1.
                    let n = if op == b'T' { self.u32()? as u64 } else { self.u8()? as u64 };
                    let raw = self.take(n)?;
                    self.push(Obj::Str(raw.iter().map(|&c| c as char).collect()));
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    self.take(n)?;
                    self.push(Obj::Bytes(n as usize));
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(Obj::Tuple(vec![a]));
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Obj::Tuple(vec![a, b]));
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(Obj::Tuple(vec![a, b, c]));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Dict(Vec::new()));
                    let id = self.top()?;
                    self.setitems(id, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.setitems(d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.setitems(d, items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.appends(l, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.appends(l, items)?;
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (self.str_of(module), self.str_of(name)) else {
                        return Err(self.err("STACK_GLOBAL operands are not strings"));
                    };
                    let (m, n) = (m.to_owned(), n.to_owned());
                    self.global(&m, &n)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args)?;
                }
                b'b' => {
                    let _state = self.pop()?;
                    let target = self.top()?;
                    // OrderedDict's __dict__ (torch's `_metadata`) and tensor state carry no
                    // weights; anything else has no business being built here.
                    match self.arena[target] {
                        Obj::Dict(_) | Obj::Tensor(_) => {}
                        ref o => return Err(self.err(format!("BUILD on a {}", o.kind()))),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent(pid)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.stack.push(id);
                }
                _ => {
                    return Err(Error::UnknownOpcode {
                        file: self.file.into(),
                        opcode: op,
                        offset: self.op_pos,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_and_memo() {
        // pickle.dumps({'a': [1, -2, 3.5, 'x', None, True]}, protocol=2) by hand:
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'X', 1, 0, 0, 0, b'a', b']', b'q', 1, b'('];
        p.extend([b'K', 1, b'J']);
        p.extend((-2i32).to_le_bytes());
        p.push(b'G');
        p.extend(3.5f64.to_be_bytes());
        p.extend([0x8c, 1, b'x', b'N', 0x88, b'e', b's', b'h', 1, b'0', b'.']);
        let out = unpickle(&p, "t").unwrap();
        let Obj::Dict(d) = &out.arena[out.root] else { panic!() };
        let Obj::List(l) = &out.arena[d[0].1] else { panic!() };
        assert_eq!(l.len(), 6);
        assert!(matches!(out.arena[l[1]], Obj::Int(-2)));
        assert!(matches!(out.arena[l[2]], Obj::Float(v) if v == 3.5));
    }

    #[test]
    fn long1_sign_extends() {
        let out = unpickle(&[0x8a, 2, 0x00, 0x80, b'.'], "t").unwrap();
        assert!(matches!(out.arena[out.root], Obj::Int(-32768)));
        assert!(matches!(
            unpickle(&[0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'.'], "t"),
            Err(Error::Pickle { .. })
        ));
    }

    #[test]
    fn malformed_streams_are_errors() {
        for bad in [&b""[..], b"X\xff\xff\xff\x7f", b"0", b"t", b"}K\x01s.", b"h\x05.", b"\x80\x09."] {
            assert!(matches!(unpickle(bad, "t"), Err(Error::Pickle { .. })), "{bad:?}");
        }
        assert!(matches!(unpickle(b"I12\n.", "t"), Err(Error::UnknownOpcode { opcode: b'I', .. })));
        assert!(matches!(
            unpickle(b"cposix\nsystem\n.", "t"),
            Err(Error::UnsafeGlobal { module, name, .. }) if module == "posix" && name == "system"
        ));
        assert!(matches!(
            unpickle(b"\x8c\x08builtins\x8c\x04eval\x93.", "t"),
            Err(Error::UnsafeGlobal { .. })
        ));
        // MARK isolation: TUPLE2 may not consume items below a MARK.
        assert!(matches!(unpickle(b"K\x01(K\x02\x86.", "t"), Err(Error::Pickle { .. })));
    }
}

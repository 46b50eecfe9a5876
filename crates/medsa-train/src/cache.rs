//! Image embeddings computed once per (image, symmetry) while the encoder is frozen, so that
//! many prompts and epochs reuse them.
//!
//! The cache holds at most `limit_bytes` of embeddings in memory (the oldest entry is dropped
//! first). With a folder it also keeps every embedding on disk as
//! `<fingerprint>-<source>-<slice>-<symmetry>.safetensors` (written atomically), so a later run
//! with the same base model, data and preprocessing starts without running the encoder; the
//! fingerprint is given by the caller and must change with anything that changes an embedding.

use crate::augment::Dihedral;
use crate::{Error, Result};
use medsa_core::Tensor;
use medsa_model::weights::{read_safetensors, write_safetensors};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

/// What an embedding is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Source index.
    pub source: usize,
    /// Slice index.
    pub slice: usize,
    /// Symmetry applied before the encoder.
    pub symmetry: Dihedral,
}

/// Bounded embedding cache (module docs).
#[derive(Debug)]
pub struct EmbeddingCache {
    map: HashMap<Key, Tensor>,
    order: VecDeque<Key>,
    bytes: usize,
    limit_bytes: usize,
    dir: Option<(PathBuf, String)>,
    /// Embeddings computed by the encoder.
    pub computed: usize,
    /// Embeddings read from the disk folder.
    pub loaded: usize,
}

impl EmbeddingCache {
    /// A cache of at most `limit_bytes` in memory, with an optional disk `(folder, fingerprint)`.
    pub fn new(limit_bytes: usize, dir: Option<(PathBuf, String)>) -> Result<Self> {
        if let Some((d, _)) = &dir {
            std::fs::create_dir_all(d).map_err(|source| Error::File { path: d.clone(), source })?;
        }
        Ok(EmbeddingCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limit_bytes,
            dir,
            computed: 0,
            loaded: 0,
        })
    }

    fn file(&self, k: Key) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|(d, fp)| d.join(format!("{fp}-{}-{}-{}.safetensors", k.source, k.slice, k.symmetry.0)))
    }

    /// The embedding of `k`, from memory, disk or `compute`.
    pub fn get_or_compute(&mut self, k: Key, compute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if let Some(t) = self.map.get(&k) {
            return Ok(t.clone());
        }
        let file = self.file(k);
        let from_disk =
            file.as_ref().filter(|f| f.is_file()).and_then(|f| read_safetensors(f).ok()?.remove("embedding"));
        let t = match from_disk {
            Some(t) => {
                self.loaded += 1;
                t
            }
            None => {
                let t = compute()?;
                self.computed += 1;
                if let Some(f) = &file {
                    write_safetensors(f, &[("embedding".into(), t.clone())], None)?;
                }
                t
            }
        };
        self.insert(k, t.clone());
        Ok(t)
    }

    fn insert(&mut self, k: Key, t: Tensor) {
        let n = t.numel() * 4;
        if n > self.limit_bytes {
            return;
        }
        while self.bytes + n > self.limit_bytes {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(o) = self.map.remove(&old) {
                self.bytes -= o.numel() * 4;
            }
        }
        self.bytes += n;
        self.order.push_back(k);
        self.map.insert(k, t);
    }

    /// Drops every embedding held in memory (after the encoder changed); the disk folder is
    /// only used with a frozen encoder, so it is left alone.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(slice: usize) -> Key {
        Key { source: 0, slice, symmetry: Dihedral(0) }
    }

    #[test]
    fn bounded_in_memory_and_reused_from_disk() {
        let t = |v: f32| Tensor::new(vec![4], vec![v; 4]).unwrap();
        let mut c = EmbeddingCache::new(32, None).unwrap();
        for s in 0..3 {
            c.get_or_compute(key(s), || Ok(t(s as f32))).unwrap();
        }
        assert_eq!((c.computed, c.bytes()), (3, 32), "two 16-byte entries fit");
        // Slice 0 was dropped, 2 is held.
        c.get_or_compute(key(2), || panic!("held")).unwrap();
        assert_eq!(c.get_or_compute(key(0), || Ok(t(9.0))).unwrap().data()[0], 9.0);

        let dir = std::env::temp_dir().join(format!("medsa-cache-test-{}", std::process::id()));
        let mut a = EmbeddingCache::new(1 << 20, Some((dir.clone(), "fp".into()))).unwrap();
        a.get_or_compute(key(5), || Ok(t(5.0))).unwrap();
        let mut b = EmbeddingCache::new(1 << 20, Some((dir.clone(), "fp".into()))).unwrap();
        assert_eq!(b.get_or_compute(key(5), || panic!("on disk")).unwrap().data(), &[5.0; 4]);
        assert_eq!((b.loaded, b.computed), (1, 0));
        let mut other = EmbeddingCache::new(1 << 20, Some((dir.clone(), "other".into()))).unwrap();
        other.get_or_compute(key(5), || Ok(t(1.0))).unwrap();
        assert_eq!(other.computed, 1, "another fingerprint does not reuse it");
        let _ = std::fs::remove_dir_all(dir);
    }
}

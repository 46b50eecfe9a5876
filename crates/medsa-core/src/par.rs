//! When to run an op's pieces on the rayon pool. Called from a thread outside the pool, a
//! parallel iterator hands its work to a worker and puts the caller to sleep until it is done,
//! even for a single piece: a wake-up and a wait per op. For small tensors (the decoder's handful
//! of prompt tokens, a training step's per-token ops) that costs more than the work, so below
//! [`SERIAL_BELOW`] elements the pieces run on the calling thread, in the same order and with
//! the same arithmetic as on the pool. A loop of many ops (a training run) goes further with
//! [`on_pool`]: from a worker thread, every parallel call (the ops' own, and those inside each
//! GEMM) is taken by the pool without putting the caller to sleep.

use rayon::prelude::*;

/// Slices shorter than this (in elements) are processed on the calling thread.
pub const SERIAL_BELOW: usize = 1 << 15;

/// Runs `f` on a worker of the rayon pool while the calling thread waits, so that the parallel
/// ops `f` calls start without a hand-over each.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// `f` on every `chunk`-element piece of `out` (the last may be shorter).
pub fn for_chunks(out: &mut [f32], chunk: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    let chunk = chunk.max(1);
    if out.len() < SERIAL_BELOW {
        out.chunks_mut(chunk).for_each(f);
    } else {
        out.par_chunks_mut(chunk).for_each(f);
    }
}

/// `f` on every `chunk`-element piece of `out` with the same piece of `inp`.
pub fn for_chunks_zip(
    out: &mut [f32],
    inp: &[f32],
    chunk: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    let chunk = chunk.max(1);
    if out.len() < SERIAL_BELOW {
        out.chunks_mut(chunk).zip(inp.chunks(chunk)).for_each(|(o, i)| f(o, i));
    } else {
        out.par_chunks_mut(chunk).zip(inp.par_chunks(chunk)).for_each(|(o, i)| f(o, i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_visit_every_piece_once() {
        for n in [0, 5, SERIAL_BELOW - 1, SERIAL_BELOW, 3 * SERIAL_BELOW + 7] {
            let mut out = vec![0f32; n];
            let inp: Vec<f32> = (0..n).map(|i| i as f32).collect();
            for_chunks_zip(&mut out, &inp, 1000, |o, i| {
                o.iter_mut().zip(i).for_each(|(a, &b)| *a += b + 1.0)
            });
            for_chunks(&mut out, 333, |o| o.iter_mut().for_each(|a| *a *= 2.0));
            assert!(out.iter().enumerate().all(|(i, &v)| v == 2.0 * (i as f32 + 1.0)), "n = {n}");
        }
    }
}

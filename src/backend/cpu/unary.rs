//! Elementwise maps. The parallel path splits the output into fixed chunks and runs a
//! plain slice loop in each, so `f` inlines into a loop LLVM can vectorize (rayon's
//! `map().collect()` pulls one element at a time through its iterator adapters).

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortize scheduling, small enough to
/// balance a few threads on the tensors of a small model.
const CHUNK: usize = 1 << 14;

pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let run = |o: &mut [f32], a: &[f32]| o.iter_mut().zip(a).for_each(|(o, &a)| *o = f(a));
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, a)| run(o, a));
    } else {
        run(&mut out, x);
    }
    out
}

pub fn map2(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    debug_assert_eq!(x.len(), y.len());
    let mut out = vec![0f32; x.len()];
    let run =
        |o: &mut [f32], a: &[f32], b: &[f32]| o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b));
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| run(o, a, b));
    } else {
        run(&mut out, x, y);
    }
    out
}

pub fn map3(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    debug_assert!(x.len() == y.len() && y.len() == z.len());
    let mut out = vec![0f32; x.len()];
    let run = |o: &mut [f32], a: &[f32], b: &[f32], c: &[f32]| {
        o.iter_mut().zip(a.iter().zip(b).zip(c)).for_each(|(o, ((&a, &b), &c))| *o = f(a, b, c))
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)).zip(z.par_chunks(CHUNK)))
            .for_each(|(o, ((a, b), c))| run(o, a, b, c));
    } else {
        run(&mut out, x, y, z);
    }
    out
}

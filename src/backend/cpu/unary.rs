//! Elementwise maps.

use super::PAR_THRESHOLD;
use rayon::prelude::*;

pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) -> Vec<f32> {
    if x.len() >= PAR_THRESHOLD {
        x.par_iter().map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

pub fn map2(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    debug_assert_eq!(x.len(), y.len());
    if x.len() >= PAR_THRESHOLD {
        x.par_iter().zip(y.par_iter()).map(|(&a, &b)| f(a, b)).collect()
    } else {
        x.iter().zip(y).map(|(&a, &b)| f(a, b)).collect()
    }
}

pub fn map3(x: &[f32], y: &[f32], z: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    debug_assert!(x.len() == y.len() && y.len() == z.len());
    if x.len() >= PAR_THRESHOLD {
        (x, y, z).into_par_iter().map(|(&a, &b, &c)| f(a, b, c)).collect()
    } else {
        x.iter().zip(y).zip(z).map(|((&a, &b), &c)| f(a, b, c)).collect()
    }
}

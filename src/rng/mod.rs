//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, as in Random123).
//!
//! Every number is a pure function of `(seed, offset, i)`, so a GPU thread can compute
//! element `i` of a fill on its own; `kernels/include/philox.cuh` implements the same
//! mapping and `tools/philox_header_check.cpp` checks it against the golden values in
//! this module's tests.
//!
//! Invariants (shared with `philox.cuh`; changing any of them changes every stream):
//! - Counter mapping: element `i` (0-based) of a fill uses the 64-bit counter
//!   `c = offset + i / 4` (wrapping), Philox counter `[lo32(c), hi32(c), 0, 0]`,
//!   key `[lo32(seed), hi32(seed)]`, and takes lane `i % 4` of the output block.
//! - Offset advance: a fill of `n` elements consumes `ceil(n / 4)` counters; the stateful
//!   [`Philox`] advances `offset` by exactly that, so consecutive fills never share a counter
//!   (lanes of a partially used last block are discarded).
//! - Uniforms lie in the open interval (0, 1): `u = ((x >> 9) as f32 + 0.5) * 2^-23`.
//!   Every value is an exactly representable f32, and `u` and `1 - u` occur with equal
//!   probability. Only 23 bits are used on purpose: with 24 bits, `(x >> 8) as f32 + 0.5`
//!   needs 25 significant bits and rounds, to 1.0 for the top value.
//! - Normals: Box–Muller on lane pairs of one block. Lanes (0, 1) give normals 0 and 1,
//!   lanes (2, 3) give normals 2 and 3: with `u1, u2` the uniforms of the pair,
//!   `r = sqrt(-2 ln u1)`, `z0 = r cos(2π u2)`, `z1 = r sin(2π u2)`.
//!   The reference computes `r`, `cos`, `sin` in f64 from the f32 uniforms and rounds to
//!   f32 once at the end, because transcendental functions cannot be reproduced bit for bit
//!   across libm and CUDA.
//! - Logit-normal: `sigmoid(fma(std, z, mean))` in f64, rounded to f32, where `z` is the
//!   f32 normal of the same element index. The fused multiply-add is part of the definition
//!   because nvcc contracts `mean + std * z` into an FMA by default.
//!
//! Contract for GPU kernels: raw lanes and uniforms must be bit-identical to this module;
//! normals must be within 2 ulp of it. Evaluating the same f64 formula on the device keeps
//! them within 1 ulp. An all-f32 version (`logf`, `sqrtf`, `sincospif`) is within 2 ulp only
//! with correctly rounded functions: emulating CUDA's 1-ulp `logf`/`sincospif` pushed about
//! 1 output in 1700 to 3 ulp (see `sf_box_muller_f32` in the header). Fast-math intrinsics
//! are out.
//! Logit-normals must apply the f64 formula above to such a normal; the normal's error then
//! reaches the output scaled by up to `|std * z|`.

use std::f64::consts::TAU;
use std::thread;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Fills at least this long are split over threads; below it thread start-up costs more
/// than it saves.
const PARALLEL_MIN: usize = 1 << 16;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// The Philox4x32-10 bijection: 10 rounds, key bumped by the Weyl constants between rounds.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The four raw lanes of the 64-bit `counter` under `seed`.
#[inline]
fn block(seed: u64, counter: u64) -> [u32; 4] {
    philox4x32_10([counter as u32, (counter >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32])
}

/// Maps a raw lane to a uniform in (0, 1); see the module doc for why 23 bits.
#[inline]
pub fn uniform_from_u32(x: u32) -> f32 {
    ((x >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Box–Muller reference on one lane pair, in f64 with a single rounding to f32 per output.
#[inline]
fn box_muller(x0: u32, x1: u32) -> [f32; 2] {
    let u1 = f64::from(uniform_from_u32(x0));
    let u2 = f64::from(uniform_from_u32(x1));
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = TAU * u2;
    [(r * theta.cos()) as f32, (r * theta.sin()) as f32]
}

#[inline]
fn logit_normal(z: f32, mean: f32, std: f32) -> f32 {
    let t = f64::from(std).mul_add(f64::from(z), f64::from(mean));
    (1.0 / (1.0 + (-t).exp())) as f32
}

fn uniform4(x: [u32; 4]) -> [f32; 4] {
    x.map(uniform_from_u32)
}

fn normal4(x: [u32; 4]) -> [f32; 4] {
    let [z0, z1] = box_muller(x[0], x[1]);
    let [z2, z3] = box_muller(x[2], x[3]);
    [z0, z1, z2, z3]
}

/// Element `i` of a uniform fill at `(seed, offset)`: what one GPU thread computes.
pub fn uniform_at(seed: u64, offset: u64, i: u64) -> f32 {
    uniform_from_u32(block(seed, offset.wrapping_add(i / 4))[(i % 4) as usize])
}

/// Element `i` of a normal fill at `(seed, offset)`.
pub fn normal_at(seed: u64, offset: u64, i: u64) -> f32 {
    normal4(block(seed, offset.wrapping_add(i / 4)))[(i % 4) as usize]
}

/// Element `i` of a logit-normal fill at `(seed, offset)`.
pub fn logit_normal_at(seed: u64, offset: u64, i: u64, mean: f32, std: f32) -> f32 {
    logit_normal(normal_at(seed, offset, i), mean, std)
}

/// Writes `f(block(seed, offset + k))` to elements `4k..4k+4` of `out`, truncating the last.
fn fill_serial<T: Copy>(out: &mut [T], seed: u64, offset: u64, f: &impl Fn([u32; 4]) -> [T; 4]) {
    for (k, part) in out.chunks_mut(4).enumerate() {
        let v = f(block(seed, offset.wrapping_add(k as u64)));
        part.copy_from_slice(&v[..part.len()]);
    }
}

/// [`fill_serial`], split over threads for long fills. Chunk lengths are multiples of 4 so
/// each chunk starts on a block boundary and the result is identical to the serial fill.
fn fill_blocks<T: Copy + Send>(out: &mut [T], seed: u64, offset: u64, f: impl Fn([u32; 4]) -> [T; 4] + Sync) {
    let threads = thread::available_parallelism().map_or(1, |n| n.get());
    if out.len() < PARALLEL_MIN || threads == 1 {
        fill_serial(out, seed, offset, &f);
        return;
    }
    let chunk = out.len().div_ceil(threads).next_multiple_of(4);
    let f = &f;
    thread::scope(|s| {
        for (j, part) in out.chunks_mut(chunk).enumerate() {
            let start = offset.wrapping_add((j * chunk / 4) as u64);
            s.spawn(move || fill_serial(part, seed, start, f));
        }
    });
}

/// A Philox stream position. Each fill reads counters from `offset` on and then advances
/// `offset` by `ceil(n / 4)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Philox {
    pub seed: u64,
    pub offset: u64,
}

impl Philox {
    pub fn new(seed: u64) -> Self {
        Self::at(seed, 0)
    }

    pub fn at(seed: u64, offset: u64) -> Self {
        Self { seed, offset }
    }

    /// Reserves the counters for `n` elements and returns the first one.
    fn advance(&mut self, n: usize) -> u64 {
        let start = self.offset;
        self.offset = start.wrapping_add(n.div_ceil(4) as u64);
        start
    }

    pub fn fill_uniform(&mut self, out: &mut [f32]) {
        let start = self.advance(out.len());
        fill_blocks(out, self.seed, start, uniform4);
    }

    pub fn fill_normal(&mut self, out: &mut [f32]) {
        let start = self.advance(out.len());
        fill_blocks(out, self.seed, start, normal4);
    }

    pub fn fill_logit_normal(&mut self, out: &mut [f32], mean: f32, std: f32) {
        let start = self.advance(out.len());
        fill_blocks(out, self.seed, start, |x| normal4(x).map(|z| logit_normal(z, mean, std)));
    }

    pub fn uniform_vec(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        self.fill_uniform(&mut v);
        v
    }

    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        self.fill_normal(&mut v);
        v
    }

    pub fn logit_normal_vec(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        let mut v = vec![0.0; n];
        self.fill_logit_normal(&mut v, mean, std);
        v
    }

    /// Raw lanes: element `i` is lane `i % 4` of counter `offset + i / 4`.
    pub fn next_u32s(&mut self, n: usize) -> Vec<u32> {
        let mut v = vec![0; n];
        let start = self.advance(n);
        fill_blocks(&mut v, self.seed, start, |x| x);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central moments of `xs` in f64: (mean, variance, skewness, excess kurtosis).
    fn moments(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64, f64, f64) {
        let n = xs.clone().count() as f64;
        let mean = xs.clone().sum::<f64>() / n;
        let (mut m2, mut m3, mut m4) = (0.0, 0.0, 0.0);
        for x in xs {
            let d = x - mean;
            m2 += d * d;
            m3 += d * d * d;
            m4 += d * d * d * d;
        }
        let (m2, m3, m4) = (m2 / n, m3 / n, m4 / n);
        (mean, m2, m3 / m2.powf(1.5), m4 / (m2 * m2) - 3.0)
    }

    // Random123 kat_vectors, philox4x32_10 lines.
    #[test]
    fn kat_zero() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    #[test]
    fn kat_all_ones() {
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
    }

    #[test]
    fn kat_pi() {
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "{a} vs {b}");
        a.to_bits().abs_diff(b.to_bits())
    }

    /// The same numbers are hard-coded in tools/philox_header_check.cpp; together they show
    /// the C++ header and this module agree bit for bit.
    #[test]
    fn golden_seed42_offset7() {
        let raw = [
            0x5bbd83b1, 0x68784c85, 0x172067aa, 0x2e6b75b7, 0x8c4a529c, 0x22658bcb, 0xe7eb75d9, 0x7fc3c9af, 0x442f2860,
            0x65727aa0,
        ];
        let uniform = [
            0x3eb77b06, 0x3ed0f09a, 0x3db90338, 0x3e39add4, 0x3f0c4a53, 0x3e09962c, 0x3f67eb75, 0x3eff8792, 0x3e885e52,
            0x3ecae4f6,
        ];
        let normal = [
            0xbf99a318, 0x3f483a0c, 0x3f6ac550, 0x3ffef420, 0x3f3a85f1, 0x3f51ddeb, 0xbee39353, 0x3b282b0c, 0xbfa58964,
            0x3f7c9324,
        ];
        let logit_normal = [
            0x3e83b4a2, 0x3f51efab, 0x3f5831fb, 0x3f74da0e, 0x3f4f3fac, 0x3f53c1ae, 0x3ef60b02, 0x3f1f8cda, 0x3e70777b,
            0x3f5b2405,
        ];
        assert_eq!(Philox::at(42, 7).next_u32s(10), raw);
        let u = Philox::at(42, 7).uniform_vec(10);
        assert_eq!(u.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), uniform);
        // Normals go through the platform libm (ln, cos, sin, exp), which may differ from
        // glibc, where these were recorded, by an ulp.
        let z = Philox::at(42, 7).normal_vec(10);
        let l = Philox::at(42, 7).logit_normal_vec(10, 0.5, 1.3);
        for i in 0..10 {
            let (zw, lw) = (f32::from_bits(normal[i]), f32::from_bits(logit_normal[i]));
            assert!(ulps(z[i], zw) <= 1, "normal {i}: {} vs {zw}", z[i]);
            assert!(ulps(l[i], lw) <= 1, "logit-normal {i}: {} vs {lw}", l[i]);
        }
    }

    #[test]
    fn uniform_endpoints_are_open_and_exact() {
        assert_eq!(uniform_from_u32(0), 2f32.powi(-24));
        assert_eq!(uniform_from_u32(u32::MAX), 1.0 - 2f32.powi(-24));
        // Every uniform is an odd multiple of 2^-24, i.e. exact on the 2^-23 grid.
        for u in Philox::new(3).uniform_vec(4096) {
            let k = f64::from(u) * 16_777_216.0;
            assert_eq!(k.fract(), 0.0);
            assert_eq!(k as u64 % 2, 1);
        }
    }

    #[test]
    fn raw_lanes_follow_counter_mapping() {
        let seed = 0x0123_4567_89ab_cdef;
        let offset = u64::from(u32::MAX); // the next counter carries into the high word
        let raw = Philox::at(seed, offset).next_u32s(8);
        let key = [0x89ab_cdef, 0x0123_4567];
        assert_eq!(raw[..4], philox4x32_10([u32::MAX, 0, 0, 0], key));
        assert_eq!(raw[4..], philox4x32_10([0, 1, 0, 0], key));
    }

    #[test]
    fn fills_are_deterministic() {
        let a = Philox::at(42, 7);
        assert_eq!(a.clone().uniform_vec(1000), a.clone().uniform_vec(1000));
        assert_eq!(a.clone().normal_vec(1000), a.clone().normal_vec(1000));
        assert_eq!(a.clone().logit_normal_vec(1000, 0.5, 1.3), a.clone().logit_normal_vec(1000, 0.5, 1.3));
    }

    #[test]
    fn chunked_fill_equals_one_fill() {
        let big = Philox::at(9, 100).normal_vec(1000);
        let mut g = Philox::at(9, 100);
        let mut chunked = g.normal_vec(400);
        chunked.extend(g.normal_vec(600));
        assert_eq!(chunked, big);
        assert_eq!(g, Philox::at(9, 350));
    }

    #[test]
    fn offset_advances_by_blocks() {
        let mut g = Philox::at(1, 10);
        for (n, after) in [(0, 10), (1, 11), (4, 12), (5, 14), (3, 15)] {
            g.next_u32s(n);
            assert_eq!(g.offset, after, "after a fill of {n}");
        }
        g.fill_uniform(&mut [0.0; 9]);
        g.fill_normal(&mut [0.0; 2]);
        g.fill_logit_normal(&mut [0.0; 8], 0.0, 1.0);
        assert_eq!(g.offset, 15 + 3 + 1 + 2);
        // A partial last block is discarded: the next fill starts at a fresh counter.
        let mut h = Philox::at(1, 0);
        let first = h.next_u32s(5);
        assert_eq!(h.next_u32s(4), philox4x32_10([2, 0, 0, 0], [1, 0]));
        assert_eq!(first[4], philox4x32_10([1, 0, 0, 0], [1, 0])[0]);
    }

    #[test]
    fn element_functions_match_fills() {
        let (seed, offset) = (42, 7);
        let u = Philox::at(seed, offset).uniform_vec(37);
        let z = Philox::at(seed, offset).normal_vec(37);
        let l = Philox::at(seed, offset).logit_normal_vec(37, 0.5, 1.3);
        for i in 0..37 {
            assert_eq!(u[i], uniform_at(seed, offset, i as u64));
            assert_eq!(z[i], normal_at(seed, offset, i as u64));
            assert_eq!(l[i], logit_normal_at(seed, offset, i as u64, 0.5, 1.3));
        }
    }

    #[test]
    fn parallel_fill_equals_elementwise() {
        // Long enough to take the threaded path, and not a multiple of 4 or of the chunk.
        let n = PARALLEL_MIN * 2 + 3;
        let (seed, offset) = (77, u64::MAX - 5); // also crosses the counter wrap
        let mut g = Philox::at(seed, offset);
        let u = g.uniform_vec(n);
        assert_eq!(g.offset, offset.wrapping_add(n.div_ceil(4) as u64));
        let z = Philox::at(seed, offset).normal_vec(n);
        let raw = Philox::at(seed, offset).next_u32s(n);
        let mut serial = vec![0; n];
        fill_serial(&mut serial, seed, offset, &|x| x);
        assert_eq!(raw, serial);
        for i in (0..n).step_by(97).chain(n - 8..n) {
            assert_eq!(u[i], uniform_at(seed, offset, i as u64), "uniform {i}");
            assert_eq!(z[i], normal_at(seed, offset, i as u64), "normal {i}");
        }
    }

    #[test]
    fn uniform_moments() {
        let n = 1 << 20;
        let u = Philox::new(2024).uniform_vec(n);
        let (mean, var, _, _) = moments(u.iter().map(|&x| f64::from(x)));
        // SE(mean) = sqrt(1/12 / n) = 2.8e-4, so 0.002 is ~7 SE.
        assert!((mean - 0.5).abs() < 0.002, "mean {mean}");
        // SE(var) = sqrt((1/80 - 1/144) / n) = 7.3e-5, so 5e-4 is ~7 SE.
        assert!((var - 1.0 / 12.0).abs() < 5e-4, "var {var}");
        let min = u.iter().copied().fold(f32::INFINITY, f32::min);
        let max = u.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(min > 0.0 && max < 1.0, "range [{min}, {max}]");
    }

    #[test]
    fn normal_moments() {
        let n = 1 << 20;
        let z = Philox::new(2024).normal_vec(n);
        let (mean, var, skew, kurt) = moments(z.iter().map(|&x| f64::from(x)));
        // SE(mean) = 1/sqrt(n) = 9.8e-4: 0.005 is ~5 SE.
        assert!(mean.abs() < 0.005, "mean {mean}");
        // SE(var) = sqrt(2/n) = 1.4e-3: 0.01 is ~7 SE.
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        // SE(skew) = sqrt(6/n) = 2.4e-3: 0.02 is ~8 SE.
        assert!(skew.abs() < 0.02, "skew {skew}");
        // SE(excess kurtosis) = sqrt(24/n) = 4.8e-3: 0.05 is ~10 SE.
        assert!(kurt.abs() < 0.05, "kurtosis {kurt}");
    }

    #[test]
    fn logit_normal_has_requested_parameters() {
        let n = 1 << 20;
        let (mean, std) = (0.5, 1.3);
        let p = Philox::new(5).logit_normal_vec(n, mean, std);
        assert!(p.iter().all(|&x| x > 0.0 && x < 1.0));
        let logits = p.iter().map(|&x| {
            let x = f64::from(x);
            (x / (1.0 - x)).ln()
        });
        let (m, v, _, _) = moments(logits);
        // SE(mean) = 1.3/sqrt(n) = 1.3e-3: 0.01 is ~8 SE.
        assert!((m - f64::from(mean)).abs() < 0.01, "mean {m}");
        // SE(std) = 1.3/sqrt(2n) = 9.0e-4: 0.01 is ~11 SE (f32 rounding of p near 0 and 1
        // also perturbs the recovered logits slightly).
        assert!((v.sqrt() - f64::from(std)).abs() < 0.01, "std {}", v.sqrt());
    }

    #[test]
    fn different_seeds_and_offsets_differ() {
        let base = Philox::at(1, 0).next_u32s(64);
        // Seeds that differ only in the high key word, and a neighbouring offset.
        for other in [Philox::at(2, 0), Philox::at(1 | 1 << 32, 0), Philox::at(1, 1)] {
            let v = other.clone().next_u32s(64);
            let same = base.iter().zip(&v).filter(|(a, b)| a == b).count();
            assert_eq!(same, 0, "{other:?} shares {same} lanes with seed 1");
        }
    }
}

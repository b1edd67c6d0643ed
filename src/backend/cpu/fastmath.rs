//! Branch-free approximations of transcendental functions for the hot elementwise
//! loops (attention softmax, GELU, SiLU): plain f32 arithmetic that LLVM vectorizes,
//! accurate to a few ulp, where libm's scalar calls would dominate the loop.

/// exp(x) to about 2 ulp for x ≤ 88 (Cephes expf: x = n·ln2 + r, degree-6 polynomial
/// in r, 2ⁿ assembled in the exponent bits), exactly 0 below −87.3 and for −∞.
/// Branch-free so the row loops vectorize; libm's expf would cost more than the
/// attention tile products at head dims of 32–64, and than the GEMMs around GELU.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    // 1.5·2²³: adding it rounds to an integer and leaves that integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.3);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23) & 0x7f80_0000);
    if x < -87.3 {
        0.0
    } else {
        y * two_n
    }
}

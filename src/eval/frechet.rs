//! Fréchet distance between two sets of feature vectors (the FID formula):
//! FD = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½).
//! Tr((Σ₁Σ₂)^½) is computed as Σ √λᵢ of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (same
//! eigenvalues as Σ₁Σ₂), with symmetric eigendecompositions by cyclic Jacobi in f64 —
//! exact to rounding for the feature sizes used here (≤ a few hundred).

use crate::error::{Error, Result};

/// Mean and (unbiased, n−1) covariance of `n` row vectors of length `d`.
pub fn mean_cov(features: &[f32], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if d == 0 || features.len() % d != 0 || features.len() / d < 2 {
        return Err(Error::Msg(format!(
            "Fréchet distance needs at least 2 feature vectors of length {d}, got {} values",
            features.len()
        )));
    }
    let n = features.len() / d;
    let mut mu = vec![0f64; d];
    for row in features.chunks(d) {
        for (m, &v) in mu.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0f64; d * d];
    for row in features.chunks(d) {
        for i in 0..d {
            let a = row[i] as f64 - mu[i];
            for j in i..d {
                cov[i * d + j] += a * (row[j] as f64 - mu[j]);
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    Ok((mu, cov))
}

/// Eigenvalues and eigenvectors (columns of `v`, row-major d×d) of a symmetric matrix.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        let diag: f64 = (0..d).map(|i| a[i * d + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// Symmetric PSD square root (negative eigenvalues from rounding are clamped to 0).
fn sqrt_psd(a: &[f64], d: usize) -> Vec<f64> {
    let (w, v) = symmetric_eigen(a, d);
    let mut out = vec![0f64; d * d];
    for k in 0..d {
        let s = w[k].max(0.0).sqrt();
        for i in 0..d {
            let vik = v[i * d + k] * s;
            for j in 0..d {
                out[i * d + j] += vik * v[j * d + k];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// FD between two Gaussians (μ, Σ).
pub fn frechet_distance(mu1: &[f64], cov1: &[f64], mu2: &[f64], cov2: &[f64]) -> f64 {
    let d = mu1.len();
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let s1 = sqrt_psd(cov1, d);
    let mut m = matmul(&matmul(&s1, cov2, d), &s1, d);
    // Symmetrize away rounding before the eigensolve.
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = v;
            m[j * d + i] = v;
        }
    }
    let (w, _) = symmetric_eigen(&m, d);
    let tr_sqrt: f64 = w.iter().map(|&x| x.max(0.0).sqrt()).sum();
    let tr: f64 = (0..d).map(|i| cov1[i * d + i] + cov2[i * d + i]).sum();
    (mean_term + tr - 2.0 * tr_sqrt).max(0.0)
}

/// FD between two feature sets (rows of length `d`).
pub fn frechet_distance_of(a: &[f32], b: &[f32], d: usize) -> Result<f64> {
    let (m1, c1) = mean_cov(a, d)?;
    let (m2, c2) = mean_cov(b, d)?;
    Ok(frechet_distance(&m1, &c1, &m2, &c2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        // Diagonal Gaussians: FD = |μ₁−μ₂|² + Σ (σ₁ − σ₂)².
        let (mu1, mu2) = (vec![0.0, 1.0, 2.0], vec![1.0, 1.0, 0.0]);
        let var1 = [1.0, 4.0, 0.25];
        let var2 = [4.0, 1.0, 0.25];
        let diag = |v: &[f64]| {
            let mut c = vec![0.0; 9];
            for i in 0..3 {
                c[i * 3 + i] = v[i];
            }
            c
        };
        let fd = frechet_distance(&mu1, &diag(&var1), &mu2, &diag(&var2));
        let want = 1.0 + 4.0 + (1.0 + 1.0 + 0.0);
        assert!((fd - want).abs() < 1e-10, "{fd} vs {want}");
        // Identical distributions: 0; a rotated covariance against itself: 0.
        let c = vec![2.0, 0.5, 0.1, 0.5, 1.0, -0.3, 0.1, -0.3, 0.7];
        assert!(frechet_distance(&mu1, &c, &mu1, &c).abs() < 1e-10);
    }

    #[test]
    fn eigen_reconstructs() {
        let a = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 1.0];
        let (w, v) = symmetric_eigen(&a, 3);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| v[i * 3 + k] * w[k] * v[j * 3 + k]).sum();
                assert!((r - a[i * 3 + j]).abs() < 1e-12);
            }
        }
    }
}

//! Flow-matching math: identities, schedules against diffusers' scheduler, and the
//! samplers on an analytic case (Gaussian data, exact velocity field).

use senseflow::diffusion::{self, Shift, SigmaSampler};
use senseflow::rng::Philox;
use senseflow::testing::check_close;
use senseflow::{Result, Tensor};

#[test]
fn x0_eps_v_round_trips() -> Result<()> {
    let mut rng = Philox::new(1);
    let x0 = Tensor::randn(&[3, 2, 5, 7], &mut rng);
    let eps = Tensor::randn(&[3, 2, 5, 7], &mut rng);
    let sigma = Tensor::from_vec(vec![0.1, 0.5, 0.97], &[3])?;
    let x = diffusion::add_noise(&x0, &eps, &sigma)?;
    let v = diffusion::velocity_target(&x0, &eps)?;
    check_close("x0 from (x, v)", &diffusion::x0_from_v(&x, &v, &sigma)?.to_vec_f32()?, &x0.to_vec_f32()?, 1e-6)?;
    check_close("eps from (x, v)", &diffusion::eps_from_v(&x, &v, &sigma)?.to_vec_f32()?, &eps.to_vec_f32()?, 1e-6)?;
    check_close("v from (x, x0)", &diffusion::v_from_x0(&x, &x0, &sigma)?.to_vec_f32()?, &v.to_vec_f32()?, 1e-5)?;
    // One Euler step with the true velocity of a straight path lands on the path.
    let s2 = Tensor::from_vec(vec![0.05, 0.2, 0.5], &[3])?;
    let dt = s2.sub(&sigma)?.reshape(&[3, 1, 1, 1])?;
    let stepped = x.add(&v.mul(&dt)?)?;
    let want = diffusion::add_noise(&x0, &eps, &s2)?;
    check_close("euler step along a straight path", &stepped.to_vec_f32()?, &want.to_vec_f32()?, 1e-6)
}

#[test]
fn shift_formulas() {
    // SD3 shift with s = 3 at the published anchors (SENSEFLOW.md: 0.75 → 0.9, 0.5 → 0.75, 0.25 → 0.5).
    for (s, want) in [(1.0, 1.0), (0.75, 0.9), (0.5, 0.75), (0.25, 0.5)] {
        assert!((diffusion::shift_sigma(s, 3.0) - want).abs() < 1e-12);
    }
    // FLUX: μ = 1.15 at 4096 tokens (1024²), 0.5 at 256; its shift equals the SD3 shift with s = e^μ.
    assert!((diffusion::flux_mu(4096) - 1.15).abs() < 1e-12);
    assert!((diffusion::flux_mu(256) - 0.5).abs() < 1e-12);
    for s in [0.1, 0.5, 0.9] {
        let mu = diffusion::flux_mu(4096);
        assert!((diffusion::flux_shift_sigma(s, mu) - diffusion::shift_sigma(s, mu.exp())).abs() < 1e-12);
    }
    // FLUX.1-dev anchors of SENSEFLOW.md: σ = {1.0, 0.904, 0.759, 0.512} from uniform {1, .75, .5, .25}.
    let mu = diffusion::flux_mu(4096);
    for (s, want) in [(0.75, 0.904), (0.5, 0.759), (0.25, 0.512)] {
        assert!((diffusion::flux_shift_sigma(s, mu) - want).abs() < 1e-3, "{s}");
    }
}

#[test]
fn schedules_match_diffusers() -> Result<()> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for c in cases {
        let steps = c["steps"].as_u64().unwrap() as usize;
        let shift = match c["kind"].as_str().unwrap() {
            "sd3" => Shift::Sd3(c["shift"].as_f64().unwrap()),
            _ => Shift::Flux { mu: c["mu"].as_f64().unwrap() },
        };
        let want: Vec<f32> = c["sigmas"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let got = diffusion::inference_sigmas(steps, shift);
        // Same f32 rounding as diffusers: equal to within one f32 ulp.
        check_close(&format!("{shift:?} steps={steps}"), &got, &want, 1.2e-7)?;
    }
    Ok(())
}

#[test]
fn sigma_samplers_have_the_right_moments() {
    let mut rng = Philox::new(7);
    let n = 1 << 18;
    let u = SigmaSampler::Uniform { lo: 0.02, hi: 0.98 }.sample(n, &mut rng);
    let mean: f64 = u.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 3e-3, "uniform mean {mean}"); // se = 0.277/√n ≈ 5e-4
    assert!(u.iter().all(|&x| (0.02..=0.98).contains(&x)));
    let l = SigmaSampler::LogitNormal { mean: 0.0, std: 1.0 }.sample(n, &mut rng);
    let logits: Vec<f64> = l.iter().map(|&s| (s as f64 / (1.0 - s as f64)).ln()).collect();
    let m = logits.iter().sum::<f64>() / n as f64;
    let var = logits.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
    assert!(m.abs() < 1e-2 && (var - 1.0).abs() < 2e-2, "logit-normal logit mean {m} var {var}");
    // se 2e-3, 2.8e-3
}

/// Data x0 ~ N(μ, s²) per coordinate. Then x_σ is Gaussian and the exact velocity is
/// E[v | x_σ] = −μ + (σ − (1−σ)s²)/((1−σ)²s² + σ²) · (x − (1−σ)μ).
fn exact_velocity(mu: f32, s: f32) -> impl FnMut(&Tensor, f32) -> Result<Tensor> {
    move |x: &Tensor, sigma: f32| {
        let (sg, s2) = (sigma as f64, (s * s) as f64);
        let k = (sg - (1.0 - sg) * s2) / ((1.0 - sg).powi(2) * s2 + sg * sg);
        x.affine(k as f32, (-(mu as f64) - k * (1.0 - sg) * mu as f64) as f32)
    }
}

fn moments(t: &Tensor) -> Result<(f64, f64)> {
    let v = t.to_vec_f32()?;
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    Ok((m, v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n))
}

#[test]
fn euler_sampler_recovers_gaussian_data() -> Result<()> {
    let (mu, s) = (1.5f32, 0.4f32);
    let mut rng = Philox::new(11);
    let noise = Tensor::randn(&[64, 1024], &mut rng);
    let sigmas = diffusion::inference_sigmas(200, Shift::Sd3(3.0));
    let x = diffusion::euler_sample(&mut exact_velocity(mu, s), noise, &sigmas)?;
    let (m, var) = moments(&x)?;
    // n = 65536 samples: se(mean) = 0.4/256 ≈ 1.6e-3, se(var) ≈ s²·√(2/n) ≈ 8.8e-4;
    // Euler's discretization error at 200 steps is well below that.
    assert!((m - mu as f64).abs() < 8e-3, "mean {m}, want {mu}");
    assert!((var - (s * s) as f64).abs() < 5e-3, "var {var}, want {}", s * s);
    Ok(())
}

#[test]
fn stochastic_sampler_matches_its_analytic_variance() -> Result<()> {
    // With the exact velocity, each step's x0 = x − σv is the posterior mean E[x0 | x_σ]
    // = μ + k·(x − (1−σ)μ), k = (1−σ)s²/((1−σ)²s² + σ²); re-noising gives
    // Var(x_next) = (1−σ')²·k²·Var(x) + σ'². The sampler must follow this recursion
    // (its samples are posterior means, so their variance is below s²).
    let (mu, s) = (-0.7f32, 0.6f32);
    let mut rng = Philox::new(12);
    let noise = Tensor::randn(&[64, 1024], &mut rng);
    let sigmas = [1.0f32, 0.75, 0.5, 0.25, 0.0];
    let x = diffusion::stochastic_sample(&mut exact_velocity(mu, s), noise, &sigmas, &mut rng)?;
    let (mut var, s2) = (1.0f64, (s * s) as f64);
    for w in sigmas.windows(2) {
        let (a, b) = (w[0] as f64, w[1] as f64);
        let k = (1.0 - a) * s2 / ((1.0 - a).powi(2) * s2 + a * a);
        var *= k * k;
        if b > 0.0 {
            var = (1.0 - b).powi(2) * var + b * b;
        }
    }
    let (m, v) = moments(&x)?;
    // se(mean) ≤ 0.6/256 ≈ 2.3e-3, se(var) ≈ var·√(2/n) ≈ 1.5e-3.
    assert!((m - mu as f64).abs() < 1e-2, "mean {m}, want {mu}");
    assert!((v - var).abs() < 8e-3, "var {v}, analytic {var}");
    Ok(())
}

#[test]
fn samplers_reject_bad_sigma_lists() {
    let x = Tensor::zeros(&[1, 3]);
    let mut v = |x: &Tensor, _s: f32| Ok(x.clone());
    assert!(diffusion::euler_sample(&mut v, x.clone(), &[0.5, 0.7, 0.0]).is_err());
    assert!(diffusion::euler_sample(&mut v, x, &[1.0]).is_err());
}

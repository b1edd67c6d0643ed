//! The attention, rope and embedding families against PyTorch fixtures
//! (tools/fixtures/ops_attention.py: torch SDPA, F.embedding, and diffusers'
//! FluxPosEmbed / apply_rotary_emb / get_timestep_embedding formulas, all in float64).
//! f32 against float64 with the project budget of 1e-5 relative to each reference's scale.

use senseflow::ops;
use senseflow::testing::Fixture;
use senseflow::{Error, Result};

const TOL: f32 = 1e-5;

fn load(family: &str, case: &str) -> Result<Fixture> {
    Fixture::load(format!("{}/tests/fixtures/ops/{family}/{case}.safetensors", env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn attention_matches_torch_sdpa() -> Result<()> {
    for case in ["self_b2h3n17d8", "cross_nq13_nk29_dv12_scale", "masked_n97", "masked_cross_nk131"] {
        let f = load("attention", case)?;
        let scale = f.params["scale"].as_f64().map(|s| s as f32);
        let mask = f.tensors.get("key_mask");
        f.check_op(&["q", "k", "v"], TOL, |x| ops::attention(&x[0], &x[1], &x[2], mask, scale))?;
    }
    Ok(())
}

#[test]
fn causal_attention_matches_torch_sdpa_is_causal() -> Result<()> {
    for case in ["causal_n97_scale", "causal_nq70_nk131", "causal_nq131_nk70_dv12"] {
        let f = load("attention", case)?;
        let scale = f.params["scale"].as_f64().map(|s| s as f32);
        f.check_op(&["q", "k", "v"], TOL, |x| ops::causal_attention(&x[0], &x[1], &x[2], None, scale))?;
    }
    Ok(())
}

#[test]
fn flux_pos_embed_matches_diffusers() -> Result<()> {
    for case in ["flux_pos_embed_small", "flux_pos_embed_flux"] {
        let f = load("rope", case)?;
        let axes: Vec<usize> = f.params["axes_dim"]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
            .ok_or_else(|| Error::format(&f.path, "params.axes_dim missing or not a list of integers"))?;
        let theta = f.param_f32("theta")?;
        f.check_op(&[], TOL, |_| {
            let (cos, sin) = ops::flux_rope_cos_sin(f.get("ids")?, &axes, theta)?;
            ops::stack(&[&cos, &sin], 0)
        })?;
    }
    Ok(())
}

#[test]
fn rope_matches_diffusers() -> Result<()> {
    for case in ["rope_flux_tables", "rope_random_tables"] {
        let f = load("rope", case)?;
        f.check_op(&["x"], TOL, |x| ops::rope(&x[0], f.get("cos")?, f.get("sin")?))?;
    }
    Ok(())
}

#[test]
fn embedding_matches_torch() -> Result<()> {
    let f = load("embedding", "embedding_repeats")?;
    f.check_op(&["table"], TOL, |x| ops::embedding(f.get("ids")?, &x[0]))
}

#[test]
fn timestep_embedding_matches_diffusers() -> Result<()> {
    for case in ["timestep_flip_odd", "timestep_shift_scale"] {
        let f = load("embedding", case)?;
        let (dim, flip) = (f.param_usize("dim")?, f.param_bool("flip_sin_to_cos")?);
        let (shift, scale, period) =
            (f.param_f32("downscale_freq_shift")?, f.param_f32("scale")?, f.param_f32("max_period")?);
        f.check_op(&["t"], TOL, |x| ops::timestep_embedding(&x[0], dim, flip, shift, scale, period))?;
    }
    Ok(())
}

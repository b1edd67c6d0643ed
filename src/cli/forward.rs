//! `senseflow forward`: one forward pass of a diffusers model folder on inputs named like
//! the diffusers forward's keyword arguments; writes `sample` to a safetensors file.
//! AutoencoderKL folders take `--op encode` (input `sample`; outputs `latent_mean`,
//! `latent_logvar`) or `--op decode` (input `z`; output `sample`).

use anyhow::Context;
use senseflow::io;
use senseflow::models::flux::FluxInputs;
use senseflow::models::vae;
use senseflow::models::{load_transformer, Transformer};
use senseflow::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers model folder (config.json + safetensors weights).
    #[arg(long)]
    model: PathBuf,
    /// Inputs: hidden_states, encoder_hidden_states, pooled_projections, timestep
    /// (FLUX also img_ids, txt_ids and, with guidance embeds, guidance).
    #[arg(long)]
    inputs: PathBuf,
    /// Output safetensors file; receives `sample`.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Compute dtype (weights are converted on load).
    #[arg(long, default_value = "f32")]
    dtype: DType,
    /// AutoencoderKL folders only: which half of the autoencoder to run.
    #[arg(long, value_enum)]
    op: Option<VaeOp>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VaeOp {
    /// Image `sample` [B, C, H, W] → `latent_mean`, `latent_logvar`.
    Encode,
    /// Raw latent `z` [B, C, h, w] → image `sample`.
    Decode,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    if a.device != Device::Cpu {
        senseflow::backend::cuda::require(a.device)?;
    }
    let _g = senseflow::no_grad();
    let folder = io::ModelFolder::open(&a.model)?;
    if folder.class_name() == Some(vae::Config::CLASS) {
        return run_vae(a, folder);
    }
    if a.op.is_some() {
        let class = folder.class_name().unwrap_or("a model without _class_name");
        anyhow::bail!("{}: --op applies to AutoencoderKL folders, this is {class}", a.model.display());
    }
    drop(folder);
    let (model, _) = load_transformer(&a.model, a.dtype, false)?;
    let inputs = io::load(&a.inputs)?;
    let path = a.inputs.display().to_string();
    let get = |name: &str| -> anyhow::Result<Tensor> {
        if !inputs.contains(name) {
            anyhow::bail!("{path}: missing input tensor '{name}' (a {} needs it)", model.class_name());
        }
        Ok(inputs.get_as(name, a.dtype)?)
    };
    let x = get("hidden_states")?;
    let ehs = get("encoder_hidden_states")?;
    let pooled = get("pooled_projections")?;
    let t = get("timestep")?;
    let sample = match &model {
        Transformer::Mmdit(m) => m.forward(&x, &ehs, &pooled, &t),
        Transformer::Flux(m) => {
            let (img_ids, txt_ids) = (get("img_ids")?, get("txt_ids")?);
            let guidance = if m.cfg.guidance_embeds { Some(get("guidance")?) } else { None };
            m.forward(&FluxInputs {
                hidden_states: &x,
                encoder_hidden_states: &ehs,
                pooled_projections: &pooled,
                timestep: &t,
                img_ids: &img_ids,
                txt_ids: &txt_ids,
                guidance: guidance.as_ref(),
            })
        }
    }
    .with_context(|| format!("{}: forward", a.model.display()))?;
    let mut meta = HashMap::new();
    meta.insert("model".to_string(), a.model.display().to_string());
    io::save(&a.out, &[("sample".to_string(), &sample)], Some(meta))?;
    eprintln!("wrote sample {:?} ({}) to {}", sample.shape(), sample.dtype(), a.out.display());
    Ok(())
}

fn run_vae(a: &Args, folder: io::ModelFolder) -> anyhow::Result<()> {
    let Some(op) = a.op else {
        anyhow::bail!("{}: an AutoencoderKL folder needs --op encode or --op decode", a.model.display());
    };
    let (model, _) = vae::load_vae_folder(folder, a.dtype, false)?;
    let inputs = io::load(&a.inputs)?;
    let get = |name: &str| -> anyhow::Result<Tensor> {
        if !inputs.contains(name) {
            anyhow::bail!("{}: missing input tensor '{name}' (AutoencoderKL --op {} needs it)", a.inputs.display(), op_name(op));
        }
        Ok(inputs.get_as(name, a.dtype)?)
    };
    let ctx = || format!("{}: {}", a.model.display(), op_name(op));
    let outputs: Vec<(String, Tensor)> = match op {
        VaeOp::Encode => {
            let (mean, logvar) = model.encode(&get("sample")?).with_context(ctx)?;
            vec![("latent_mean".into(), mean), ("latent_logvar".into(), logvar)]
        }
        VaeOp::Decode => vec![("sample".into(), model.decode(&get("z")?).with_context(ctx)?)],
    };
    let mut meta = HashMap::new();
    meta.insert("model".to_string(), a.model.display().to_string());
    meta.insert("op".to_string(), op_name(op).to_string());
    let refs: Vec<(String, &Tensor)> = outputs.iter().map(|(k, t)| (k.clone(), t)).collect();
    io::save(&a.out, &refs, Some(meta))?;
    for (k, t) in &outputs {
        eprintln!("wrote {k} {:?} ({}) to {}", t.shape(), t.dtype(), a.out.display());
    }
    Ok(())
}

fn op_name(op: VaeOp) -> &'static str {
    match op {
        VaeOp::Encode => "encode",
        VaeOp::Decode => "decode",
    }
}

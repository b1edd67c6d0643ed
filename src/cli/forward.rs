//! `senseflow forward`: one forward pass of a diffusers model folder on inputs named like
//! the diffusers forward's keyword arguments; writes `sample` to a safetensors file.
//! transformers folders (DINOv2, CLIP text encoders; no `_class_name` in config.json)
//! take `pixel_values` or `input_ids` and write their named outputs instead.
//! AutoencoderKL folders take `--op encode` (input `sample`; outputs `latent_mean`,
//! `latent_logvar`) or `--op decode` (input `z`; output `sample`).

use anyhow::Context;
use senseflow::io;
use senseflow::models::flux::FluxInputs;
use senseflow::models::{clip_text, load_transformer, transformers as hf, vae, vit, Transformer};
use senseflow::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers or transformers model folder (config.json + safetensors weights).
    #[arg(long)]
    model: PathBuf,
    /// Inputs: hidden_states, encoder_hidden_states, pooled_projections, timestep
    /// (FLUX also img_ids, txt_ids and, with guidance embeds, guidance); DINOv2:
    /// pixel_values; CLIP text: input_ids (int64 [B, L]).
    #[arg(long)]
    inputs: PathBuf,
    /// Output safetensors file; receives `sample` (DINOv2 / CLIP text: last_hidden_state,
    /// pooler_output, hidden_states.N and, when projected, text_embeds).
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
    if let Some(kind) = transformers_model(&a.model)? {
        if a.op.is_some() {
            anyhow::bail!("{}: --op applies to AutoencoderKL folders, this is a transformers model", a.model.display());
        }
        return run_transformers(a, kind);
    }
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

/// The transformers-library models `forward` serves.
enum TransformersModel {
    Dinov2,
    ClipText,
}

/// Which transformers model a folder holds, from `model_type` (or `architectures[0]`);
/// `None` for diffusers folders (config.json with `_class_name`) and folders without a
/// config, which the diffusers path reports on.
fn transformers_model(dir: &Path) -> anyhow::Result<Option<TransformersModel>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    if config.get("_class_name").is_some() {
        return Ok(None);
    }
    let (mt, arch) = (hf::model_type(&config), hf::architecture(&config));
    if mt.is_some_and(|m| vit::Config::MODEL_TYPES.contains(&m))
        || mt.is_none() && arch.is_some_and(|c| vit::Config::CLASSES.contains(&c))
    {
        return Ok(Some(TransformersModel::Dinov2));
    }
    if mt == Some(clip_text::Config::MODEL_TYPE)
        || mt.is_none() && arch.is_some_and(|c| clip_text::Config::CLASSES.contains(&c))
    {
        return Ok(Some(TransformersModel::ClipText));
    }
    anyhow::bail!(
        "{}: not a supported model (no diffusers _class_name; model_type {mt:?}, architectures[0] {arch:?}; \
         transformers models served: {}, {})",
        path.display(),
        vit::Config::CLASSES.join(", "),
        clip_text::Config::CLASSES.join(", ")
    )
}

fn run_transformers(a: &Args, kind: TransformersModel) -> anyhow::Result<()> {
    let inputs = io::load(&a.inputs)?;
    let need = |name: &str, class: &str| -> anyhow::Result<()> {
        if !inputs.contains(name) {
            anyhow::bail!("{}: missing input tensor '{name}' (a {class} needs it)", a.inputs.display());
        }
        Ok(())
    };
    let context = || format!("{}: forward", a.model.display());
    let mut outputs: Vec<(String, Tensor)> = Vec::new();
    let hidden_states = match kind {
        TransformersModel::Dinov2 => {
            let (model, _) = vit::load(&a.model, a.dtype, false)?;
            need("pixel_values", model.cfg.variant.class_name())?;
            let x = inputs.get_as("pixel_values", a.dtype)?;
            let out = model.forward(&x).with_context(context)?;
            outputs.push(("last_hidden_state".into(), out.last_hidden_state));
            outputs.push(("pooler_output".into(), out.pooler_output));
            out.hidden_states
        }
        TransformersModel::ClipText => {
            let (model, _) = clip_text::load(&a.model, a.dtype, false)?;
            need("input_ids", model.cfg.class_name())?;
            let shape = &inputs.meta("input_ids").expect("checked").shape;
            let &[b, l] = shape.as_slice() else {
                anyhow::bail!("{}: input_ids has shape {shape:?}, expected [B, L]", a.inputs.display());
            };
            let ids = inputs.get_i64("input_ids")?;
            let out = model.forward(&ids, [b, l]).with_context(context)?;
            outputs.push(("last_hidden_state".into(), out.last_hidden_state));
            outputs.push(("pooler_output".into(), out.pooler_output));
            if let Some(t) = out.text_embeds {
                outputs.push(("text_embeds".into(), t));
            }
            out.hidden_states
        }
    };
    outputs.extend(hidden_states.into_iter().enumerate().map(|(i, h)| (format!("hidden_states.{i}"), h)));
    let mut meta = HashMap::new();
    meta.insert("model".to_string(), a.model.display().to_string());
    let refs: Vec<(String, &Tensor)> = outputs.iter().map(|(k, t)| (k.clone(), t)).collect();
    io::save(&a.out, &refs, Some(meta))?;
    eprintln!(
        "wrote {} ({}) to {}",
        outputs.iter().map(|(k, t)| format!("{k} {:?}", t.shape())).collect::<Vec<_>>().join(", "),
        a.dtype,
        a.out.display()
    );
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
            anyhow::bail!(
                "{}: missing input tensor '{name}' (AutoencoderKL --op {} needs it)",
                a.inputs.display(),
                op_name(op)
            );
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

//! Named teacher presets against the published checkpoints: parameter counts from a
//! shapes-only (meta) build equal diffusers' counts exactly, configs round-trip through
//! config.json, the shipped SD3.5-Medium config.json parses to its preset, and invalid
//! configs are errors that name the file and the offending field.
//!
//! The expected counts were computed with diffusers 0.42.1 on the published configs
//! (`sum(p.numel() for p in model.parameters())` on the meta device); they exclude SD3's
//! `pos_embed.pos_embed` buffer, which the checkpoints store and `expected_keys` lists.

use senseflow::models::{flux, mmdit, TransformerConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

struct Preset {
    name: &'static str,
    cfg: TransformerConfig,
    parameters: usize,
    /// Elements of the `pos_embed.pos_embed` buffer (SD3 only).
    pos_embed_buffer: Option<usize>,
}

fn presets() -> Vec<Preset> {
    use TransformerConfig::{Flux, Mmdit};
    vec![
        Preset {
            name: "sd35-large",
            cfg: Mmdit(mmdit::Config::sd35_large()),
            parameters: 8_056_627_520,
            pos_embed_buffer: Some(89_653_248),
        },
        Preset {
            name: "sd35-medium",
            cfg: Mmdit(mmdit::Config::sd35_medium()),
            parameters: 2_243_171_520,
            pos_embed_buffer: Some(226_492_416),
        },
        Preset {
            name: "sd3-medium",
            cfg: Mmdit(mmdit::Config::sd3_medium()),
            parameters: 2_028_328_000,
            pos_embed_buffer: Some(56_623_104),
        },
        Preset {
            name: "flux-dev",
            cfg: Flux(flux::Config::flux_dev()),
            parameters: 11_901_408_320,
            pos_embed_buffer: None,
        },
        Preset {
            name: "flux-schnell",
            cfg: Flux(flux::Config::flux_schnell()),
            parameters: 11_891_178_560,
            pos_embed_buffer: None,
        },
    ]
}

/// Peak resident set size of this process in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

#[test]
fn preset_parameter_counts_equal_diffusers() {
    let rss_before = peak_rss_mib();
    for p in presets() {
        let t = Instant::now();
        let n = p.cfg.num_parameters().unwrap();
        let keys = p.cfg.expected_keys().unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("{:13} {n:>14} parameters, {} keys, meta builds {ms:.1} ms", p.name, keys.len());
        assert_eq!(n, p.parameters, "{}: parameter count", p.name);
        // A meta build is bookkeeping only: no tensor data, so it is fast at any size.
        assert!(ms < 2000.0, "{}: meta builds took {ms:.0} ms", p.name);

        let buffer = keys.iter().find(|(k, _)| k == mmdit::POS_EMBED_BUFFER);
        let in_keys: usize = keys.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        match p.pos_embed_buffer {
            Some(elems) => {
                let (_, shape) = buffer.unwrap_or_else(|| panic!("{}: no pos_embed buffer key", p.name));
                assert_eq!(shape.iter().product::<usize>(), elems, "{}: buffer {shape:?}", p.name);
                assert_eq!(shape.len(), 3, "{}: buffer {shape:?}", p.name);
                assert_eq!(in_keys, p.parameters + elems, "{}: expected keys", p.name);
            }
            None => {
                assert!(buffer.is_none(), "{}: unexpected buffer key", p.name);
                assert_eq!(in_keys, p.parameters, "{}: expected keys", p.name);
            }
        }
        let mut names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), keys.len(), "{}: duplicate keys", p.name);
    }
    // Tens of billions of meta parameters must not have touched memory.
    if let (Some(before), Some(after)) = (rss_before, peak_rss_mib()) {
        println!("peak RSS {before:.0} MiB before, {after:.0} MiB after");
        assert!(after - before < 256.0, "meta builds grew the peak RSS by {:.0} MiB", after - before);
    }
}

#[test]
fn named_presets_resolve() {
    for p in presets() {
        match &p.cfg {
            TransformerConfig::Mmdit(c) => assert_eq!(&mmdit::Config::preset(p.name).unwrap(), c),
            TransformerConfig::Flux(c) => assert_eq!(&flux::Config::preset(p.name).unwrap(), c),
        }
    }
    let err = mmdit::Config::preset("sd4").unwrap_err().to_string();
    assert!(err.contains("sd4") && err.contains("sd35-large"), "{err}");
    let err = flux::Config::preset("flux-pro").unwrap_err().to_string();
    assert!(err.contains("flux-pro") && err.contains("flux-dev"), "{err}");
}

/// `cfg` as config.json: the serialized fields plus diffusers' metadata keys.
fn to_config_json(cfg: &impl serde::Serialize, class: &str) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.insert("_class_name".into(), json!(class));
    obj.insert("_diffusers_version".into(), json!("0.42.1"));
    v
}

#[test]
fn presets_round_trip_through_config_json() {
    let origin = Path::new("preset/config.json");
    for p in presets() {
        match &p.cfg {
            TransformerConfig::Mmdit(c) => {
                let v = to_config_json(c, mmdit::Config::CLASS);
                let text = serde_json::to_string_pretty(&v).unwrap();
                let back = mmdit::Config::from_json(&serde_json::from_str(&text).unwrap(), origin);
                assert_eq!(&back.unwrap(), c, "{}", p.name);
            }
            TransformerConfig::Flux(c) => {
                let v = to_config_json(c, flux::Config::CLASS);
                let text = serde_json::to_string_pretty(&v).unwrap();
                let back = flux::Config::from_json(&serde_json::from_str(&text).unwrap(), origin);
                assert_eq!(&back.unwrap(), c, "{}", p.name);
            }
        }
    }
}

/// stabilityai/stable-diffusion-3.5-medium transformer/config.json as published.
const SD35_MEDIUM_CONFIG: &str = r#"{
  "_class_name": "SD3Transformer2DModel",
  "_diffusers_version": "0.31.0.dev0",
  "attention_head_dim": 64,
  "caption_projection_dim": 1536,
  "dual_attention_layers": [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12
  ],
  "in_channels": 16,
  "joint_attention_dim": 4096,
  "num_attention_heads": 24,
  "num_layers": 24,
  "out_channels": 16,
  "patch_size": 2,
  "pooled_projection_dim": 2048,
  "pos_embed_max_size": 384,
  "qk_norm": "rms_norm",
  "sample_size": 128
}"#;

/// black-forest-labs/FLUX.1-dev transformer/config.json as published (the fields it
/// leaves out take diffusers' defaults).
const FLUX_DEV_CONFIG: &str = r#"{
  "_class_name": "FluxTransformer2DModel",
  "_diffusers_version": "0.30.0.dev0",
  "_name_or_path": "../checkpoints/flux-dev/transformer",
  "attention_head_dim": 128,
  "guidance_embeds": true,
  "in_channels": 64,
  "joint_attention_dim": 4096,
  "num_attention_heads": 24,
  "num_layers": 19,
  "num_single_layers": 38,
  "patch_size": 1,
  "pooled_projection_dim": 768
}"#;

#[test]
fn published_config_json_parses_to_the_preset() {
    let origin = Path::new("stable-diffusion-3.5-medium/transformer/config.json");
    let v: Value = serde_json::from_str(SD35_MEDIUM_CONFIG).unwrap();
    assert_eq!(mmdit::Config::from_json(&v, origin).unwrap(), mmdit::Config::sd35_medium());
    let origin = Path::new("FLUX.1-dev/transformer/config.json");
    let v: Value = serde_json::from_str(FLUX_DEV_CONFIG).unwrap();
    assert_eq!(flux::Config::from_json(&v, origin).unwrap(), flux::Config::flux_dev());
}

/// Parses `text` after `edit`, expecting an error that names the file and every word
/// of `needles`.
fn expect_error<T: std::fmt::Debug>(
    parse: impl Fn(&Value, &Path) -> senseflow::Result<T>,
    text: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    needles: &[&str],
) {
    let origin = Path::new("/models/teacher/transformer/config.json");
    let mut v: Value = serde_json::from_str(text).unwrap();
    edit(v.as_object_mut().unwrap());
    let err = parse(&v, origin).expect_err("config should be rejected").to_string();
    println!("{err}");
    assert!(err.contains(&origin.display().to_string()), "error does not name the file: {err}");
    for n in needles {
        assert!(err.contains(n), "error does not mention {n}: {err}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn invalid_configs_name_the_file_and_field() {
    let sd3 = mmdit::Config::from_json;
    let fl = flux::Config::from_json;
    // A field this engine does not implement is never silently ignored.
    expect_error(
        sd3,
        SD35_MEDIUM_CONFIG,
        |o| {
            o.insert("use_flash_attention".into(), json!(true));
        },
        &["unknown field", "use_flash_attention"],
    );
    expect_error(
        fl,
        FLUX_DEV_CONFIG,
        |o| {
            o.insert("mlp_ratio".into(), json!(4.0));
        },
        &["unknown field", "mlp_ratio"],
    );
    expect_error(
        sd3,
        SD35_MEDIUM_CONFIG,
        |o| {
            o.insert("qk_norm".into(), json!("layer_norm"));
        },
        &["qk_norm", "layer_norm"],
    );
    expect_error(
        sd3,
        SD35_MEDIUM_CONFIG,
        |o| {
            o.insert("_class_name".into(), json!("UNet2DConditionModel"));
        },
        &["_class_name", "UNet2DConditionModel", "SD3Transformer2DModel"],
    );
    expect_error(
        fl,
        FLUX_DEV_CONFIG,
        |o| {
            o.insert("_class_name".into(), json!("SD3Transformer2DModel"));
        },
        &["_class_name", "SD3Transformer2DModel", "FluxTransformer2DModel"],
    );
    expect_error(
        fl,
        FLUX_DEV_CONFIG,
        |o| {
            o.insert("axes_dims_rope".into(), json!([16, 56, 48]));
        },
        &["axes_dims_rope", "attention_head_dim", "120", "128"],
    );
    // A value of the wrong type names its field too.
    expect_error(
        sd3,
        SD35_MEDIUM_CONFIG,
        |o| {
            o.insert("num_layers".into(), json!("24"));
        },
        &["num_layers"],
    );
}

//! The distillation configuration: every hyperparameter of SENSEFLOW.md, read from a
//! TOML preset (presets/*.toml) and overridable key by key from the command line
//! (`--set key=value`, plus named switches). The effective config is saved with the run.

use super::anchors::AdvWeight;
use super::augment::AugmentPolicy;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A guidance value that is fixed or drawn uniformly per iteration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub lo: f32,
    pub hi: f32,
}

impl Range {
    pub fn fixed(v: f32) -> Self {
        Range { lo: v, hi: v }
    }
    pub fn draw(&self, u: f32) -> f32 {
        self.lo + (self.hi - self.lo) * u
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Which teacher family this preset is for: "demo", "sd35-large", "sd35-medium", "flux-dev".
    pub preset: String,
    pub iterations: u64,
    pub batch: usize,
    /// TTUR ratio f: the generator updates every f-th iteration.
    pub ttur: u64,
    pub lr_generator: f64,
    pub lr_fake: f64,
    pub lr_disc: f64,
    pub warmup: u64,
    pub grad_clip: f32,
    /// Anchors on the 1000-step grid, descending (SD3.5: [999, 749, 499, 249]).
    pub anchors: Vec<usize>,
    /// SD3 time shift s of the teacher's schedule (ignored for FLUX, which uses μ).
    pub shift: f64,
    pub ida: bool,
    pub lambda_ida: f32,
    pub isg: bool,
    pub lambda_isg: f32,
    /// ISG's margin on the 1000-step grid (published 50 for SD3.5, 20 for FLUX/SDXL).
    pub isg_margin: usize,
    pub isg_huber_c: f32,
    pub gan: bool,
    pub lambda_gan: f32,
    pub adv_weight: AdvWeight,
    pub backsim: bool,
    pub backsim_prob: f32,
    /// Teacher guidance for the DMD real score (CFG weight, or FLUX's embedded value).
    pub dmd_guidance: Range,
    /// Teacher guidance for ISG's Euler step.
    pub isg_guidance: Range,
    /// DMD's σ draw: "uniform" in [dmd_sigma_lo, dmd_sigma_hi] (then shifted like the
    /// teacher's schedule, as the published code indexes the shifted table) or "logit_normal".
    pub dmd_sigma: String,
    pub dmd_sigma_lo: f32,
    pub dmd_sigma_hi: f32,
    /// The fake score's σ: logit-normal(mean, std).
    pub fake_logit_mean: f32,
    pub fake_logit_std: f32,
    pub augment: AugmentPolicy,
    /// Discriminator head width.
    pub disc_channels: usize,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    /// Consecutive non-finite losses that stop the run.
    pub max_bad_steps: u64,
    /// Samples per prompt set in the final evaluation (demo).
    pub eval_samples: usize,
}

impl DistillConfig {
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let cfg: DistillConfig =
            toml::from_str(text).map_err(|e| Error::format(origin, format!("preset: {}", one_line(&e.to_string()))))?;
        cfg.validate().map_err(|m| Error::format(origin, m))?;
        Ok(cfg)
    }

    /// A shipped preset by name (presets/NAME.toml, compiled in).
    pub fn preset(name: &str) -> Result<Self> {
        let text = match name {
            "demo" => include_str!("../../presets/demo.toml"),
            "sd35-large" => include_str!("../../presets/sd35-large.toml"),
            "sd35-medium" => include_str!("../../presets/sd35-medium.toml"),
            "flux-dev" => include_str!("../../presets/flux-dev.toml"),
            _ => {
                return Err(Error::Msg(format!(
                    "unknown preset '{name}' (known: demo, sd35-large, sd35-medium, flux-dev; or pass a .toml path)"
                )))
            }
        };
        Self::from_toml(text, Path::new(&format!("presets/{name}.toml")))
    }

    /// Applies `key=value` overrides; values are TOML literals (`0.5`, `true`,
    /// `[999, 499]`, `"published"`, `{ lo = 2.0, hi = 8.0 }`).
    pub fn apply_overrides(&mut self, sets: &[String]) -> Result<()> {
        let mut table = toml::Table::try_from(&*self).map_err(|e| Error::Msg(format!("config: {e}")))?;
        for s in sets {
            let (k, v) = s.split_once('=').ok_or_else(|| Error::Msg(format!("--set '{s}': expected key=value")))?;
            let k = k.trim();
            if !table.contains_key(k) {
                return Err(Error::Msg(format!("--set '{s}': unknown key '{k}'")));
            }
            let doc = format!("v = {}", v.trim());
            let value = match doc.parse::<toml::Table>() {
                Ok(mut t) => t.remove("v").expect("parsed key"),
                // Bare words are strings: --set adv_weight=one
                Err(_) => toml::Value::String(v.trim().to_string()),
            };
            table.insert(k.to_string(), value);
        }
        let cfg: DistillConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Msg(format!("--set: {}", one_line(&e.to_string()))))?;
        cfg.validate().map_err(Error::Msg)?;
        *self = cfg;
        Ok(())
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} must be in [0, 1]"))
            }
        };
        unit("lambda_ida", self.lambda_ida)?;
        unit("backsim_prob", self.backsim_prob)?;
        if self.anchors.is_empty() || self.anchors.windows(2).any(|w| w[1] >= w[0]) || self.anchors[0] > 999 {
            return Err(format!("anchors {:?} must be strictly decreasing indices in 0..=999", self.anchors));
        }
        if self.batch == 0 || self.ttur == 0 || self.iterations == 0 {
            return Err("batch, ttur and iterations must be positive".into());
        }
        if !matches!(self.dmd_sigma.as_str(), "uniform" | "logit_normal") {
            return Err(format!("dmd_sigma '{}' must be \"uniform\" or \"logit_normal\"", self.dmd_sigma));
        }
        if !(self.dmd_sigma_lo > 0.0 && self.dmd_sigma_lo < self.dmd_sigma_hi && self.dmd_sigma_hi < 1.0) {
            return Err(format!(
                "DMD σ range [{}, {}] must satisfy 0 < lo < hi < 1",
                self.dmd_sigma_lo, self.dmd_sigma_hi
            ));
        }
        if self.isg_huber_c <= 0.0 {
            return Err("isg_huber_c must be > 0".into());
        }
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

//! AdamW with fp32 state: torch.optim.AdamW semantics (decoupled weight decay, bias
//! correction, eps added to the corrected sqrt(v)), no amsgrad.
//!
//! Invariants:
//! - Every parameter has its state from construction on: moments m, v (f32, zero), a
//!   step count, and, when the parameter is stored in bf16/f16, an f32 master copy.
//!   The update is computed on the master and then rounded into the parameter, so
//!   updates smaller than half a bf16 ulp accumulate instead of vanishing.
//! - The optimizer holds the very tensors the model computes with (the tracked leaves
//!   made by `Tensor::var`): gradients are looked up by tensor id, and updates are
//!   written into the shared storage in place (`Tensor::assign_f32`).
//! - A parameter without a gradient is skipped entirely (its step count does not
//!   advance), as torch skips parameters whose `.grad` is None.
//! - State is exported and restored as named tensors `<param>.exp_avg`,
//!   `<param>.exp_avg_sq`, `<param>.step` (0-d f32, exact below 2²⁴ steps) and, for
//!   low-precision parameters, `<param>.master`.

use crate::autograd::Grads;
use crate::backend::cpu::optim::{self as k, AdamWStep};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// Hyperparameters; `Default` is torch's (lr 1e-3, betas (0.9, 0.999), eps 1e-8,
/// weight_decay 1e-2). f64 like torch's Python floats: the per-step scalars
/// (1 − β, bias corrections, lr / (1 − β₁ᵗ)) are formed in f64 and rounded once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let ok = self.lr >= 0.0
            && self.eps >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::op(
                "adamw",
                format!("invalid hyperparameters {self:?} (need lr, eps, weight_decay ≥ 0 and betas in [0, 1))"),
            ))
        }
    }
}

/// Named parameters sharing one weight-decay setting (torch's param groups).
pub struct ParamGroup {
    /// (name, tracked parameter); names key the saved state and must be unique.
    pub params: Vec<(String, Tensor)>,
    /// Overrides `AdamWConfig::weight_decay` for this group (e.g. 0 for norms and biases).
    pub weight_decay: Option<f64>,
}

/// Optimizer state of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState {
    /// First moment m (torch `exp_avg`).
    pub exp_avg: Vec<f32>,
    /// Second moment v (torch `exp_avg_sq`).
    pub exp_avg_sq: Vec<f32>,
    /// Updates applied so far (torch `step`).
    pub step: u64,
    /// f32 master weights of a bf16/f16 parameter; None for f32 parameters.
    pub master: Option<Vec<f32>>,
}

struct Slot {
    name: String,
    param: Tensor,
    weight_decay: f64,
    state: AdamWState,
}

pub struct AdamW {
    /// Hyperparameters; `lr` is usually set per step from a schedule (`set_lr`).
    pub cfg: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    /// One group with the config's weight decay; parameters are named by position
    /// ("0", "1", ...). Use [`AdamW::with_groups`] for stable checkpoint names.
    pub fn new(params: Vec<Tensor>, cfg: AdamWConfig) -> Result<Self> {
        let params = params.into_iter().enumerate().map(|(i, p)| (i.to_string(), p)).collect();
        Self::with_groups(vec![ParamGroup { params, weight_decay: None }], cfg)
    }

    pub fn with_groups(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let mut names = HashSet::new();
        let mut slots = Vec::new();
        for group in groups {
            let weight_decay = group.weight_decay.unwrap_or(cfg.weight_decay);
            if weight_decay < 0.0 {
                return Err(Error::op("adamw", format!("negative weight decay {weight_decay}")));
            }
            for (name, param) in group.params {
                if !names.insert(name.clone()) {
                    return Err(Error::op("adamw", format!("parameter name '{name}' appears twice")));
                }
                if !param.is_contiguous() {
                    return Err(Error::op(
                        "adamw",
                        format!("parameter '{name}' {:?} is not contiguous", param.shape()),
                    ));
                }
                let n = param.numel();
                let master = match param.dtype() {
                    DType::F32 => None,
                    DType::BF16 | DType::F16 => Some(param.to_vec_f32()?),
                };
                let state = AdamWState { exp_avg: vec![0.0; n], exp_avg_sq: vec![0.0; n], step: 0, master };
                slots.push(Slot { name, param, weight_decay, state });
            }
        }
        Ok(AdamW { cfg, slots })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// The parameters in order, with their names.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.param))
    }

    pub fn state(&self, name: &str) -> Option<&AdamWState> {
        self.slots.iter().find(|s| s.name == name).map(|s| &s.state)
    }

    /// One AdamW update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        let cfg = self.cfg;
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.param) else {
                continue;
            };
            if g.shape() != slot.param.shape() {
                return Err(Error::op(
                    "adamw",
                    format!("gradient {:?} for parameter '{}' {:?}", g.shape(), slot.name, slot.param.shape()),
                ));
            }
            let st = &mut slot.state;
            st.step += 1;
            let t = st.step as f64;
            let s = AdamWStep {
                decay: (1.0 - cfg.lr * slot.weight_decay) as f32,
                one_minus_beta1: (1.0 - cfg.beta1) as f32,
                beta2: cfg.beta2 as f32,
                one_minus_beta2: (1.0 - cfg.beta2) as f32,
                step_size: (cfg.lr / (1.0 - cfg.beta1.powf(t))) as f32,
                bias_correction2_sqrt: (1.0 - cfg.beta2.powf(t)).sqrt() as f32,
                eps: cfg.eps as f32,
            };
            let gv = g.cpu_f32()?;
            match &mut st.master {
                Some(master) => {
                    k::adamw_update(master, &mut st.exp_avg, &mut st.exp_avg_sq, &gv, s);
                    slot.param.assign_f32(master)?;
                }
                None => {
                    let mut p = slot.param.to_vec_f32()?;
                    k::adamw_update(&mut p, &mut st.exp_avg, &mut st.exp_avg_sq, &gv, s);
                    slot.param.assign_f32(&p)?;
                }
            }
        }
        Ok(())
    }

    /// The state as named f32 tensors (copies), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 4);
        for s in &self.slots {
            let shape = s.param.shape();
            let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), shape).expect("state matches its parameter's shape");
            out.push((format!("{}.exp_avg", s.name), t(&s.state.exp_avg)));
            out.push((format!("{}.exp_avg_sq", s.name), t(&s.state.exp_avg_sq)));
            out.push((format!("{}.step", s.name), Tensor::scalar(s.state.step as f32)));
            if let Some(m) = &s.state.master {
                out.push((format!("{}.master", s.name), t(m)));
            }
        }
        out
    }

    /// Restores the state written by [`AdamW::state_tensors`]. Every key of every
    /// parameter must be present with its parameter's shape; extra keys are ignored.
    /// The parameters themselves are not touched (they load with the model weights).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        // Check everything first so a failed load leaves the state unchanged.
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let get = |suffix: &str, shape: &[usize]| -> Result<Vec<f32>> {
                let key = format!("{}.{suffix}", s.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| Error::op("adamw load_state", format!("missing tensor '{key}'")))?;
                if t.shape() != shape {
                    return Err(Error::op(
                        "adamw load_state",
                        format!("tensor '{key}' has shape {:?}, expected {shape:?}", t.shape()),
                    ));
                }
                t.to_vec_f32()
            };
            let shape = s.param.shape();
            let step = get("step", &[])?[0];
            if !(step >= 0.0 && step.fract() == 0.0 && step < 16_777_216.0) {
                return Err(Error::op("adamw load_state", format!("'{}.step' = {step} is not a step count", s.name)));
            }
            let master = s.state.master.as_ref().map(|_| get("master", shape)).transpose()?;
            loaded.push(AdamWState {
                exp_avg: get("exp_avg", shape)?,
                exp_avg_sq: get("exp_avg_sq", shape)?,
                step: step as u64,
                master,
            });
        }
        for (s, st) in self.slots.iter_mut().zip(loaded) {
            s.state = st;
        }
        Ok(())
    }
}

//! The networks a SenseFlow run drives, behind one interface: a velocity model
//! v(x, σ, conditioning) in the SENSEFLOW.md convention, with the teacher's guidance
//! applied here (SD3: classifier-free guidance against the empty-prompt embedding in
//! one doubled batch; FLUX: the embedded guidance scalar).

use crate::diffusion::cfg_combine;
use crate::error::{Error, Result};
use crate::models::flux::FluxInputs;
use crate::models::Transformer;
use crate::ops;
use crate::tensor::Tensor;

/// Text conditioning of a batch, in the teacher's input format.
#[derive(Clone, Debug)]
pub struct Cond {
    /// [B, L, joint_attention_dim]
    pub states: Tensor,
    /// [B, pooled_projection_dim]
    pub pooled: Tensor,
}

impl Cond {
    pub fn batch(&self) -> usize {
        self.states.shape()[0]
    }

    pub fn detach(&self) -> Cond {
        Cond { states: self.states.detach(), pooled: self.pooled.detach() }
    }

    /// [self; other] along the batch.
    pub fn concat(&self, other: &Cond) -> Result<Cond> {
        Ok(Cond {
            states: ops::concat(&[&self.states, &other.states], 0)?,
            pooled: ops::concat(&[&self.pooled, &other.pooled], 0)?,
        })
    }

    /// Rows `start..start+len`.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Cond> {
        Ok(Cond { states: self.states.narrow(0, start, len)?, pooled: self.pooled.narrow(0, start, len)? })
    }
}

/// How the teacher is guided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Guidance {
    None,
    /// SD3-style CFG with weight w (w = 1 is the plain conditional model).
    Cfg(f32),
    /// FLUX.1-dev's embedded guidance scalar.
    Embedded(f32),
}

/// v(x, σ) of one network. `sigma` is [B]. SD3 takes timestep 1000·σ; FLUX takes σ.
pub fn velocity(model: &Transformer, x: &Tensor, sigma: &Tensor, cond: &Cond, guidance: Option<f32>) -> Result<Tensor> {
    match model {
        Transformer::Mmdit(m) => m.forward(x, &cond.states, &cond.pooled, &sigma.scale(1000.0)?),
        Transformer::Flux(m) => {
            // Packed latents [B, N, C] on a square-or-given grid: the caller passes ids
            // through FluxGrid; here the grid is inferred as the most square factorization.
            let n = x.shape()[1];
            let (gh, gw) = flux_grid(n);
            let axes = m.cfg.axes_dims_rope.len();
            let mut ids = vec![0f32; n * axes];
            for (i, row) in ids.chunks_mut(axes).enumerate() {
                row[1] = (i / gw) as f32;
                row[2] = (i % gw) as f32;
            }
            debug_assert_eq!(gh * gw, n);
            let img_ids = Tensor::from_vec(ids, &[n, axes])?;
            let txt_ids = Tensor::zeros(&[cond.states.shape()[1], axes]);
            let g = match (m.cfg.guidance_embeds, guidance) {
                (true, Some(g)) => Some(Tensor::full(g, &[x.shape()[0]])),
                (true, None) => {
                    return Err(Error::Msg("this FLUX model embeds guidance: a guidance value is required".into()))
                }
                (false, _) => None,
            };
            m.forward(&FluxInputs {
                hidden_states: x,
                encoder_hidden_states: &cond.states,
                pooled_projections: &cond.pooled,
                timestep: sigma,
                img_ids: &img_ids,
                txt_ids: &txt_ids,
                guidance: g.as_ref(),
            })
        }
    }
}

/// The most square (rows, cols) factorization of n tokens with rows ≤ cols.
fn flux_grid(n: usize) -> (usize, usize) {
    let mut r = (n as f64).sqrt() as usize;
    while r > 1 && n % r != 0 {
        r -= 1;
    }
    (r.max(1), n / r.max(1))
}

/// The guided teacher velocity: CFG runs conditional and unconditional rows as one
/// doubled batch; embedded guidance passes the scalar; `None` is the plain model.
pub fn guided_velocity(
    model: &Transformer,
    x: &Tensor,
    sigma: &Tensor,
    cond: &Cond,
    uncond: &Cond,
    g: Guidance,
) -> Result<Tensor> {
    match g {
        Guidance::None => velocity(model, x, sigma, cond, None),
        Guidance::Embedded(w) => velocity(model, x, sigma, cond, Some(w)),
        Guidance::Cfg(w) if w == 1.0 => velocity(model, x, sigma, cond, None),
        Guidance::Cfg(w) => {
            let b = x.shape()[0];
            let both = cond.concat(uncond)?;
            let xx = ops::concat(&[x, x], 0)?;
            let ss = ops::concat(&[sigma, sigma], 0)?;
            let v = velocity(model, &xx, &ss, &both, None)?;
            cfg_combine(&v.narrow(0, b, b)?, &v.narrow(0, 0, b)?, w)
        }
    }
}

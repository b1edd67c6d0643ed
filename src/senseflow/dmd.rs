//! Distribution matching loss, DMD2's normalized form in x0 space.
//!
//! With x the generator's sample, x_σ its re-noised copy, and x0_real / x0_fake the
//! teacher's (with guidance) and fake score's x0 predictions at x_σ:
//!   p_real = x − x0_real,  p_fake = x − x0_fake,
//!   grad   = nan_to_num((p_real − p_fake) / mean_{C,H,W}|p_real|),
//!   L_DMD  = ½·mean((x − sg(x − grad))²),
//! so dL/dx = grad / numel(x): the normalized score difference.

use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;

/// L_DMD for generator samples `x` (tracked) given the two x0 predictions (treated as
/// constants). Returns the loss and the mean |grad| (for logging).
pub fn dmd_loss(x: &Tensor, x0_real: &Tensor, x0_fake: &Tensor) -> Result<(Tensor, f32)> {
    let grad = {
        let _g = crate::autograd::no_grad();
        let xd = x.detach();
        let p_real = xd.sub(x0_real)?;
        let p_fake = xd.sub(x0_fake)?;
        let dims: Vec<isize> = (1..x.dims() as isize).collect();
        let norm = p_real.abs()?.mean(&dims, true)?;
        p_real.sub(&p_fake)?.div(&norm)?.nan_to_num()?
    };
    let mean_abs = grad.abs()?.mean_all()?.to_scalar()?;
    let target = {
        let _g = crate::autograd::no_grad();
        x.detach().sub(&grad)?
    };
    Ok((ops::mse_loss(x, &target)?.scale(0.5)?, mean_abs))
}

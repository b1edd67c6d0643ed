//! Datasets and image files: the built-in captioned-shapes world ([`shapes`]), folders of
//! real captioned images ([`image_folder`]), the demo text encoder's word-level
//! [`tokenizer`], and PNG grids of samples ([`png`]).
//!
//! Every image tensor here is RGB, channel-first, f32 in [−1, 1]: `[3, H, W]` for one
//! image, `[B, 3, H, W]` for a batch; captions are plain strings, "" being the empty
//! (unconditional) prompt of classifier-free guidance.

pub mod image_folder;
pub mod png;
pub mod shapes;
pub mod tokenizer;

pub use image_folder::ImageFolder;
pub use png::{write_png_grid, GridLayout};
pub use shapes::{ShapeLabel, ShapesConfig, ShapesDataset};
pub use tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::rng::Philox;

/// Caption dropout for classifier-free guidance training: each caption independently
/// becomes "" with probability `p`. Draws one uniform per caption from `rng` (so the
/// outcome is fixed by the stream position, whatever was dropped before).
pub fn drop_captions(captions: &mut [String], p: f32, rng: &mut Philox) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::op("drop_captions", format!("probability {p} is outside [0, 1]")));
    }
    let u = rng.uniform_vec(captions.len());
    for (caption, u) in captions.iter_mut().zip(u) {
        if u < p {
            caption.clear();
        }
    }
    Ok(())
}

//! Writing images: a batch `[B, 3, H, W]` (or one image `[3, H, W]`) in [−1, 1] becomes a
//! PNG grid, row-major, `cols` tiles per row, separated and framed by `pad` gray pixels.
//!
//! Conventions:
//! - Value `v` maps to the byte `round((clamp(v, −1, 1) + 1) · 127.5)`, so −1 → 0, 1 → 255,
//!   and reading the PNG back gives every value within 1/255 of the clamped input (in
//!   [0, 1] units). NaN maps to 0.
//! - `zoom` repeats each pixel `zoom × zoom` times (nearest neighbour), for looking at
//!   32×32 samples; the padding is not zoomed.
//! - Files are written atomically (`io::atomic_write`): a reader never sees half a PNG.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::ImageEncoder;
use std::path::Path;

/// Gray of the padding: visible against both the dark backgrounds and bright shapes.
const PAD_GRAY: u8 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridLayout {
    /// Tiles per row (the row count follows from the batch size).
    pub cols: usize,
    /// Pixels between tiles and around the grid.
    pub pad: usize,
    /// Pixel repeat factor per tile (1: original size).
    pub zoom: usize,
}

impl GridLayout {
    /// A near-square grid for `n` images: `ceil(sqrt(n))` columns, 2 px padding, no zoom.
    pub fn square(n: usize) -> Self {
        let mut cols = 1;
        while cols * cols < n {
            cols += 1;
        }
        Self { cols, pad: 2, zoom: 1 }
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// The byte of a value in [−1, 1] (see the module doc).
pub fn to_u8(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Lays `images` (`[B, 3, H, W]` or `[3, H, W]`, any dtype, CPU) out as a grid.
pub fn grid_rgb8(images: &Tensor, layout: GridLayout) -> Result<Rgb8> {
    let (b, h, w) = match images.shape() {
        &[b, 3, h, w] => (b, h, w),
        &[3, h, w] => (1, h, w),
        other => {
            return Err(Error::op("png_grid", format!("expected images [B, 3, H, W] or [3, H, W], got {other:?}")))
        }
    };
    if b == 0 || h == 0 || w == 0 || layout.cols == 0 || layout.zoom == 0 {
        return Err(Error::op("png_grid", format!("nothing to draw: images {:?}, layout {layout:?}", images.shape())));
    }
    let values = images.to_vec_f32()?;
    let GridLayout { cols, pad, zoom } = layout;
    let cols = cols.min(b);
    let rows = b.div_ceil(cols);
    let (tw, th) = (w * zoom, h * zoom);
    let width = cols * tw + (cols + 1) * pad;
    let height = rows * th + (rows + 1) * pad;
    let mut data = vec![PAD_GRAY; width * height * 3];
    let plane = h * w;
    for (k, img) in values.chunks_exact(3 * plane).enumerate() {
        let (ox, oy) = (pad + (k % cols) * (tw + pad), pad + (k / cols) * (th + pad));
        for y in 0..th {
            for x in 0..tw {
                let src = (y / zoom) * w + x / zoom;
                let dst = ((oy + y) * width + ox + x) * 3;
                for c in 0..3 {
                    data[dst + c] = to_u8(img[c * plane + src]);
                }
            }
        }
    }
    Ok(Rgb8 { width, height, data })
}

/// Writes an RGB image as a PNG file, atomically.
pub fn write_png(path: impl AsRef<Path>, image: &Rgb8) -> Result<()> {
    let path = path.as_ref();
    let (w, h) = (u32::try_from(image.width), u32::try_from(image.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(Error::format(path, "image too large for PNG (side over 2^32 pixels)"));
    };
    crate::io::atomic_write(path, |out| {
        image::codecs::png::PngEncoder::new(out)
            .write_image(&image.data, w, h, image::ExtendedColorType::Rgb8)
            .map_err(|e| Error::format(path, format!("cannot encode PNG: {e}")))
    })
}

/// Writes `images` (`[B, 3, H, W]` or `[3, H, W]` in [−1, 1]) as a PNG grid.
pub fn write_png_grid(path: impl AsRef<Path>, images: &Tensor, layout: GridLayout) -> Result<()> {
    write_png(path, &grid_rgb8(images, layout)?)
}

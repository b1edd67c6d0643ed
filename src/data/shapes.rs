//! The captioned-shapes dataset: the built-in demo world. Each sample is one shape
//! (circle, square, triangle, cross, star, diamond) of one color, at one of 9 positions
//! of a 3×3 grid, small or large, on a dark textured background, with a caption such as
//! "a small red triangle at the top left".
//!
//! Invariants:
//! - Sample `i` is a pure function of `(seed, i, config)`: its random numbers come from a
//!   Philox stream keyed by `(seed, i)` alone (see [`sample_key`]), so it never depends on
//!   the batch it is in, on the order of rendering or on the thread count. Rendering uses
//!   `libm` for sin/cos, so images are bit-identical across platforms as well.
//! - Images are `[3, H, W]` f32 in [−1, 1] (RGB, channel-first; 0 in [0, 1] is −1).
//! - Shape colors are bright (every palette color has a channel ≥ 0.9, ≥ 0.79 after the
//!   brightness factor in [0.88, 1]); backgrounds are dark (channels ≤ 0.22 before the
//!   texture and noise), so a shape pixel is never confusable with a background pixel.
//! - A caption is `a {size} {color} {shape} {position}`; [`parse_caption`] inverts
//!   [`caption_of`] exactly, and the word lists below are the whole vocabulary.
//! - Geometry is in pixel units of the continuous image plane (pixel `(x, y)` covers
//!   `[x, x+1) × [y, y+1)`, y down). Coverage is supersampled on an `s × s` grid of
//!   sample points per pixel, which gives the shapes antialiased edges.

use crate::error::{Error, Result};
use crate::rng::{philox4x32_10, Philox};
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::f32::consts::PI;

use super::tokenizer::{split_words, BOS, EOS, PAD};

/// An enum of caption values: `ALL` in index order, `index`, `from_index`, and the
/// caption text of each value.
macro_rules! caption_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn index(self) -> usize {
                self as usize
            }

            pub fn from_index(i: usize) -> Option<Self> {
                Self::ALL.get(i).copied()
            }

            /// The caption text of this value.
            pub fn text(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            fn from_text(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.text() == text)
            }
        }
    };
}

caption_enum!(
    /// Chosen to stay distinct when small (≈6 px wide at 32×32): no two share an outline.
    Shape {
        Circle => "circle",
        Square => "square",
        Triangle => "triangle",
        Cross => "cross",
        Star => "star",
        Diamond => "diamond",
    }
);

caption_enum!(
    Color {
        Red => "red",
        Orange => "orange",
        Yellow => "yellow",
        Green => "green",
        Blue => "blue",
        Purple => "purple",
        White => "white",
    }
);

caption_enum!(
    /// A cell of the 3×3 grid, row-major from the top left.
    Position {
        TopLeft => "at the top left",
        Top => "at the top",
        TopRight => "at the top right",
        Left => "on the left",
        Center => "in the center",
        Right => "on the right",
        BottomLeft => "at the bottom left",
        Bottom => "at the bottom",
        BottomRight => "at the bottom right",
    }
);

caption_enum!(
    Size {
        Small => "small",
        Large => "large",
    }
);

impl Color {
    /// The nominal RGB in [0, 1] (rendered with a brightness factor in [0.88, 1]).
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Color::Red => [0.92, 0.12, 0.10],
            Color::Orange => [1.00, 0.55, 0.05],
            Color::Yellow => [0.97, 0.92, 0.15],
            Color::Green => [0.15, 0.90, 0.25],
            Color::Blue => [0.18, 0.38, 1.00],
            Color::Purple => [0.65, 0.22, 0.92],
            Color::White => [0.96, 0.96, 0.96],
        }
    }

    /// The palette color nearest to `rgb` (Euclidean, in [0, 1] RGB).
    pub fn nearest(rgb: [f32; 3]) -> Color {
        let dist = |c: Color| {
            let p = c.rgb();
            (0..3).map(|k| (p[k] - rgb[k]).powi(2)).sum::<f32>()
        };
        *Color::ALL.iter().min_by(|a, b| dist(**a).total_cmp(&dist(**b))).expect("palette is not empty")
    }
}

impl Position {
    /// `(row, col)` in the 3×3 grid.
    pub fn cell(self) -> (usize, usize) {
        (self.index() / 3, self.index() % 3)
    }
}

/// What a sample shows; the evaluation ground truth of its caption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ShapeLabel {
    pub shape: Shape,
    pub color: Color,
    pub position: Position,
    pub size: Size,
}

impl ShapeLabel {
    /// Number of distinct labels (and captions).
    pub const COUNT: usize = 6 * 7 * 9 * 2;

    /// Flat index in `0..COUNT`, shape-major: `((shape·7 + color)·9 + position)·2 + size`.
    pub fn index(&self) -> usize {
        ((self.shape.index() * Color::ALL.len() + self.color.index()) * Position::ALL.len() + self.position.index())
            * Size::ALL.len()
            + self.size.index()
    }

    pub fn from_index(i: usize) -> Option<Self> {
        if i >= Self::COUNT {
            return None;
        }
        let (i, size) = (i / Size::ALL.len(), i % Size::ALL.len());
        let (i, position) = (i / Position::ALL.len(), i % Position::ALL.len());
        let (shape, color) = (i / Color::ALL.len(), i % Color::ALL.len());
        Some(Self {
            shape: Shape::ALL[shape],
            color: Color::ALL[color],
            position: Position::ALL[position],
            size: Size::ALL[size],
        })
    }
}

/// `a {size} {color} {shape} {position}`, e.g. "a small red triangle at the top left".
pub fn caption_of(label: &ShapeLabel) -> String {
    format!("a {} {} {} {}", label.size.text(), label.color.text(), label.shape.text(), label.position.text())
}

/// The label of a caption in the form [`caption_of`] writes. Case, punctuation and
/// spacing are free ("A small red triangle, at the top-left." parses); any other wording
/// gives `None`, as does the empty prompt.
pub fn parse_caption(caption: &str) -> Option<ShapeLabel> {
    let words = split_words(caption);
    if words.len() < 5 || words[0] != "a" {
        return None;
    }
    Some(ShapeLabel {
        size: Size::from_text(&words[1])?,
        color: Color::from_text(&words[2])?,
        shape: Shape::from_text(&words[3])?,
        position: Position::from_text(&words[4..].join(" "))?,
    })
}

/// Every label, in flat-index order ([`ShapeLabel::index`]).
pub fn all_labels() -> Vec<ShapeLabel> {
    (0..ShapeLabel::COUNT).map(|i| ShapeLabel::from_index(i).expect("index below COUNT")).collect()
}

/// The evaluation prompt set: the caption of every label, in [`all_labels`] order.
pub fn all_prompts() -> Vec<String> {
    all_labels().iter().map(caption_of).collect()
}

/// `<pad> <bos> <eos>` and then every word a caption can contain, in order of first
/// appearance in the caption template (this order fixes the token ids).
pub fn vocabulary() -> Vec<String> {
    let mut vocab: Vec<String> = [PAD, BOS, EOS, "a"].map(str::to_string).to_vec();
    let texts = Size::ALL
        .iter()
        .map(|v| v.text())
        .chain(Color::ALL.iter().map(|v| v.text()))
        .chain(Shape::ALL.iter().map(|v| v.text()))
        .chain(Position::ALL.iter().map(|v| v.text()));
    for text in texts {
        for w in split_words(text) {
            if !vocab.contains(&w) {
                vocab.push(w);
            }
        }
    }
    vocab
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapesConfig {
    /// Image height and width in pixels (16 to 4096).
    pub size: usize,
    /// Coverage sample points per pixel side (1 to 16; 4 gives 16 levels of antialiasing).
    pub supersample: usize,
}

impl Default for ShapesConfig {
    fn default() -> Self {
        Self { size: 32, supersample: 4 }
    }
}

/// Random numbers drawn per sample, before the noise fields; the order is part of the
/// dataset definition (changing it changes every image).
mod draw {
    pub const SHAPE: usize = 0;
    pub const COLOR: usize = 1;
    pub const POSITION: usize = 2;
    pub const SIZE: usize = 3;
    pub const SCALE: usize = 4;
    pub const SHIFT_X: usize = 5;
    pub const SHIFT_Y: usize = 6;
    pub const ROTATION: usize = 7;
    pub const BRIGHTNESS: usize = 8;
    pub const BG_FROM: usize = 9; // 3 channels
    pub const BG_TO: usize = 12; // 3 channels
    pub const BG_ANGLE: usize = 15;
    pub const COUNT: usize = 16;
}

/// Background: a dark linear gradient plus a smooth texture (a `TEXTURE`×`TEXTURE` grid of
/// normals, bilinearly interpolated) plus per-pixel noise over the whole image.
const TEXTURE: usize = 4;
const TEXTURE_STD: f32 = 0.035;
const PIXEL_NOISE_STD: f32 = 0.025;
const BG_MIN: f32 = 0.03;
const BG_MAX: f32 = 0.22;
/// Shape radius as a fraction of the image size, by size class: `lo + span·u`.
const LARGE_RADIUS: (f32, f32) = (0.15, 0.025);
const SMALL_RADIUS: (f32, f32) = (0.105, 0.015);
/// Cell centers as fractions of the image size, pulled inward from 1/6 and 5/6 so large
/// shapes at the border stay whole.
const CELL_CENTERS: [f32; 3] = [0.2, 0.5, 0.8];
const SHIFT: f32 = 0.025;
const MAX_ROTATION_DEG: f32 = 12.0;
/// The circle's radius in unit coordinates (the polygons are in [`unit_polygon`]).
const CIRCLE_RADIUS: f32 = 0.95;

/// The Philox key of sample `index` under `seed`: one Philox block of `(index, tag)` under
/// the seed's key. Keying by index (rather than giving each sample a range of counters)
/// leaves no limit on indices or on the numbers a sample may draw, and the tag keeps the
/// dataset's streams apart from any other use of the same seed.
pub fn sample_key(seed: u64, index: u64) -> u64 {
    const TAG: u32 = 0x5348_4150; // "SHAP"
    let b = philox4x32_10([index as u32, (index >> 32) as u32, TAG, 0], [seed as u32, (seed >> 32) as u32]);
    u64::from(b[0]) | (u64::from(b[1]) << 32)
}

/// One rendered sample.
struct Render {
    image: Vec<f32>, // [3, H, W] in [-1, 1]
    mask: Vec<f32>,  // [H, W] shape coverage in [0, 1]
    label: ShapeLabel,
}

/// An outline in pixel coordinates.
enum Outline {
    Circle { cx: f32, cy: f32, r: f32 },
    Polygon(Vec<[f32; 2]>),
}

impl Outline {
    fn contains(&self, x: f32, y: f32) -> bool {
        match self {
            Outline::Circle { cx, cy, r } => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Outline::Polygon(v) => {
                // Crossing-number test (works for the concave star and cross).
                let mut inside = false;
                let mut j = v.len() - 1;
                for i in 0..v.len() {
                    let ([xi, yi], [xj, yj]) = (v[i], v[j]);
                    if (yi > y) != (yj > y) && x < xi + (y - yi) * (xj - xi) / (yj - yi) {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }
}

/// The outline of `shape` in unit coordinates (x right, y up), centered on its bounding
/// box. Sizes are chosen so the shapes look about equally big: the thin ones (star,
/// diamond, triangle) reach further out than the full ones.
fn unit_polygon(shape: Shape) -> Vec<[f32; 2]> {
    match shape {
        Shape::Circle => unreachable!("a circle is not a polygon"),
        Shape::Square => vec![[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]],
        Shape::Triangle => {
            // Equilateral, point up, circumradius 1.25, its bounding box centered.
            let (r, s) = (1.25_f32, 3f32.sqrt() / 2.0);
            let dy = -r / 4.0;
            vec![[0.0, r + dy], [-r * s, -r / 2.0 + dy], [r * s, -r / 2.0 + dy]]
        }
        // Taller than wide, so it is no rotated square.
        Shape::Diamond => vec![[0.0, 1.15], [0.72, 0.0], [0.0, -1.15], [-0.72, 0.0]],
        Shape::Cross => {
            let (l, t) = (1.0_f32, 0.34_f32);
            vec![
                [t, t],
                [t, l],
                [-t, l],
                [-t, t],
                [-l, t],
                [-l, -t],
                [-t, -t],
                [-t, -l],
                [t, -l],
                [t, -t],
                [l, -t],
                [l, t],
            ]
        }
        Shape::Star => {
            // Five points, point up. The lower points reach down to −outer·cos 36°, so the
            // star moves down by half the difference to center its bounding box.
            let (outer, inner) = (1.2_f32, 0.5_f32);
            let dy = -outer * (1.0 - libm::cosf(PI / 5.0)) / 2.0;
            (0..10)
                .map(|k| {
                    let r = if k % 2 == 0 { outer } else { inner };
                    let a = PI / 2.0 + k as f32 * PI / 5.0;
                    [r * libm::cosf(a), r * libm::sinf(a) + dy]
                })
                .collect()
        }
    }
}

fn pick<T: Copy>(all: &[T], u: f32) -> T {
    all[((u * all.len() as f32) as usize).min(all.len() - 1)]
}

pub struct ShapesDataset {
    cfg: ShapesConfig,
    seed: u64,
}

impl ShapesDataset {
    pub fn new(cfg: ShapesConfig, seed: u64) -> Result<Self> {
        if !(16..=4096).contains(&cfg.size) {
            return Err(Error::op(
                "shapes",
                format!("image size {} is outside 16..=4096 (small shapes need ≥ 3 px)", cfg.size),
            ));
        }
        if !(1..=16).contains(&cfg.supersample) {
            return Err(Error::op("shapes", format!("supersample {} is outside 1..=16", cfg.supersample)));
        }
        Ok(Self { cfg, seed })
    }

    pub fn config(&self) -> &ShapesConfig {
        &self.cfg
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Sample `index`: image `[3, H, W]` in [−1, 1], its caption and its label.
    pub fn sample(&self, index: u64) -> (Tensor, String, ShapeLabel) {
        let r = self.render(index, None);
        (self.image_tensor(r.image), caption_of(&r.label), r.label)
    }

    /// Sample `index` with its drawn label replaced by `label`: the same background, jitter
    /// and noise, another shape. For per-prompt reference images in evaluation.
    pub fn sample_with_label(&self, index: u64, label: ShapeLabel) -> Tensor {
        self.image_tensor(self.render(index, Some(label)).image)
    }

    /// The label of sample `index` (cheap: nothing is rendered).
    pub fn label(&self, index: u64) -> ShapeLabel {
        let u = Philox::new(sample_key(self.seed, index)).uniform_vec(draw::COUNT);
        Self::draw_label(&u)
    }

    /// The shape's antialiased coverage in sample `index`, `[H, W]` in [0, 1].
    pub fn mask(&self, index: u64) -> Tensor {
        let s = self.cfg.size;
        Tensor::from_vec(self.render(index, None).mask, &[s, s]).expect("mask is [H, W]")
    }

    /// The samples at `indices`, rendered in parallel: images `[B, 3, H, W]`, captions,
    /// labels. Equal to stacking [`ShapesDataset::sample`] of each index.
    pub fn batch(&self, indices: &[u64]) -> (Tensor, Vec<String>, Vec<ShapeLabel>) {
        let s = self.cfg.size;
        let renders: Vec<Render> = indices.par_iter().map(|&i| self.render(i, None)).collect();
        let mut images = Vec::with_capacity(indices.len() * 3 * s * s);
        let mut captions = Vec::with_capacity(indices.len());
        let mut labels = Vec::with_capacity(indices.len());
        for r in renders {
            images.extend_from_slice(&r.image);
            captions.push(caption_of(&r.label));
            labels.push(r.label);
        }
        let images = Tensor::from_vec(images, &[indices.len(), 3, s, s]).expect("batch shape");
        (images, captions, labels)
    }

    fn image_tensor(&self, image: Vec<f32>) -> Tensor {
        let s = self.cfg.size;
        Tensor::from_vec(image, &[3, s, s]).expect("image is [3, H, W]")
    }

    fn draw_label(u: &[f32]) -> ShapeLabel {
        ShapeLabel {
            shape: pick(Shape::ALL, u[draw::SHAPE]),
            color: pick(Color::ALL, u[draw::COLOR]),
            position: pick(Position::ALL, u[draw::POSITION]),
            size: pick(Size::ALL, u[draw::SIZE]),
        }
    }

    fn render(&self, index: u64, forced: Option<ShapeLabel>) -> Render {
        let (s, n) = (self.cfg.size, self.cfg.size * self.cfg.size);
        let sf = s as f32;
        let mut rng = Philox::new(sample_key(self.seed, index));
        let u = rng.uniform_vec(draw::COUNT);
        let texture = rng.normal_vec(TEXTURE * TEXTURE);
        let noise = rng.normal_vec(3 * n);
        let label = forced.unwrap_or_else(|| Self::draw_label(&u));

        let outline = self.outline(&label, &u);
        let mask = self.coverage(&outline);

        let bg_from: Vec<f32> = (0..3).map(|c| BG_MIN + (BG_MAX - BG_MIN) * u[draw::BG_FROM + c]).collect();
        let bg_to: Vec<f32> = (0..3).map(|c| BG_MIN + (BG_MAX - BG_MIN) * u[draw::BG_TO + c]).collect();
        let angle = 2.0 * PI * u[draw::BG_ANGLE];
        let (dx, dy) = (libm::cosf(angle), libm::sinf(angle));
        let brightness = 0.88 + 0.12 * u[draw::BRIGHTNESS];
        let rgb = label.color.rgb().map(|c| c * brightness);

        let mut image = vec![0.0; 3 * n];
        for y in 0..s {
            let py = y as f32 + 0.5;
            for x in 0..s {
                let px = x as f32 + 0.5;
                let t = (0.5 + ((px - sf / 2.0) * dx + (py - sf / 2.0) * dy) / sf).clamp(0.0, 1.0);
                let tex = TEXTURE_STD * bilinear(&texture, TEXTURE, px / sf, py / sf);
                let a = mask[y * s + x];
                for c in 0..3 {
                    let bg = bg_from[c] + (bg_to[c] - bg_from[c]) * t + tex;
                    let v = bg + (rgb[c] - bg) * a + PIXEL_NOISE_STD * noise[c * n + y * s + x];
                    image[c * n + y * s + x] = v.clamp(0.0, 1.0) * 2.0 - 1.0;
                }
            }
        }
        Render { image, mask, label }
    }

    /// The shape's outline in pixel coordinates for `label` and the sample's draws `u`.
    fn outline(&self, label: &ShapeLabel, u: &[f32]) -> Outline {
        let sf = self.cfg.size as f32;
        let (lo, span) = match label.size {
            Size::Large => LARGE_RADIUS,
            Size::Small => SMALL_RADIUS,
        };
        let r = sf * (lo + span * u[draw::SCALE]);
        let unit = (label.shape != Shape::Circle).then(|| unit_polygon(label.shape));
        // Keep the whole shape, at any rotation, half a pixel inside the image.
        let extent =
            unit.as_ref().map_or(CIRCLE_RADIUS, |points| points.iter().map(|[x, y]| x.hypot(*y)).fold(0.0, f32::max));
        let margin = extent * r + 0.5;
        let (row, col) = label.position.cell();
        let shift = |k: usize| sf * SHIFT * (2.0 * u[k] - 1.0);
        let cx = (sf * CELL_CENTERS[col] + shift(draw::SHIFT_X)).clamp(margin, sf - margin);
        let cy = (sf * CELL_CENTERS[row] + shift(draw::SHIFT_Y)).clamp(margin, sf - margin);
        let Some(unit) = unit else {
            return Outline::Circle { cx, cy, r: CIRCLE_RADIUS * r };
        };
        let theta = (2.0 * u[draw::ROTATION] - 1.0) * MAX_ROTATION_DEG.to_radians();
        let (cos, sin) = (libm::cosf(theta), libm::sinf(theta));
        let points = unit
            .into_iter()
            .map(|[x, y]| {
                // Rotate in the y-up unit frame, then flip y for the image's y-down axis.
                let (xr, yr) = (x * cos - y * sin, x * sin + y * cos);
                [cx + r * xr, cy - r * yr]
            })
            .collect();
        Outline::Polygon(points)
    }

    /// Fraction of each pixel's `s × s` sample points inside the outline, `[H, W]`.
    fn coverage(&self, outline: &Outline) -> Vec<f32> {
        let (size, ss) = (self.cfg.size, self.cfg.supersample);
        let (xs, ys): (Vec<f32>, Vec<f32>) = match outline {
            Outline::Circle { cx, cy, .. } => (vec![*cx], vec![*cy]),
            Outline::Polygon(v) => (v.iter().map(|p| p[0]).collect(), v.iter().map(|p| p[1]).collect()),
        };
        let pad = match outline {
            Outline::Circle { r, .. } => *r,
            Outline::Polygon(_) => 0.0,
        };
        let range = |vals: &[f32]| {
            let lo = vals.iter().copied().fold(f32::INFINITY, f32::min) - pad;
            let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max) + pad;
            (lo.floor().max(0.0) as usize, (hi.ceil().max(0.0) as usize).min(size))
        };
        let ((x0, x1), (y0, y1)) = (range(&xs), range(&ys));
        let step = 1.0 / ss as f32;
        let mut mask = vec![0.0; size * size];
        for y in y0..y1 {
            for x in x0..x1 {
                let mut hits = 0;
                for j in 0..ss {
                    for i in 0..ss {
                        let px = x as f32 + (i as f32 + 0.5) * step;
                        let py = y as f32 + (j as f32 + 0.5) * step;
                        hits += usize::from(outline.contains(px, py));
                    }
                }
                mask[y * size + x] = hits as f32 / (ss * ss) as f32;
            }
        }
        mask
    }
}

/// Bilinear interpolation of a `g × g` grid of values spanning the unit square (grid
/// point `(i, j)` at `(i/(g−1), j/(g−1))`), at `(x, y)` in [0, 1].
fn bilinear(grid: &[f32], g: usize, x: f32, y: f32) -> f32 {
    let scale = (g - 1) as f32;
    let (fx, fy) = ((x * scale).clamp(0.0, scale), (y * scale).clamp(0.0, scale));
    let (i, j) = ((fx as usize).min(g - 2), (fy as usize).min(g - 2));
    let (tx, ty) = (fx - i as f32, fy - j as f32);
    let at = |i: usize, j: usize| grid[j * g + i];
    let top = at(i, j) + (at(i + 1, j) - at(i, j)) * tx;
    let bottom = at(i, j + 1) + (at(i + 1, j + 1) - at(i, j + 1)) * tx;
    top + (bottom - top) * ty
}

//! `senseflow data preview`: a PNG grid of captioned-shapes samples and their captions, to
//! see what the demo models are trained on.

use super::emit;
use senseflow::data::{write_png_grid, GridLayout, ShapesConfig, ShapesDataset};
use std::fmt::Write;
use std::path::PathBuf;

fn positive() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(clap::Subcommand)]
pub enum Data {
    /// Write a grid of captioned-shapes samples to a PNG and print their captions.
    Preview(PreviewArgs),
}

#[derive(clap::Args)]
pub struct PreviewArgs {
    /// Number of samples (indices start..start+n).
    #[arg(long, default_value_t = 16, value_parser = positive())]
    n: usize,
    /// Index of the first sample.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Dataset seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image height and width in pixels.
    #[arg(long, default_value_t = 32, value_parser = positive())]
    size: usize,
    /// Tiles per row (default: a near-square grid).
    #[arg(long, value_parser = positive())]
    cols: Option<usize>,
    /// Show each pixel as a ZOOM×ZOOM block.
    #[arg(long, default_value_t = 1, value_parser = positive())]
    zoom: usize,
    /// Output PNG file.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,
}

pub fn run(d: &Data) -> anyhow::Result<()> {
    match d {
        Data::Preview(a) => preview(a),
    }
}

fn preview(a: &PreviewArgs) -> anyhow::Result<()> {
    let cfg = ShapesConfig { size: a.size, ..ShapesConfig::default() };
    let dataset = ShapesDataset::new(cfg, a.seed)?;
    let indices: Vec<u64> = (a.start..a.start + a.n as u64).collect();
    let (images, captions, _) = dataset.batch(&indices);
    let mut layout = GridLayout::square(a.n);
    layout.cols = a.cols.unwrap_or(layout.cols);
    layout.zoom = a.zoom;
    write_png_grid(&a.out, &images, layout)?;
    let mut out = String::new();
    for (i, caption) in indices.iter().zip(&captions) {
        writeln!(out, "{i}\t{caption}")?;
    }
    eprintln!("wrote {}", a.out.display());
    emit(&out)
}

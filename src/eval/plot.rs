//! Line charts of training curves (loss against step) rendered to RGB8 pixels or a PNG file,
//! with no font files or system libraries: text uses the built-in bitmap font in `font`.
//!
//! Conventions:
//! - Pixels are row-major RGB8, `width * height * 3` bytes, origin top-left.
//! - A point with a non-finite coordinate, a coordinate beyond ±1e300, or (on a log-y chart)
//!   y ≤ 0 is skipped and breaks its line, so gaps in a run show as gaps.
//! - Axis ranges cover every drawn point plus a small margin. Ticks are "nice": about five
//!   multiples of a 1-2-5 step. A log axis ticks whole decades, or 1-2-5 multiples within
//!   each decade over a short range, or plain 1-2-5 steps when it spans under a decade.
//! - Series i is drawn in `PALETTE[i % 8]`, in order (later series on top), antialiased: a
//!   pixel's coverage comes from its distance to the polyline; lines are 2 px wide at 800×500.
//! - Text, line widths and margins grow by an integer factor with the image size, so a
//!   1600×1000 chart looks like an 800×500 one at twice the resolution.
//! - Degenerate inputs never panic: no drawable point gives axes and a "no data" note, an
//!   isolated point is drawn as a dot, and a zero-width range is widened around its value.

use crate::error::{Error, Result};
use std::path::Path;

mod font;

use font::{ADVANCE, CAP_H, GLYPH_H, GLYPH_W};

/// One named curve; its points are joined in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points }
    }
}

/// What the chart says around the data, and its size in pixels. Empty strings draw nothing
/// and give their space to the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartSpec {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Base-10 logarithmic y axis; points with y ≤ 0 are then skipped.
    pub log_y: bool,
    pub width: u32,
    pub height: u32,
}

impl Default for ChartSpec {
    /// An untitled, unlabelled 800×500 chart with a linear y axis.
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_y: false,
            width: 800,
            height: 500,
        }
    }
}

/// Line colors, matplotlib's tab10 without olive and cyan: series i gets `PALETTE[i % 8]`.
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],  // blue
    [255, 127, 14],  // orange
    [44, 160, 44],   // green
    [214, 39, 40],   // red
    [148, 103, 189], // purple
    [140, 86, 75],   // brown
    [227, 119, 194], // pink
    [127, 127, 127], // gray
];

/// Smallest accepted image: below it the labels leave too little room for the plot.
pub const MIN_SIZE: (u32, u32) = (200, 150);
/// Largest accepted side, so that a typo cannot allocate gigabytes.
pub const MAX_SIDE: u32 = 16384;

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [30, 30, 30];
const GRID: Rgb = [232, 232, 232];
const LEGEND_BORDER: Rgb = [200, 200, 200];
const NOTE: Rgb = [130, 130, 130];

/// Ticks aimed for on each axis; fewer are used when their labels would collide.
const TICK_TARGET: usize = 5;
/// Coordinates beyond this are treated like infinities (their spans would overflow).
const COORD_LIMIT: f64 = 1e300;
/// Empty space added on each side of the data range, as a fraction of the range.
const X_MARGIN: f64 = 0.03;
const Y_MARGIN: f64 = 0.05;

/// Renders `series` as a line chart: `width * height * 3` bytes of RGB8, row-major from the
/// top-left. Errors only when the size is outside `MIN_SIZE..=MAX_SIDE` or the labels leave
/// no room for the plot (a very long tick label on a small image).
pub fn render_line_chart(spec: &ChartSpec, series: &[Series]) -> Result<Vec<u8>> {
    const OP: &str = "render_line_chart";
    let (w, h) = (spec.width, spec.height);
    if w < MIN_SIZE.0 || h < MIN_SIZE.1 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(Error::op(
            OP,
            format!("chart size {w}x{h} is outside {}x{} ..= {MAX_SIDE}x{MAX_SIDE}", MIN_SIZE.0, MIN_SIZE.1),
        ));
    }
    let (w, h) = (w as usize, h as usize);
    let scale = (w / 640).min(h / 400).max(1);
    let runs: Vec<Vec<Vec<(f64, f64)>>> = series.iter().map(|s| drawable_runs(&s.points, spec.log_y)).collect();
    let all_points = || runs.iter().flatten().flatten();
    let x_range = data_range(all_points().map(|p| p.0));
    let y_range = data_range(all_points().map(|p| p.1));
    let layout = Layout::fit(spec, w, h, scale, x_range, y_range).ok_or_else(|| {
        Error::op(OP, format!("a {w}x{h} chart leaves no room for the plot beside its labels; enlarge it"))
    })?;

    let mut canvas = Canvas::new(w, h);
    layout.draw_grid(&mut canvas);
    // One coverage mask per series, composited once, so that overlapping segments of one
    // line do not darken their joints; `ink` remembers where any line went, for the legend.
    let mut ink = vec![false; layout.plot.width() * layout.plot.height()];
    let radius = line_width(scale) / 2.0;
    let dot_radius = 2.5 * scale as f64;
    for (i, series_runs) in runs.iter().enumerate() {
        let mut mask = Coverage::new(layout.plot);
        for run in series_runs {
            let pixels: Vec<(f64, f64)> = run.iter().map(|&p| layout.to_pixel(p)).collect();
            match pixels.as_slice() {
                [p] => mask.stroke(*p, *p, dot_radius),
                _ => {
                    for pair in pixels.windows(2) {
                        mask.stroke(pair[0], pair[1], radius);
                    }
                }
            }
        }
        for (seen, &c) in ink.iter_mut().zip(&mask.cov) {
            *seen |= c > 0.1;
        }
        canvas.composite(&mask, PALETTE[i % PALETTE.len()]);
    }
    layout.draw_frame_and_labels(&mut canvas, spec);
    if all_points().next().is_none() {
        let note = "no data";
        let s = 2 * scale;
        let (cx, cy) = layout.plot.center();
        let x = cx - font::text_width(note, s) as i64 / 2;
        canvas.text(x, cy - (CAP_H * s) as i64 / 2, note, s, NOTE);
    }
    layout.draw_legend(&mut canvas, series, &ink);
    Ok(canvas.px)
}

/// Renders the chart (see `render_line_chart`) and writes it to `path` as an 8-bit RGB PNG,
/// atomically: readers see the old file or the whole new one.
pub fn write_line_chart_png(path: impl AsRef<Path>, spec: &ChartSpec, series: &[Series]) -> Result<()> {
    use image::{ExtendedColorType, ImageEncoder};
    let path = path.as_ref();
    let pixels = render_line_chart(spec, series)?;
    crate::io::atomic_write(path, |w| {
        image::codecs::png::PngEncoder::new(w)
            .write_image(&pixels, spec.width, spec.height, ExtendedColorType::Rgb8)
            .map_err(|e| Error::format(path, format!("PNG encoding failed: {e}")))
    })
}

/// Centered moving average of y over `window` consecutive points (`window / 2` before and
/// `(window - 1) / 2` after, truncated at the ends); x is unchanged. Non-finite y values are
/// left out of every average and stay non-finite themselves, so gaps stay gaps. A window of
/// 0 or 1 returns the points as they are.
pub fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    if window <= 1 {
        return points.to_vec();
    }
    // Prefix sums of the finite values and of their count make each average O(1); their
    // rounding error is ~1e-16 of the largest partial sum, far below any visible change.
    let mut sum = vec![0.0; points.len() + 1];
    let mut count = vec![0usize; points.len() + 1];
    for (i, &(_, y)) in points.iter().enumerate() {
        let finite = y.is_finite();
        sum[i + 1] = sum[i] + if finite { y } else { 0.0 };
        count[i + 1] = count[i] + usize::from(finite);
    }
    let (before, after) = (window / 2, (window - 1) / 2);
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            if !y.is_finite() {
                return (x, y);
            }
            let lo = i.saturating_sub(before);
            let hi = (i + after + 1).min(points.len());
            (x, (sum[hi] - sum[lo]) / (count[hi] - count[lo]) as f64)
        })
        .collect()
}

/// Line width in pixels at text scale `scale`.
fn line_width(scale: usize) -> f64 {
    1.5 * scale as f64 + 0.5
}

/// Splits `points` into runs of drawable points (y as log10 y on a log chart); a skipped
/// point ends a run.
fn drawable_runs(points: &[(f64, f64)], log_y: bool) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for &(x, y) in points {
        let in_range = |v: f64| v.is_finite() && v.abs() <= COORD_LIMIT;
        if in_range(x) && in_range(y) && (!log_y || y > 0.0) {
            run.push((x, if log_y { y.log10() } else { y }));
        } else if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

fn data_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |range, v| match range {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The axis limits for a data range: widened by `margin` of its span on each side, or,
/// when the span is (relatively) zero, around its value; no data gives 0..1.
fn axis_limits(range: Option<(f64, f64)>, margin: f64, log: bool) -> (f64, f64) {
    let Some((lo, hi)) = range else {
        return (0.0, 1.0);
    };
    if hi - lo <= 1e-9 * lo.abs().max(hi.abs()) {
        let mid = 0.5 * (lo + hi);
        // On a log axis (values are log10 y) half a decade each way; otherwise 10 %.
        let half = if log {
            0.5
        } else if mid == 0.0 {
            1.0
        } else {
            0.1 * mid.abs()
        };
        return (mid - half, mid + half);
    }
    let pad = margin * (hi - lo);
    (lo - pad, hi + pad)
}

/// The 1-2-5 step (times a power of ten) nearest to `span / target`, so that the range
/// holds about `target` intervals (between 2/3 and 3/2 of it; Heckbert's "nice numbers").
fn nice_step(span: f64, target: usize) -> f64 {
    let raw = span / target as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let m = match raw / mag {
        f if f < 1.5 => 1.0,
        f if f < 3.0 => 2.0,
        f if f < 7.0 => 5.0,
        _ => 10.0,
    };
    m * mag
}

/// Multiples of a nice step inside `lo..=hi`, and the step. No ticks when the step is not a
/// normal number (a span near the bottom of the f64 range).
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let step = nice_step(hi - lo, target);
    let (first, last) = ((lo / step).ceil(), (hi / step).floor());
    // `contains` is false for NaN too; a negative count means no multiple lies inside.
    if !step.is_normal() || !(0.0..100.0).contains(&(last - first)) {
        return (Vec::new(), step);
    }
    let mut ticks: Vec<f64> =
        (0..=(last - first) as usize).map(|i| (first + i as f64) * step).filter(|v| (lo..=hi).contains(v)).collect();
    ticks.dedup();
    (ticks, step)
}

/// Base-10 exponent of `v` as printed, e.g. -3 for 1.5e-3.
fn decimal_exponent(v: f64) -> i32 {
    let s = format!("{v:e}");
    s.split_once('e').and_then(|(_, e)| e.parse().ok()).unwrap_or(0)
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Whether labels as large as `max_abs` print in scientific notation: outside 0.01..1e5,
/// fixed notation grows past about six characters.
fn wants_sci(max_abs: f64) -> bool {
    max_abs != 0.0 && !(0.01..1e5).contains(&max_abs)
}

/// A tick label for `v`, a multiple of `step` (a 1-2-5 times a power of ten), with just
/// the digits that step needs: "0", "0.5", "12", "1.5e-3", "2e5".
fn format_tick(v: f64, step: f64, sci: bool) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    // The step is m·10^k with m in 1..10; the epsilon absorbs log10 rounding at m = 1.
    let step_exp = (step.log10() + 1e-9).floor() as i32;
    if sci {
        let digits = (decimal_exponent(v) - step_exp).clamp(0, 15) as usize;
        let s = format!("{v:.digits$e}");
        match s.split_once('e') {
            Some((mantissa, exp)) => format!("{}e{exp}", trim_zeros(mantissa)),
            None => s,
        }
    } else {
        let decimals = (-step_exp).clamp(0, 15) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

fn linear_labels(ticks: &[f64], step: f64) -> Vec<String> {
    let sci = wants_sci(ticks.iter().fold(0.0, |m, v| v.abs().max(m)));
    ticks.iter().map(|&v| format_tick(v, step, sci)).collect()
}

/// An axis: its limits and ticks in plotted units (log10 y on a log axis) with labels.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn linear(lo: f64, hi: f64, target: usize) -> Self {
        let (ticks, step) = nice_ticks(lo, hi, target);
        let labels = linear_labels(&ticks, step);
        Self { lo, hi, ticks: ticks.into_iter().zip(labels).collect() }
    }

    /// `lo..hi` are log10 of the values.
    fn log(lo: f64, hi: f64, target: usize) -> Self {
        let span = hi - lo;
        let ticks = if span < 1.0 {
            // Under a decade there may be no power of ten inside: tick the values themselves.
            let (values, step) = nice_ticks(10f64.powf(lo), 10f64.powf(hi), target);
            let labels = linear_labels(&values, step);
            values.iter().map(|v| v.log10()).zip(labels).collect()
        } else {
            let decade = |d: i32, m: f64| {
                let (v, unit) = (m * 10f64.powi(d), 10f64.powi(d));
                (v.log10(), format_tick(v, unit, wants_sci(v)))
            };
            let (first, last) = (lo.floor() as i32, hi.ceil() as i32);
            let ticks: Vec<(f64, String)> = if 3.0 * span <= (target + 2) as f64 {
                (first..=last).flat_map(|d| [1.0, 2.0, 5.0].map(|m| decade(d, m))).collect()
            } else {
                let every = nice_step(span, target).round().max(1.0) as i32;
                (first..=last).filter(|d| d.rem_euclid(every) == 0).map(|d| decade(d, 1.0)).collect()
            };
            ticks.into_iter().filter(|(t, _)| (lo..=hi).contains(t)).collect()
        };
        Self { lo, hi, ticks }
    }

    fn new(range: Option<(f64, f64)>, margin: f64, log: bool, target: usize) -> Self {
        let (lo, hi) = axis_limits(range, margin, log);
        if log {
            Self::log(lo, hi, target)
        } else {
            Self::linear(lo, hi, target)
        }
    }

    fn max_label_width(&self, scale: usize) -> usize {
        self.ticks.iter().map(|(_, label)| font::text_width(label, scale)).max().unwrap_or(0)
    }
}

/// Inclusive pixel bounds of the plot area.
#[derive(Clone, Copy)]
struct Rect {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

impl Rect {
    fn width(&self) -> usize {
        self.x1 - self.x0 + 1
    }
    fn height(&self) -> usize {
        self.y1 - self.y0 + 1
    }
    fn center(&self) -> (i64, i64) {
        (((self.x0 + self.x1) / 2) as i64, ((self.y0 + self.y1) / 2) as i64)
    }
}

/// Where everything goes: axes with their ticks, the plot area, and the text scale.
struct Layout {
    x: Axis,
    y: Axis,
    plot: Rect,
    scale: usize,
    /// Image width, to keep a long title inside the image.
    width: usize,
}

impl Layout {
    /// Picks axes and margins; fewer ticks on an axis whose labels would collide. None when
    /// the plot area would be too small.
    fn fit(
        spec: &ChartSpec,
        width: usize,
        height: usize,
        scale: usize,
        x_range: Option<(f64, f64)>,
        y_range: Option<(f64, f64)>,
    ) -> Option<Self> {
        let (mut x_target, mut y_target) = (TICK_TARGET, TICK_TARGET);
        loop {
            let x = Axis::new(x_range, X_MARGIN, false, x_target);
            let y = Axis::new(y_range, Y_MARGIN, spec.log_y, y_target);
            let layout = Self::place(spec, width, height, scale, x, y)?;
            let (x_crowded, y_crowded) = layout.crowding();
            match (x_crowded && x_target > 2, y_crowded && y_target > 2) {
                (false, false) => return Some(layout),
                (x_less, y_less) => {
                    x_target -= usize::from(x_less);
                    y_target -= usize::from(y_less);
                }
            }
        }
    }

    fn place(spec: &ChartSpec, width: usize, height: usize, s: usize, x: Axis, y: Axis) -> Option<Self> {
        let pad = 8 * s;
        let (tick_len, gap) = (4 * s, 3 * s);
        let title_h = if spec.title.is_empty() { 0 } else { CAP_H * 2 * s + pad };
        let y_label_w = if spec.y_label.is_empty() { 0 } else { GLYPH_H * s + pad };
        let x_label_h = if spec.x_label.is_empty() { 0 } else { GLYPH_H * s + pad / 2 };
        let last_x_label = x.ticks.last().map_or(0, |(_, l)| font::text_width(l, s));
        let left = pad + y_label_w + y.max_label_width(s) + gap + tick_len;
        let right = pad + last_x_label / 2;
        let top = pad + title_h;
        let bottom = tick_len + gap + CAP_H * s + pad + x_label_h + pad / 2;
        if left + right + 40 * s > width || top + bottom + 30 * s > height {
            return None;
        }
        let plot = Rect { x0: left, y0: top, x1: width - 1 - right, y1: height - 1 - bottom };
        Some(Self { x, y, plot, scale: s, width })
    }

    /// Whether adjacent tick labels on (x, y) would touch.
    fn crowding(&self) -> (bool, bool) {
        let s = self.scale;
        let min_gap = |px: Vec<f64>| px.windows(2).map(|p| (p[1] - p[0]).abs()).fold(f64::INFINITY, f64::min);
        let x_px = self.x.ticks.iter().map(|t| self.x_pixel(t.0)).collect();
        let y_px = self.y.ticks.iter().map(|t| self.y_pixel(t.0)).collect();
        (min_gap(x_px) < (self.x.max_label_width(s) + 6 * s) as f64, min_gap(y_px) < ((CAP_H + 4) * s) as f64)
    }

    fn x_pixel(&self, x: f64) -> f64 {
        let t = (x - self.x.lo) / (self.x.hi - self.x.lo);
        self.plot.x0 as f64 + t * (self.plot.x1 - self.plot.x0) as f64
    }

    fn y_pixel(&self, y: f64) -> f64 {
        let t = (y - self.y.lo) / (self.y.hi - self.y.lo);
        self.plot.y1 as f64 - t * (self.plot.y1 - self.plot.y0) as f64
    }

    fn to_pixel(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (self.x_pixel(x), self.y_pixel(y))
    }

    fn draw_grid(&self, canvas: &mut Canvas) {
        let p = self.plot;
        for (t, _) in &self.x.ticks {
            let x = self.x_pixel(*t).round() as i64;
            canvas.fill(x, p.y0 as i64, 1, p.height(), GRID);
        }
        for (t, _) in &self.y.ticks {
            let y = self.y_pixel(*t).round() as i64;
            canvas.fill(p.x0 as i64, y, p.width(), 1, GRID);
        }
    }

    fn draw_frame_and_labels(&self, canvas: &mut Canvas, spec: &ChartSpec) {
        let (p, s) = (self.plot, self.scale);
        let (x0, y0, x1, y1) = (p.x0 as i64, p.y0 as i64, p.x1 as i64, p.y1 as i64);
        let (tick_len, gap, pad) = (4 * s, 3 * s as i64, 8 * s as i64);
        canvas.fill(x0, y0, p.width(), 1, INK);
        canvas.fill(x0, y1, p.width(), 1, INK);
        canvas.fill(x0, y0, 1, p.height(), INK);
        canvas.fill(x1, y0, 1, p.height(), INK);

        let label_top = y1 + 1 + tick_len as i64 + gap;
        for (t, label) in &self.x.ticks {
            let x = self.x_pixel(*t).round() as i64;
            canvas.fill(x, y1 + 1, 1, tick_len, INK);
            let w = font::text_width(label, s) as i64;
            canvas.text(x - w / 2, label_top, label, s, INK);
        }
        let label_right = x0 - tick_len as i64 - gap;
        for (t, label) in &self.y.ticks {
            let y = self.y_pixel(*t).round() as i64;
            canvas.fill(x0 - tick_len as i64, y, tick_len, 1, INK);
            let w = font::text_width(label, s) as i64;
            canvas.text(label_right - w, y - (CAP_H * s) as i64 / 2, label, s, INK);
        }

        let (cx, cy) = p.center();
        if !spec.x_label.is_empty() {
            let w = font::text_width(&spec.x_label, s) as i64;
            let top = label_top + (CAP_H * s) as i64 + pad;
            canvas.text(cx - w / 2, top, &spec.x_label, s, INK);
        }
        if !spec.y_label.is_empty() {
            let len = font::text_width(&spec.y_label, s) as i64;
            canvas.text_up(pad, cy - len / 2, &spec.y_label, s, INK);
        }
        if !spec.title.is_empty() {
            let ts = 2 * s;
            let w = font::text_width(&spec.title, ts) as i64;
            let x = (cx - w / 2).clamp(0, (self.width as i64 - w).max(0));
            canvas.text(x, pad, &spec.title, ts, INK);
        }
    }

    /// A boxed legend in the plot corner with the least line ink under it (top right first,
    /// where decreasing loss curves leave room); none when no series has a name.
    fn draw_legend(&self, canvas: &mut Canvas, series: &[Series], ink: &[bool]) {
        if series.iter().all(|s| s.name.is_empty()) {
            return;
        }
        let (p, s) = (self.plot, self.scale);
        let (inner, sample, row_h, margin) = (5 * s, 20 * s, (GLYPH_H + 2) * s, 6 * s);
        let name_w = series.iter().map(|x| font::text_width(&x.name, s)).max().unwrap_or(0);
        let box_w = (2 * inner + sample + inner + name_w).min(p.width());
        let box_h = (2 * inner + series.len() * row_h - 2 * s).min(p.height());
        let (left, right) = (p.x0 + margin, (p.x1 + 1).saturating_sub(margin + box_w));
        let (top, bottom) = (p.y0 + margin, (p.y1 + 1).saturating_sub(margin + box_h));
        let corners = [(right, top), (left, top), (left, bottom), (right, bottom)];
        let ink_under = |&(bx, by): &(usize, usize)| {
            let (lx, ly) = (bx.max(p.x0) - p.x0, by.max(p.y0) - p.y0);
            (ly..(ly + box_h).min(p.height()))
                .map(|r| {
                    let row = &ink[r * p.width()..(r + 1) * p.width()];
                    row[lx.min(p.width())..(lx + box_w).min(p.width())].iter().filter(|&&b| b).count()
                })
                .sum::<usize>()
        };
        // `min_by_key` keeps the first of equal minima, so the preference order holds.
        let (bx, by) = corners.into_iter().min_by_key(ink_under).unwrap_or(corners[0]);
        let (bx, by) = (bx as i64, by as i64);
        canvas.fill(bx, by, box_w, box_h, WHITE);
        canvas.fill(bx, by, box_w, 1, LEGEND_BORDER);
        canvas.fill(bx, by + box_h as i64 - 1, box_w, 1, LEGEND_BORDER);
        canvas.fill(bx, by, 1, box_h, LEGEND_BORDER);
        canvas.fill(bx + box_w as i64 - 1, by, 1, box_h, LEGEND_BORDER);
        let thickness = line_width(s).round() as usize;
        for (i, entry) in series.iter().enumerate() {
            let top = by + (inner + i * row_h) as i64;
            let mid = top + (CAP_H * s) as i64 / 2;
            let color = PALETTE[i % PALETTE.len()];
            let sample_x = bx + inner as i64;
            canvas.fill(sample_x, mid - thickness as i64 / 2, sample, thickness, color);
            let text_x = sample_x + (sample + inner) as i64;
            canvas.text(text_x, top, &entry.name, s, INK);
        }
    }
}

/// Antialiased line coverage over the plot area, in 0..=1 per pixel.
struct Coverage {
    rect: Rect,
    cov: Vec<f32>,
}

impl Coverage {
    fn new(rect: Rect) -> Self {
        Self { rect, cov: vec![0.0; rect.width() * rect.height()] }
    }

    /// Adds a segment `a`–`b` (canvas pixel coordinates, pixel centers at integers) drawn
    /// with round caps of `radius`: coverage is 1 within the radius, fading to 0 over the
    /// next pixel. Coverage combines by maximum.
    fn stroke(&mut self, a: (f64, f64), b: (f64, f64), radius: f64) {
        let (w, h) = (self.rect.width(), self.rect.height());
        let reach = radius + 0.5;
        let (ax, ay) = (a.0 - self.rect.x0 as f64, a.1 - self.rect.y0 as f64);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let row_lo = (ay.min(ay + dy) - reach).floor().max(0.0);
        let row_hi = (ay.max(ay + dy) + reach).ceil().min(h as f64 - 1.0);
        if row_lo > row_hi {
            return;
        }
        for row in row_lo as usize..=row_hi as usize {
            let y = row as f64;
            // Only the part of the segment within `reach` of this row can cover it.
            let (t0, t1) = if dy.abs() < 1e-12 {
                (0.0, 1.0)
            } else {
                let (ta, tb) = ((y - reach - ay) / dy, (y + reach - ay) / dy);
                (ta.min(tb).max(0.0), ta.max(tb).min(1.0))
            };
            if t0 > t1 {
                continue;
            }
            let (xa, xb) = (ax + t0 * dx, ax + t1 * dx);
            let col_lo = (xa.min(xb) - reach).floor().max(0.0);
            let col_hi = (xa.max(xb) + reach).ceil().min(w as f64 - 1.0);
            if col_lo > col_hi {
                continue;
            }
            for col in col_lo as usize..=col_hi as usize {
                let (px, py) = (col as f64 - ax, y - ay);
                let t = if len2 > 0.0 { ((px * dx + py * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let d = (px - t * dx).hypot(py - t * dy);
                let c = (reach - d).clamp(0.0, 1.0) as f32;
                let cell = &mut self.cov[row * w + col];
                *cell = cell.max(c);
            }
        }
    }
}

/// An RGB8 image with clipped drawing primitives.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self { w, h, px: vec![255; w * h * 3] }
    }

    /// Fills the `w`×`h` rectangle with top-left (x, y), clipped to the image.
    fn fill(&mut self, x: i64, y: i64, w: usize, h: usize, color: Rgb) {
        let x_lo = x.clamp(0, self.w as i64) as usize;
        let x_hi = (x + w as i64).clamp(0, self.w as i64) as usize;
        let y_lo = y.clamp(0, self.h as i64) as usize;
        let y_hi = (y + h as i64).clamp(0, self.h as i64) as usize;
        for row in y_lo..y_hi {
            for col in x_lo..x_hi {
                let i = (row * self.w + col) * 3;
                self.px[i..i + 3].copy_from_slice(&color);
            }
        }
    }

    fn composite(&mut self, mask: &Coverage, color: Rgb) {
        let r = mask.rect;
        for (i, &a) in mask.cov.iter().enumerate() {
            if a <= 0.0 {
                continue;
            }
            let (row, col) = (r.y0 + i / r.width(), r.x0 + i % r.width());
            let p = (row * self.w + col) * 3;
            for (dst, &src) in self.px[p..p + 3].iter_mut().zip(&color) {
                let mixed = f32::from(*dst) * (1.0 - a) + f32::from(src) * a;
                *dst = mixed.round() as u8;
            }
        }
    }

    /// Calls `ink(col, row)` for each inked font pixel of `text` (column along the text).
    fn glyph_pixels(text: &str, mut ink: impl FnMut(usize, usize)) {
        for (i, c) in text.chars().enumerate() {
            for (row, bits) in font::glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if (bits >> (GLYPH_W - 1 - col)) & 1 == 1 {
                        ink(i * ADVANCE + col, row);
                    }
                }
            }
        }
    }

    /// Draws `text` left to right with its top-left corner at (x, y), each font pixel a
    /// `scale`×`scale` block.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, color: Rgb) {
        Self::glyph_pixels(text, |col, row| {
            let (gx, gy) = ((col * scale) as i64, (row * scale) as i64);
            self.fill(x + gx, y + gy, scale, scale, color);
        });
    }

    /// Draws `text` rotated a quarter turn counter-clockwise (reading bottom to top) inside
    /// the box with top-left (x, y), `GLYPH_H * scale` wide and `text_width` tall.
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: usize, color: Rgb) {
        let len = font::text_width(text, scale) as i64;
        Self::glyph_pixels(text, |col, row| {
            let (along, across) = ((col * scale) as i64, (row * scale) as i64);
            self.fill(x + across, y + len - along - scale as i64, scale, scale, color);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(axis: &Axis) -> Vec<&str> {
        axis.ticks.iter().map(|(_, l)| l.as_str()).collect()
    }

    #[test]
    fn linear_ticks_use_1_2_5_steps() {
        assert_eq!(labels(&Axis::linear(0.0, 1.0, 5)), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(labels(&Axis::linear(-3.0, 47.0, 5)), ["0", "10", "20", "30", "40"]);
        assert_eq!(labels(&Axis::linear(0.0011, 0.0019, 4)), ["1.2e-3", "1.4e-3", "1.6e-3", "1.8e-3"]);
        assert_eq!(labels(&Axis::linear(0.0, 250_000.0, 5)), ["0", "5e4", "1e5", "1.5e5", "2e5", "2.5e5"]);
        assert_eq!(labels(&Axis::linear(-1.0, 1.0, 5)), ["-1", "-0.5", "0", "0.5", "1"]);
    }

    #[test]
    fn log_ticks_pick_decades_or_multiples() {
        // Five decades: every decade.
        assert_eq!(labels(&Axis::log(-4.2, 1.1, 5)), ["1e-4", "1e-3", "0.01", "0.1", "1", "10"]);
        assert_eq!(labels(&Axis::log(-3.2, 0.1, 5)), ["1e-3", "0.01", "0.1", "1"]);
        // About one decade: 1-2-5 multiples.
        assert_eq!(labels(&Axis::log(-1.5, 0.0, 5)), ["0.05", "0.1", "0.2", "0.5", "1"]);
        // Under a decade: plain steps of the values.
        assert_eq!(labels(&Axis::log(0.25f64.log10(), 0.85f64.log10(), 5)), ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]);
        // Twelve decades: every second.
        assert_eq!(labels(&Axis::log(-6.0, 6.0, 5)), ["1e-6", "1e-4", "0.01", "1", "100", "10000", "1e6"]);
    }

    #[test]
    fn degenerate_ranges_widen() {
        assert_eq!(axis_limits(Some((2.0, 2.0)), 0.05, false), (1.8, 2.2));
        assert_eq!(axis_limits(Some((0.0, 0.0)), 0.05, false), (-1.0, 1.0));
        assert_eq!(axis_limits(Some((1.0, 1.0)), 0.05, true), (0.5, 1.5));
        assert_eq!(axis_limits(None, 0.05, true), (0.0, 1.0));
        assert!(nice_ticks(0.0, 1e-320, 5).0.len() <= 100);
    }
}

//! Loss-curve charts: PNG round trip (size, white background, each series' color, tick
//! labels), degenerate inputs (no points, one point, flat, NaN/inf, nothing positive on a
//! log axis, many series), size checks and smoothing. The charts are written under
//! CARGO_TARGET_TMPDIR so that a person can look at them.

use senseflow::eval::plot::{render_line_chart, smooth, write_line_chart_png, ChartSpec, Series, PALETTE};
use std::path::PathBuf;

fn out_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// A decaying, noisy loss: deterministic, positive, about 2.5 decades.
fn loss_curve(steps: usize, scale: f64, rate: f64, phase: f64) -> Vec<(f64, f64)> {
    (0..steps)
        .map(|i| {
            let t = i as f64;
            let noise = 1.0 + 0.15 * (t * 0.37 + phase).sin() * (t * 0.051).cos();
            (t * 10.0, scale * (-rate * t).exp() * noise + 0.004)
        })
        .collect()
}

fn color_count(img: &image::RgbImage, color: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == color).count()
}

fn count_non_white(pixels: &[u8], width: usize, x: std::ops::Range<usize>, y: std::ops::Range<usize>) -> usize {
    y.flat_map(|row| x.clone().map(move |col| (row * width + col) * 3))
        .filter(|&i| pixels[i..i + 3] != [255, 255, 255])
        .count()
}

fn spec(width: u32, height: u32, log_y: bool) -> ChartSpec {
    ChartSpec {
        title: "Training loss (seed 0)".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        log_y,
        width,
        height,
    }
}

#[test]
fn two_series_log_y_png_round_trip() {
    let series = [
        Series::new("train_loss", loss_curve(400, 2.0, 0.012, 0.0)),
        Series::new("val_loss (EMA)", smooth(&loss_curve(400, 2.6, 0.010, 1.3), 15)),
    ];
    let path = out_path("plot_two_series_log_y.png");
    write_line_chart_png(&path, &spec(800, 500, true), &series).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 500));
    for (x, y) in [(0, 0), (799, 0), (0, 499), (799, 499), (400, 2)] {
        assert_eq!(img.get_pixel(x, y).0, [255, 255, 255], "background at ({x}, {y})");
    }
    for (i, s) in series.iter().enumerate() {
        let n = color_count(&img, PALETTE[i]);
        println!("{}: {n} pixels of {:?}", s.name, PALETTE[i]);
        // The legend sample alone is ~40 pixels; a line across the plot is far more.
        assert!(n > 500, "series {i} drew only {n} pixels of its color");
    }
    println!("wrote {}", path.display());
}

#[test]
fn tick_labels_are_drawn() {
    // No title or axis labels: ink left of and below the plot can only be tick labels.
    let spec = ChartSpec { width: 640, height: 400, ..ChartSpec::default() };
    let series = [Series::new("", vec![(0.0, 0.1), (100.0, 0.9)])];
    let px = render_line_chart(&spec, &series).unwrap();
    assert_eq!(px.len(), 640 * 400 * 3);
    let y_labels = count_non_white(&px, 640, 0..25, 30..370);
    let x_labels = count_non_white(&px, 640, 60..600, 380..400);
    println!("ink: y tick labels {y_labels}, x tick labels {x_labels}");
    assert!(y_labels > 50, "no y tick labels");
    assert!(x_labels > 50, "no x tick labels");
    // Nothing else reaches the image border, the top rows or the far right.
    assert_eq!(count_non_white(&px, 640, 0..640, 0..4), 0);
}

#[test]
fn degenerate_inputs_render() {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let cases: Vec<(&str, bool, Vec<Series>)> = vec![
        ("no_series", false, vec![]),
        ("empty_series", true, vec![Series::new("empty", vec![])]),
        ("one_point", false, vec![Series::new("one", vec![(3.0, 0.25)])]),
        ("one_point_log", true, vec![Series::new("one", vec![(3.0, 0.25)])]),
        ("flat", false, vec![Series::new("flat", (0..50).map(|i| (i as f64, 1.5)).collect())]),
        ("flat_zero", false, vec![Series::new("zero", (0..50).map(|i| (i as f64, 0.0)).collect())]),
        ("flat_log", true, vec![Series::new("flat", (0..50).map(|i| (i as f64, 1e-3)).collect())]),
        (
            "nan_inf",
            true,
            vec![Series::new(
                "gaps",
                vec![
                    (0.0, 1.0),
                    (1.0, nan),
                    (2.0, 0.5),
                    (3.0, 0.4),
                    (nan, 0.3),
                    (5.0, inf),
                    (6.0, 0.2),
                    (7.0, -1.0),
                    (8.0, 0.1),
                ],
            )],
        ),
        ("all_nan", false, vec![Series::new("nan", vec![(0.0, nan), (1.0, nan)])]),
        ("non_positive_log", true, vec![Series::new("neg", vec![(0.0, -1.0), (1.0, 0.0)])]),
        ("huge", false, vec![Series::new("huge", vec![(0.0, -1e300), (1.0, 1e300), (2.0, 1e308)])]),
        ("tiny_span", false, vec![Series::new("tiny", vec![(0.0, 1.0), (1.0, 1.0 + 1e-12)])]),
        ("same_x", false, vec![Series::new("x", vec![(5.0, 1.0), (5.0, 2.0)])]),
        (
            "ten_series",
            false,
            (0..10).map(|i| Series::new(format!("s{i}"), loss_curve(50, 1.0 + i as f64, 0.05, i as f64))).collect(),
        ),
    ];
    for (name, log_y, series) in cases {
        let spec = ChartSpec { title: name.into(), log_y, ..ChartSpec::default() };
        let path = out_path(&format!("plot_degenerate_{name}.png"));
        write_line_chart_png(&path, &spec, &series).unwrap_or_else(|e| panic!("{name}: {e}"));
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 500), "{name}");
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255], "{name}");
        let line_pixels = color_count(&img, PALETTE[0]);
        println!("{name}: {line_pixels} pixels of the first series' color");
    }
    // A single point is drawn as a visible dot (beyond the ~40 legend-sample pixels).
    let px = render_line_chart(&ChartSpec::default(), &[Series::new("", vec![(1.0, 1.0)])]).unwrap();
    let dot = px.chunks(3).filter(|p| *p == PALETTE[0]).count();
    assert!(dot >= 9, "single point drew {dot} pixels");
}

/// A long noisy run with its smoothed curve drawn on top (the usual way to show loss), at
/// twice the default size: text and lines scale, and 20k points render quickly.
#[test]
fn large_noisy_chart() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let raw: Vec<(f64, f64)> = (0..20_000)
        .map(|i| {
            // xorshift noise, uniform in [-1, 1)
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
            let t = i as f64;
            (t * 10.0, 0.08 + 1.2 * (-t / 3000.0).exp() + 0.05 * u)
        })
        .collect();
    let series = [Series::new("loss", raw.clone()), Series::new("loss (moving average, 200)", smooth(&raw, 200))];
    let start = std::time::Instant::now();
    let path = out_path("plot_large_noisy.png");
    write_line_chart_png(&path, &spec(1600, 1000, false), &series).unwrap();
    println!("20k + 20k points at 1600x1000: {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1600, 1000));
    assert!(color_count(&img, PALETTE[0]) > 2000);
    assert!(color_count(&img, PALETTE[1]) > 2000);
}

#[test]
fn bad_sizes_are_errors() {
    let series = [Series::new("a", vec![(0.0, 1.0), (1.0, 2.0)])];
    for (w, h) in [(0, 0), (10, 500), (800, 10), (100_000, 500)] {
        let spec = ChartSpec { width: w, height: h, ..ChartSpec::default() };
        let err = render_line_chart(&spec, &series).unwrap_err();
        println!("{w}x{h}: {err}");
    }
    // Labels wider than a small chart: an error naming the size, not a panic.
    let wide = ChartSpec { width: 200, height: 150, y_label: "y".repeat(10), ..ChartSpec::default() };
    let narrow_values = [Series::new("a", vec![(0.0, 1.0), (1.0, 1.0 + 1e-7)])];
    if let Err(e) = render_line_chart(&wide, &narrow_values) {
        println!("{e}");
    }
}

#[test]
fn smoothing_is_a_centered_moving_average() {
    let points: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, i as f64)).collect();
    assert_eq!(smooth(&points, 1), points);
    assert_eq!(smooth(&points, 0), points);
    let s3: Vec<f64> = smooth(&points, 3).iter().map(|p| p.1).collect();
    assert_eq!(s3, [0.5, 1.0, 2.0, 3.0, 4.0, 4.5]);
    let flat = vec![(0.0, 2.0); 10];
    assert!(smooth(&flat, 4).iter().all(|p| p.1 == 2.0));
    // Non-finite values stay put and are left out of their neighbours' averages.
    let gappy = [(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, f64::INFINITY), (4.0, 5.0)];
    let s = smooth(&gappy, 3);
    assert_eq!(s[0].1, 1.0);
    assert!(s[1].1.is_nan());
    assert_eq!(s[2].1, 3.0);
    assert_eq!(s[3].1, f64::INFINITY);
    assert_eq!(s[4].1, 5.0);
    assert_eq!(s.iter().map(|p| p.0).collect::<Vec<_>>(), [0.0, 1.0, 2.0, 3.0, 4.0]);
    assert!(smooth(&[], 5).is_empty());
}

//! Loss-curve PNGs of a run's metrics.jsonl.

use senseflow::eval::plot::{smooth, write_line_chart_png, ChartSpec, Series};
use senseflow::train::{MetricsLog, RunDir};

/// Plots the given keys of metrics.jsonl (raw and smoothed) to `<run>/loss_curve.png`.
pub fn loss_curves(dir: &RunDir, keys: &[&str], title: &str) -> anyhow::Result<()> {
    let path = dir.path("metrics.jsonl");
    let mut series = Vec::new();
    for key in keys {
        let pts = MetricsLog::read_series(&path, key)?;
        if pts.is_empty() {
            continue;
        }
        let window = (pts.len() / 20).max(1);
        series.push(Series::new(format!("{key} (smoothed)"), smooth(&pts, window)));
    }
    let spec = ChartSpec {
        title: title.to_string(),
        x_label: "step".into(),
        y_label: "loss".into(),
        log_y: true,
        ..Default::default()
    };
    write_line_chart_png(dir.path("loss_curve.png"), &spec, &series)?;
    Ok(())
}

pub fn loss_curve(dir: &RunDir, key: &str, title: &str) -> anyhow::Result<()> {
    loss_curves(dir, &[key], title)
}

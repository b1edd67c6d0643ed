//! A one-line progress display on stderr: step/total, it/s, ETA and the latest losses.
//! Redrawn in place on a terminal; on a pipe or file it prints a line every `every`
//! steps instead, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: String,
    total: u64,
    start: Instant,
    start_step: u64,
    tty: bool,
    every: u64,
}

impl Progress {
    pub fn new(label: &str, start_step: u64, total: u64) -> Self {
        Progress {
            label: label.to_string(),
            total,
            start: Instant::now(),
            start_step,
            tty: std::io::stderr().is_terminal(),
            every: (total / 20).max(1),
        }
    }

    /// Iterations per second since the start (or resume).
    pub fn rate(&self, step: u64) -> f64 {
        (step - self.start_step) as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn update(&self, step: u64, info: &str) {
        let rate = self.rate(step);
        let eta = if rate > 0.0 { (self.total.saturating_sub(step)) as f64 / rate } else { 0.0 };
        let frac = step as f64 / self.total.max(1) as f64;
        let width = 24;
        let filled = ((frac * width as f64) as usize).min(width);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let line = format!("{} [{bar}] {step}/{} {rate:.2} it/s eta {:.0}s {info}", self.label, self.total, eta);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if step >= self.total {
                let _ = writeln!(err);
            }
        } else if step % self.every == 0 || step >= self.total {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

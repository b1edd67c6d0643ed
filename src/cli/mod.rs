//! Command line: one subcommand per task, no math here (the library does the work).
//!
//! Conventions every subcommand follows:
//! - Results go to stdout (tables for people, one JSON object for benches); progress
//!   and errors go to stderr.
//! - An error is printed as ONE line, `error: <message>`, with the causes joined by ": ",
//!   and the exit code is 1. Usage errors keep clap's exit code 2. A panic (a bug) is
//!   also reported on one line, without a backtrace, and exits 1.
//! - `--threads N` (global) sizes the CPU thread pool before any work starts.
//! - A closed stdout (`senseflow inspect big | head`) ends the command quietly.

mod bench;
mod data;
mod distill;
mod forward;
mod inspect;
mod plots;
mod sample_eval;
mod selfcheck;
mod train_aux;
mod train_teacher;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "senseflow", version, about = "SenseFlow distillation engine for flow-matching text-to-image models")]
struct Cli {
    /// CPU threads for the compute pool (default: all cores).
    #[arg(long, global = true, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a safetensors file or a diffusers/transformers model folder.
    Inspect(inspect::Args),
    /// Distill a teacher into a 4-step generator with SenseFlow (default: the built-in demo).
    Distill(distill::Args),
    /// Run the demo distillation with each component removed (paper Table 3 shape).
    Ablate(distill::AblateArgs),
    /// Train the demo world's teacher and text encoder from scratch (flow matching).
    TrainTeacher(train_teacher::Args),
    /// Train the demo's evaluator (the network `eval` measures with).
    TrainEvaluator(train_aux::EvaluatorArgs),
    /// Pre-train the demo's DINOv2-architecture backbone (the discriminator's VFM).
    TrainVit(train_aux::VitArgs),
    /// Sample a PNG grid from a model folder (teacher or distilled generator).
    Sample(sample_eval::SampleArgs),
    /// Measure prompt adherence and FD-T on the demo's fixed prompt set.
    Eval(sample_eval::EvalArgs),
    /// Run one forward pass of a diffusers or transformers (DINOv2, CLIP text) model folder on a safetensors file of inputs.
    Forward(forward::Args),
    /// Time engine kernels and print the results as JSON.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Look at the built-in captioned-shapes dataset.
    #[command(subcommand)]
    Data(data::Data),
    /// Run a quick end-to-end check of the engine on the CPU (gradients, RNG, I/O).
    Selfcheck,
}

pub fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error (a bug in senseflow): {}{at}", one_line(&msg));
    }));
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    senseflow::backend::cpu::init_threads(threads);
    // The whole command runs on a pool thread (see `run_in_pool`).
    match std::panic::catch_unwind(|| senseflow::backend::cpu::run_in_pool(|| run(cli.command))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
        // The hook has printed the message.
        Err(_) => ExitCode::FAILURE,
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Forward(a) => forward::run(&a),
        Command::Distill(a) => distill::run(&a),
        Command::Ablate(a) => distill::ablate(&a),
        Command::TrainTeacher(a) => train_teacher::run(&a),
        Command::Sample(a) => sample_eval::sample(&a),
        Command::Eval(a) => sample_eval::eval(&a),
        Command::TrainEvaluator(a) => train_aux::evaluator(&a),
        Command::TrainVit(a) => train_aux::vit(&a),
        Command::Bench(b) => bench::run(&b),
        Command::Data(d) => data::run(&d),
        Command::Selfcheck => selfcheck::run(),
    }
}

/// The error and its causes on one line. A cause whose text the message already contains
/// (our errors embed their source, e.g. `path: No such file`) is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let s = one_line(&cause.to_string());
        if line.contains(&s) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&s);
    }
    line
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Writes command output to stdout; a reader that went away (broken pipe) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

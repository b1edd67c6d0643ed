//! The `senseflow` binary. All behaviour lives in `cli`; this file only hands over.
//!
//! The global allocator is mimalloc: the engine allocates a fresh buffer per op output
//! (megabytes each, freed a few ops later), and glibc malloc returns such blocks to the
//! kernel and faults them back in on every step; docs/perf/cpu-tiny-mmdit.md has the
//! measurement. Only the binary sets it; the library leaves the choice to its users.

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}

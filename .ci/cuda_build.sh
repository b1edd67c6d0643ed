#!/usr/bin/env bash
# CI fragment: proves that every kernel compiles (sm_90a and sm_80 cubins) and that the
# `cuda` feature builds with its tests, on a machine without a GPU. Called from .ci/run.
#
# Needs: network (apt, PyPI, crates.io) the first time; root or sudo for apt-get.
# Installs: libclang-dev (bindgen), the pinned CUDA 13.0 nvcc in .cuda-toolchain/
# (tools/install_cuda_toolchain.sh). Both steps are skipped when already present.
# Then: cargo build --release --features cuda --tests, and the CPU-only checks of the cuda
# backend (kernel symbols present in the fatbins, errors instead of panics without a driver).
# The GPU parity tests (tests/cuda_parity.rs) are built but not run: CI has no GPU, and on a
# machine without one they only print "SKIPPED: no CUDA device". Run them with
# tools/gpu_bundle.sh on a GPU host.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { printf '\n== %s\n' "$*" >&2; }

step "libclang for bindgen"
if dpkg -s libclang-dev >/dev/null 2>&1; then
    echo "libclang-dev already installed" >&2
else
    sudo_=""
    [[ "$(id -u)" -eq 0 ]] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq libclang-dev >/dev/null
fi

step "CUDA toolchain (pinned nvcc 13.0 from PyPI)"
nvcc="$(tools/install_cuda_toolchain.sh | tail -n 1)"
echo "nvcc: $nvcc" >&2

step "cargo build --release --features cuda --tests"
# Kernels for the default architectures (sm_90a, sm_80) unless the caller overrides them.
export SENSEFLOW_CUDA_ARCHS="${SENSEFLOW_CUDA_ARCHS:-sm_90a,sm_80}"
cargo build --release --features cuda --tests

step "cuda backend checks that need no GPU"
cargo test --release --features cuda --lib backend::cuda

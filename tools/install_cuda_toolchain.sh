#!/usr/bin/env bash
# Installs a project-local nvcc (CUDA 13.0) into .cuda-toolchain/ from NVIDIA's PyPI
# wheels: no GPU, no root and no system toolkit needed. build.rs finds it there.
#
# Invariants:
# - Exactly these pins. nvidia-nvvm must be pinned too: unpinned it pulls a newer cicc
#   whose PTX the 13.0 ptxas rejects. 13.0 is what the GPU hosts' driver (580) JITs and
#   loads; a newer nvcc's output will not load there (docs: PERFORMANCE.md).
# - Idempotent: when every pin is already installed nothing is downloaded.
# - The wheels lay out a CUDA_HOME-like tree at site-packages/nvidia/cu13 (bin/nvcc,
#   bin/ptxas, nvvm/, include/ with crt/, cuda_runtime.h and cccl's cuda/std, lib/).
#   nvcc finds its own include/ through nvcc.profile, so no -I flags are needed.
# - Prints the nvcc path as the last line of stdout.
#
# Usage: tools/install_cuda_toolchain.sh [DEST]   (default: <repo>/.cuda-toolchain)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/.cuda-toolchain}"
python="${PYTHON:-python3}"

pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)

# True when the venv exists and `pip freeze` lists every pin exactly.
pins_installed() {
    [[ -x "$dest/bin/pip" ]] || return 1
    local frozen
    frozen="$("$dest/bin/pip" freeze --disable-pip-version-check 2>/dev/null)" || return 1
    local p
    for p in "${pins[@]}"; do
        grep -qixF "$p" <<<"$frozen" || return 1
    done
}

find_nvcc() {
    local n
    for n in "$dest"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
        [[ -x "$n" ]] && { echo "$n"; return 0; }
    done
    return 1
}

if pins_installed && find_nvcc >/dev/null; then
    echo "cuda toolchain: already installed in $dest" >&2
else
    echo "cuda toolchain: installing ${pins[*]} into $dest" >&2
    [[ -x "$dest/bin/pip" ]] || "$python" -m venv "$dest"
    "$dest/bin/pip" install --disable-pip-version-check --no-input -q "${pins[@]}"
    pins_installed || { echo "cuda toolchain: pip did not install the pinned versions" >&2; exit 1; }
fi

nvcc="$(find_nvcc)" || {
    echo "cuda toolchain: no nvcc under $dest/lib/python3*/site-packages/nvidia/cu13/bin" >&2
    exit 1
}

# Smoke test: one tiny kernel through the full pipeline (cicc, ptxas, fatbinary) for both
# default architectures, so a broken install fails here and not inside cargo.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/smoke.cu" <<'EOF'
#include <cuda_bf16.h>
#include <cuda/std/cstdint>
extern "C" __global__ void smoke(__nv_bfloat16* y, const float* x, cuda::std::uint32_t n) {
    const cuda::std::uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16(x[i]);
}
EOF
"$nvcc" --fatbin -o "$tmp/smoke.fatbin" "$tmp/smoke.cu" \
    -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 || {
    echo "cuda toolchain: nvcc smoke test failed" >&2
    exit 1
}
"$nvcc" --version | tail -n 2 >&2
echo "$nvcc"

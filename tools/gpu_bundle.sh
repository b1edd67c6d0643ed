#!/usr/bin/env bash
# Builds gpu-bundle/: every test binary of `cargo test --release --features cuda`, stripped,
# plus run.sh, which runs them all on a GPU host (no Rust toolchain, no network there) and
# writes a report. Build here, copy the folder there, run `gpu-bundle/run.sh`.
#
# Invariants:
# - Test binaries are found from cargo's JSON messages (never by guessing names in target/).
# - Nothing from the CUDA toolkit is shipped: run.sh finds the host's libcublas.so.13 and
#   libcublasLt.so.13 (toolkit lib64 or a pip site-packages nvidia/cu13/lib or
#   nvidia/cublas/lib) and puts their folder on LD_LIBRARY_PATH; libcuda comes with the driver.
# - The bundle records the commit, build date, nvcc and target architectures; fails if it
#   would exceed 60 MB.
# - Tests that read fixtures use the absolute path this checkout had at build time; the
#   bundle carries tests/fixtures and run.sh links them there when that path is free.
#
# Usage: tools/gpu_bundle.sh [OUT_DIR]   (default: <repo>/gpu-bundle)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/gpu-bundle}"
max_mb=60

echo "building release test binaries with --features cuda ..." >&2
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test --release --features cuda --no-run --message-format=json >"$json"

rm -rf "$out"
mkdir -p "$out/bin"
python3 - "$json" >"$out/.targets" <<'PY'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    kind = m["target"]["kind"][0]
    name = f"{kind}-{m['target']['name']}"
    if name not in seen:
        seen.add(name)
        print(f"{name}\t{m['executable']}")
PY
while IFS=$'\t' read -r name exe; do
    strip --strip-all -o "$out/bin/$name" "$exe"
    echo "  $name" >&2
done <"$out/.targets"
rm "$out/.targets"

if [[ -d tests/fixtures ]]; then
    cp -r tests/fixtures "$out/fixtures"
fi

nvcc="$(ls "$root"/.cuda-toolchain/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1 || true)"
{
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!gpu-bundle' || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "rustc: $(rustc --version)"
    echo "nvcc: $([[ -n "$nvcc" ]] && "$nvcc" --version | tail -n 1 || echo "${NVCC:-from PATH / CUDA_HOME}")"
    echo "archs: ${SENSEFLOW_CUDA_ARCHS:-sm_90a,sm_80}"
} >"$out/BUILD_INFO"
echo "$root" >"$out/MANIFEST_DIR"

cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every test binary of this bundle and writes a report into $OUT (when set, e.g. by
# the device runner) or ./report: BUILD_INFO, the device (nvidia-smi), the CUDA libraries
# used, one log per binary and summary.md. Exit status 1 if any test failed, or if the GPU
# tests were skipped on a host that has a GPU (a library not found, a driver problem).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
report="${OUT:-$here/report}"
mkdir -p "$report"

# ---- CUDA libraries: cudarc dlopens bare names, so their folder goes on LD_LIBRARY_PATH.
dirs=()
[[ -n "${CUDA_HOME:-}" ]] && dirs+=("$CUDA_HOME/lib64" "$CUDA_HOME/lib")
dirs+=(/usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/*/lib /usr/lib/x86_64-linux-gnu /usr/lib64)
for py in "${PYTHON:-}" python3 python; do
    [[ -n "$py" ]] && command -v "$py" >/dev/null 2>&1 || continue
    while IFS= read -r sp; do
        dirs+=("$sp/nvidia/cu13/lib" "$sp/nvidia/cublas/lib" "$sp/nvidia/nvtx/lib")
    done < <("$py" -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
done
find_lib() {
    local d
    for d in "${dirs[@]}"; do
        [[ -e "$d/$1" ]] && { echo "$d"; return 0; }
    done
    # Last resort: any copy on this filesystem (e.g. a venv in a home directory).
    local f
    f="$(timeout 60 find / -xdev -name "$1" -print -quit 2>/dev/null)"
    [[ -n "$f" ]] && dirname "$f"
}
libpath=""
{
    for lib in libcublas.so.13 libcublasLt.so.13 libnvToolsExt.so.1; do
        d="$(find_lib "$lib" || true)"
        echo "$lib: ${d:-NOT FOUND}"
        [[ -n "$d" && ":$libpath:" != *":$d:"* ]] && libpath="$libpath:$d"
    done
} >"$report/libraries.txt"
export LD_LIBRARY_PATH="${libpath#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---- fixtures at the build-time path the tests were compiled with.
manifest="$(cat "$here/MANIFEST_DIR")"
if [[ -d "$here/fixtures" && ! -e "$manifest/tests/fixtures" ]]; then
    mkdir -p "$manifest/tests" 2>/dev/null && ln -s "$here/fixtures" "$manifest/tests/fixtures" 2>/dev/null ||
        echo "warning: cannot link fixtures at $manifest/tests/fixtures: fixture tests will fail" >&2
fi

# ---- device
gpu="none visible"
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -n 8)"
fi

# ---- tests
passed=0 failed=0 skipped=0 bad_bins=()
rows=()
for bin in "$here"/bin/*; do
    name="$(basename "$bin")"
    log="$report/$name.log"
    start=$(date +%s)
    timeout "${TEST_TIMEOUT:-1200}" "$bin" --test-threads=1 --nocapture >"$log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    p=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
    f=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
    s=$(grep -c 'SKIPPED: no CUDA device' "$log")
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    [[ $rc -ne 0 ]] && bad_bins+=("$name (exit $rc)")
    rows+=("| $name | $rc | $p | $f | $s | ${secs}s |")
done

{
    echo "# GPU test report"
    echo
    echo '```'
    cat "$here/BUILD_INFO"
    echo "run: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "device: $gpu"
    cat "$report/libraries.txt"
    echo '```'
    echo
    echo "| binary | exit | passed (libtest count, includes skipped) | failed | skipped (no GPU) | time |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "total: $passed passed, $failed failed, $skipped GPU tests skipped"
    [[ $skipped -gt 0 ]] && echo "NOTE: skipped tests did not run: they are not passes."
    [[ ${#bad_bins[@]} -gt 0 ]] && echo "binaries with a nonzero exit: ${bad_bins[*]}"
    echo
    echo "Per-kernel errors: grep 'budget' $report/bin-*.log $report/test-*.log"
} >"$report/summary.md"
cat "$report/summary.md"

if [[ $failed -gt 0 || ${#bad_bins[@]} -gt 0 ]]; then
    exit 1
fi
if [[ $skipped -gt 0 && "$gpu" != "none visible" ]]; then
    echo "error: a GPU is visible but the CUDA tests were skipped (libcuda not loadable?)" >&2
    exit 1
fi
RUN
chmod +x "$out/run.sh"

size_kb=$(du -sk "$out" | cut -f1)
echo "bundle: $out ($((size_kb / 1024)) MB)" >&2
if (( size_kb > max_mb * 1024 )); then
    echo "error: the bundle is over ${max_mb} MB" >&2
    exit 1
fi

//! Build script. Without the `cuda` feature it does nothing, so the default build needs
//! no CUDA toolkit and no libclang.
//!
//! With `--features cuda`:
//! - finds nvcc: env `NVCC`, then `$CUDA_HOME/bin/nvcc` (or `$CUDA_PATH`), then `PATH`,
//!   then the project-local toolchain `.cuda-toolchain/` (tools/install_cuda_toolchain.sh);
//! - compiles every `kernels/*.cu` into `$OUT_DIR/<name>.fatbin` with one `-gencode` per
//!   architecture in env `SENSEFLOW_CUDA_ARCHS` (default `sm_90a,sm_80`; an entry
//!   `compute_XX` embeds PTX instead of a cubin). Cubins, not PTX: the GPU hosts' driver
//!   only JITs PTX up to its own ISA;
//! - writes `$OUT_DIR/kernels.rs`: `FATBINS: &[(&str, &[u8])]`, one `include_bytes!` per
//!   file, name = file stem (= the op family);
//! - runs bindgen on `kernels/include/params.h` into `$OUT_DIR/params.rs`;
//! - never calls nvidia-smi or anything else that needs a GPU;
//! - on failure prints the full nvcc command line and nvcc's output.
//!
//! Extra nvcc flags can be passed in env `SENSEFLOW_NVCC_FLAGS` (whitespace separated).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const DEFAULT_ARCHS: &str = "sm_90a,sm_80";

    /// Flags every kernel file is compiled with. `-lineinfo` keeps source correlation for
    /// ncu at no runtime cost; no `--use_fast_math` (the RNG contract forbids it, see
    /// kernels/include/philox.cuh); `--no-compress` keeps kernel names readable in the
    /// fatbin, which a CPU-only test uses to check that every launcher's kernel exists.
    const COMMON_FLAGS: &[&str] =
        &["--fatbin", "-std=c++17", "-O3", "-lineinfo", "--no-compress", "-Xptxas=-warn-spills"];

    pub fn build() {
        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let kernels = root.join("kernels");
        let include = kernels.join("include");

        for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "SENSEFLOW_CUDA_ARCHS", "SENSEFLOW_NVCC_FLAGS"] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        // A directory is rescanned for any change, so new files are picked up too.
        println!("cargo:rerun-if-changed={}", kernels.display());
        println!("cargo:rerun-if-changed={}", include.display());

        let sources = list(&kernels, &["cu"]);
        for f in sources.iter().chain(&list(&include, &["cuh", "h"])) {
            println!("cargo:rerun-if-changed={}", f.display());
        }

        let nvcc = find_nvcc(&root);
        let archs = env::var("SENSEFLOW_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
        let gencode = gencode_flags(&archs);
        let extra: Vec<String> = env::var("SENSEFLOW_NVCC_FLAGS")
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default();

        compile_all(&nvcc, &sources, &include, &out, &gencode, &extra);
        write_kernels_rs(&sources, &out);
        bindgen_params(&include, &out);
    }

    /// Files in `dir` (not recursive) with one of `exts`, sorted for a stable build.
    fn list(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))
            .collect();
        v.sort();
        v
    }

    fn find_nvcc(root: &Path) -> PathBuf {
        let mut tried = Vec::new();
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = env::var_os("NVCC") {
            candidates.push(PathBuf::from(p));
        }
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(h) = env::var_os(var) {
                candidates.push(PathBuf::from(h).join("bin").join("nvcc"));
            }
        }
        if let Some(path) = env::var_os("PATH") {
            candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
        }
        // The pip wheels put nvcc under lib/python3.X/site-packages/nvidia/cu13/bin.
        let local = root.join(".cuda-toolchain").join("lib");
        if let Ok(entries) = std::fs::read_dir(&local) {
            let mut pys: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            pys.sort();
            for py in pys {
                candidates.push(py.join("site-packages/nvidia/cu13/bin/nvcc"));
            }
        }
        for c in candidates {
            if c.is_file() {
                return c;
            }
            tried.push(c.display().to_string());
        }
        panic!(
            "\n\n--features cuda needs nvcc (CUDA 13.0) to compile kernels/*.cu, and none was found.\n\
             Install the pinned project-local toolchain (no GPU or root needed):\n\n    \
             tools/install_cuda_toolchain.sh\n\n\
             or point NVCC at an nvcc binary, or CUDA_HOME at a CUDA 13.0 toolkit.\n\
             bindgen also needs libclang (Debian/Ubuntu: apt-get install -y libclang-dev).\n\
             Looked in env NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH and {}:\n  {}\n",
            local.display(),
            if tried.is_empty() { "(nothing)".to_string() } else { tried.join("\n  ") }
        );
    }

    /// `sm_90a` → `-gencode=arch=compute_90a,code=sm_90a`; `compute_90` → PTX for 9.0.
    fn gencode_flags(archs: &str) -> Vec<String> {
        let flags: Vec<String> = archs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                if let Some(v) = a.strip_prefix("sm_") {
                    format!("-gencode=arch=compute_{v},code=sm_{v}")
                } else if let Some(v) = a.strip_prefix("compute_") {
                    format!("-gencode=arch=compute_{v},code=compute_{v}")
                } else {
                    panic!(
                        "SENSEFLOW_CUDA_ARCHS entry '{a}' is neither sm_XX nor compute_XX \
                         (example: SENSEFLOW_CUDA_ARCHS=sm_90a,sm_80)"
                    )
                }
            })
            .collect();
        assert!(!flags.is_empty(), "SENSEFLOW_CUDA_ARCHS='{archs}' names no architecture");
        flags
    }

    /// Compiles every source, a few at a time (nvcc is single threaded).
    fn compile_all(nvcc: &Path, sources: &[PathBuf], include: &Path, out: &Path, gencode: &[String], extra: &[String]) {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).min(sources.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failures = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(src) = sources.get(i) else { break };
                    if let Err(msg) = compile_one(nvcc, src, include, out, gencode, extra) {
                        failures.lock().expect("no panics while holding the lock").push(msg);
                    }
                });
            }
        });
        let failures = failures.into_inner().expect("no panics while holding the lock");
        if !failures.is_empty() {
            panic!("\n\nnvcc failed on {} kernel file(s):\n\n{}", failures.len(), failures.join("\n\n"));
        }
    }

    fn compile_one(
        nvcc: &Path,
        src: &Path,
        include: &Path,
        out: &Path,
        gencode: &[String],
        extra: &[String],
    ) -> Result<(), String> {
        let stem = src.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
        let dst = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(nvcc);
        cmd.args(COMMON_FLAGS).arg("-I").arg(include).args(gencode).args(extra).arg("-o").arg(&dst).arg(src);
        let line = format!("{cmd:?}").replace('"', "");
        let output = cmd.output().map_err(|e| format!("could not run {line}\n{e}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "command: {line}\nstatus: {}\n--- nvcc stdout ---\n{}\n--- nvcc stderr ---\n{stderr}",
                output.status,
                String::from_utf8_lossy(&output.stdout)
            ));
        }
        // Warnings (spills included) stay visible in `cargo build -vv` and in CI logs.
        for l in stderr.lines().filter(|l| !l.trim().is_empty()) {
            println!("cargo:warning={stem}.cu: {l}");
        }
        Ok(())
    }

    fn write_kernels_rs(sources: &[PathBuf], out: &Path) {
        let mut s = String::from("// Generated by build.rs: one fatbin per kernels/*.cu, named by file stem.\n");
        s.push_str("pub const FATBINS: &[(&str, &[u8])] = &[\n");
        for src in sources {
            let stem = src.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
            let path = out.join(format!("{stem}.fatbin"));
            writeln!(s, "    ({stem:?}, include_bytes!({:?})),", path.display().to_string()).expect("write to String");
        }
        s.push_str("];\n");
        std::fs::write(out.join("kernels.rs"), s).expect("write kernels.rs");
    }

    fn bindgen_params(include: &Path, out: &Path) {
        let header = include.join("params.h");
        let bindings = bindgen::Builder::default()
            .header(header.display().to_string())
            .clang_arg("-xc")
            .clang_arg("-std=c11")
            .allowlist_type("sf_.*")
            .allowlist_var("SF_.*")
            .rustified_enum("sf_.*_op")
            .derive_default(true)
            .derive_debug(true)
            .layout_tests(true)
            .generate_comments(true)
            .use_core()
            .generate()
            .unwrap_or_else(|e| {
                panic!(
                    "\n\nbindgen failed on {}: {e}\nbindgen needs libclang (Debian/Ubuntu: \
                     apt-get install -y libclang-dev; or set LIBCLANG_PATH to the folder holding \
                     libclang.so).\n",
                    header.display()
                )
            });
        bindings.write_to_file(out.join("params.rs")).expect("write params.rs");
    }
}

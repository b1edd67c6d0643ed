//! safetensors I/O and diffusers folders: bit-exact round trips in every dtype, zero-copy
//! loading, atomic saves, sharded folders, and one-line errors that name the file, key and
//! shapes for each way a file can be broken.

use senseflow::io::{self, ModelFolder};
use senseflow::rng::Philox;
use senseflow::tensor::{CpuF32, CpuStorage, Storage};
use senseflow::{DType, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("senseflow-io-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

fn save_named(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let v: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.to_string(), *t)).collect();
    io::save(path, &v, None)
}

/// A safetensors file from a hand-written header (padded to 8 bytes) and data section.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// The error's message, checked to be one line that names the file.
fn message(err: Error, path: &Path) -> String {
    let msg = err.to_string();
    println!("{msg}");
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(msg.contains(&path.display().to_string()), "error does not name {}: {msg}", path.display());
    msg
}

fn load_err(path: &Path) -> String {
    message(io::load(path).expect_err("loading a broken file must fail"), path)
}

#[test]
fn round_trip_is_bit_exact_in_every_dtype() -> Result<()> {
    let dir = TempDir::new("roundtrip");
    let path = dir.join("w.safetensors");
    let x = randn(&[3, 5, 7], 1);
    let bf = randn(&[4, 9], 2).to_dtype(DType::BF16)?;
    let hf = randn(&[11], 3).to_dtype(DType::F16)?;
    // A transposed view is saved as its logical (contiguous) values.
    let xt = x.transpose(0, 2)?;
    let scalar = Tensor::scalar(-0.25);
    let empty = Tensor::zeros(&[0, 3]);
    let all = [("x", &x), ("bf", &bf), ("hf", &hf), ("xt", &xt), ("s", &scalar), ("empty", &empty)];
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let v: Vec<(String, &Tensor)> = all.iter().map(|(k, t)| (k.to_string(), *t)).collect();
    io::save(&path, &v, Some(meta.clone()))?;

    let f = io::load(&path)?;
    assert_eq!(f.len(), all.len());
    assert_eq!(f.metadata(), &meta);
    for (name, t) in all {
        let back = f.get(name)?;
        assert_eq!(back.dtype(), t.dtype(), "{name}");
        assert_eq!(back.shape(), t.shape(), "{name}");
        assert_eq!(back.to_bytes()?, t.to_bytes()?, "{name}: bytes differ");
        assert_eq!(f.meta(name).unwrap().shape, t.shape());
    }
    // get_as converts; same dtype stays the zero-copy view.
    assert_eq!(f.get_as("bf", DType::F32)?.to_vec_f32()?, bf.to_vec_f32()?);
    assert_eq!(f.get_as("x", DType::F32)?.dtype(), DType::F32);
    Ok(())
}

#[test]
fn loaded_tensors_are_zero_copy_views_of_the_map() -> Result<()> {
    let dir = TempDir::new("zerocopy");
    let path = dir.join("w.safetensors");
    // Mixed dtypes with odd sizes: f32 data must still land 4-aligned.
    let h = randn(&[3], 4).to_dtype(DType::F16)?;
    let x = randn(&[5, 7], 5);
    let y = randn(&[3, 3], 6);
    save_named(&path, &[("a_half", &h), ("x", &x), ("y", &y)])?;
    let f = io::load(&path)?;
    for name in ["x", "y", "a_half"] {
        let t = f.get(name)?;
        assert!(matches!(&*t.read_storage(), Storage::Cpu(CpuStorage::Mapped { .. })), "{name} is not mapped");
    }
    let t = f.get("y")?;
    // f32 reads borrow the mapped bytes (no copy) because saved f32 data is 4-aligned.
    assert!(matches!(t.cpu_f32()?, CpuF32::Borrowed { .. }), "f32 data was copied");
    assert_eq!(t.to_vec_f32()?, y.to_vec_f32()?);
    // Ops read mapped tensors like any other.
    assert_eq!(t.matmul(&t)?.to_vec_f32()?, y.matmul(&y)?.to_vec_f32()?);
    Ok(())
}

#[test]
fn atomic_save_replaces_the_file_and_leaves_no_temp_file() -> Result<()> {
    let dir = TempDir::new("atomic");
    let path = dir.join("ckpt.safetensors");
    let a = randn(&[4, 4], 7);
    let b = randn(&[2, 3], 8);
    save_named(&path, &[("w", &a)])?;
    let old = io::load(&path)?.get("w")?;
    save_named(&path, &[("w", &b), ("extra", &a)])?;
    assert_eq!(dir.entries(), vec!["ckpt.safetensors"]);
    let f = io::load(&path)?;
    assert_eq!(f.get("w")?.to_vec_f32()?, b.to_vec_f32()?);
    assert_eq!(f.len(), 2);
    // A tensor mapped from the replaced file still reads the old contents.
    assert_eq!(old.to_vec_f32()?, a.to_vec_f32()?);

    // A failing save (duplicate names) leaves the existing file and no temp behind.
    let dup = vec![("w".to_string(), &a), ("w".to_string(), &b)];
    let msg = message(io::save(&path, &dup, None).unwrap_err(), &path);
    assert!(msg.contains("'w' appears twice"), "{msg}");
    assert_eq!(dir.entries(), vec!["ckpt.safetensors"]);
    assert_eq!(io::load(&path)?.len(), 2);

    io::atomic_write_json(dir.join("state.json"), &serde_json::json!({"step": 3}))?;
    assert_eq!(dir.entries(), vec!["ckpt.safetensors", "state.json"]);
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(s["step"], 3);
    Ok(())
}

#[test]
fn truncated_file_is_reported_with_the_tensor_cut_off() -> Result<()> {
    let dir = TempDir::new("truncated");
    let path = dir.join("w.safetensors");
    save_named(&path, &[("first", &randn(&[8], 9)), ("second.weight", &randn(&[4, 6], 10))])?;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("truncated") && msg.contains("'second.weight'") && msg.contains("[4, 6]"), "{msg}");

    std::fs::write(&path, &bytes[..5]).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("truncated file: 5 bytes"), "{msg}");
    std::fs::write(&path, b"").unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("truncated file: 0 bytes"), "{msg}");
    Ok(())
}

#[test]
fn corrupt_header_json_is_reported() {
    let dir = TempDir::new("garbage");
    let path = dir.join("w.safetensors");
    std::fs::write(&path, raw_file("{\"w\": {\"dtype\": \"F32\", garbage", &[0; 16])).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("corrupt header JSON"), "{msg}");

    std::fs::write(&path, raw_file(r#"{"w":{"dtype":"NOPE","shape":[2],"data_offsets":[0,8]}}"#, &[0; 8])).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("corrupt header JSON") && msg.contains("NOPE"), "{msg}");
}

#[test]
fn header_length_past_the_end_is_reported() {
    let dir = TempDir::new("hdrlen");
    let path = dir.join("w.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}      ");
    std::fs::write(&path, &bytes).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("header length 1000 bytes runs past the end of the file (16 bytes)"), "{msg}");
    // A random 8-byte prefix (here: text) reads as an absurd length.
    std::fs::write(&path, b"this is not a safetensors file").unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("runs past the end of the file"), "{msg}");
}

#[test]
fn offsets_out_of_range_name_the_tensor() {
    let dir = TempDir::new("offsets");
    let path = dir.join("w.safetensors");
    // Shape says 2 f32 (8 bytes), offsets say 12.
    std::fs::write(&path, raw_file(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}"#, &[0; 12])).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("'w'") && msg.contains("need 8 bytes"), "{msg}");
    // Two tensors overlapping.
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    std::fs::write(&path, raw_file(h, &[0; 12])).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("'b'") && msg.contains("overlap"), "{msg}");
    // Trailing bytes no tensor covers.
    std::fs::write(&path, raw_file(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 16])).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("8 bytes after the last tensor"), "{msg}");
}

#[test]
fn non_float_dtypes_are_refused_except_i64_token_ids() -> Result<()> {
    let dir = TempDir::new("dtype");
    let path = dir.join("ids.safetensors");
    let ids: Vec<u8> = [3i64, -1, 49407].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut data = ids.clone();
    data.extend(2.5f64.to_le_bytes());
    let h = r#"{"ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},"d":{"dtype":"F64","shape":[1],"data_offsets":[24,32]}}"#;
    std::fs::write(&path, raw_file(h, &data)).unwrap();
    let f = io::load(&path)?;
    assert_eq!(f.get_i64("ids")?, vec![3, -1, 49407]);
    let msg = message(f.get("ids").unwrap_err(), &path);
    assert!(msg.contains("'ids'") && msg.contains("dtype I64") && msg.contains("F32, BF16 or F16"), "{msg}");
    let msg = message(f.get("d").unwrap_err(), &path);
    assert!(msg.contains("'d'") && msg.contains("dtype F64"), "{msg}");
    let msg = message(f.get_i64("d").unwrap_err(), &path);
    assert!(msg.contains("'d'") && msg.contains("expected I64"), "{msg}");
    Ok(())
}

#[test]
fn missing_key_and_wrong_shape_name_the_key_and_shapes() -> Result<()> {
    let dir = TempDir::new("keys");
    let path = dir.join("w.safetensors");
    save_named(&path, &[("proj.weight", &randn(&[3, 5], 11))])?;
    let f = io::load(&path)?;
    let msg = message(f.get("proj.bias").unwrap_err(), &path);
    assert!(msg.contains("missing tensor 'proj.bias'"), "{msg}");
    let msg = message(f.get_checked("proj.weight", &[5, 3]).unwrap_err(), &path);
    assert!(msg.contains("'proj.weight' has shape [3, 5], expected [5, 3]"), "{msg}");
    assert_eq!(f.get_checked("proj.weight", &[3, 5])?.shape(), &[3, 5]);
    Ok(())
}

/// A sharded diffusers folder: config.json, two shards, and the index that maps names.
fn sharded_folder(dir: &TempDir) -> Result<Vec<(String, Tensor)>> {
    let tensors: Vec<(String, Tensor)> = vec![
        ("pos_embed.proj.weight".into(), randn(&[8, 4, 2, 2], 20)),
        ("pos_embed.proj.bias".into(), randn(&[8], 21)),
        ("transformer_blocks.0.attn.to_q.weight".into(), randn(&[8, 8], 22).to_dtype(DType::BF16)?),
        ("proj_out.weight".into(), randn(&[16, 8], 23).to_dtype(DType::F16)?),
    ];
    let (s1, s2) = tensors.split_at(2);
    let shard = |ts: &[(String, Tensor)], name: &str| {
        let v: Vec<(String, &Tensor)> = ts.iter().map(|(k, t)| (k.clone(), t)).collect();
        io::save(dir.join(name), &v, None)
    };
    shard(s1, "diffusion_pytorch_model-00001-of-00002.safetensors")?;
    shard(s2, "diffusion_pytorch_model-00002-of-00002.safetensors")?;
    let mut map = serde_json::Map::new();
    for (k, _) in s1 {
        map.insert(k.clone(), "diffusion_pytorch_model-00001-of-00002.safetensors".into());
    }
    for (k, _) in s2 {
        map.insert(k.clone(), "diffusion_pytorch_model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    io::atomic_write_json(dir.join("diffusion_pytorch_model.safetensors.index.json"), &index)?;
    let config =
        serde_json::json!({"_class_name": "SD3Transformer2DModel", "_diffusers_version": "0.31.0", "num_layers": 1});
    io::atomic_write_json(dir.join("config.json"), &config)?;
    Ok(tensors)
}

#[test]
fn sharded_diffusers_folder_loads_every_key() -> Result<()> {
    let dir = TempDir::new("sharded");
    let tensors = sharded_folder(&dir)?;
    let folder = ModelFolder::open(&dir.0)?;
    assert_eq!(folder.class_name(), Some("SD3Transformer2DModel"));
    assert_eq!(folder.config()?["num_layers"], 1);
    assert_eq!(folder.files().len(), 2);
    let mut want: Vec<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    want.sort_unstable();
    assert_eq!(folder.keys().collect::<Vec<_>>(), want);
    for (k, t) in &tensors {
        let got = folder.get_checked(k, t.shape())?;
        assert_eq!(got.dtype(), t.dtype());
        assert_eq!(got.to_bytes()?, t.to_bytes()?, "{k}");
    }
    assert_eq!(folder.get_as("proj_out.weight", DType::F32)?.dtype(), DType::F32);
    let msg = message(folder.get("nope").unwrap_err(), &dir.0);
    assert!(msg.contains("missing tensor 'nope'"), "{msg}");
    let shard2 = dir.join("diffusion_pytorch_model-00002-of-00002.safetensors");
    let msg = message(folder.get_checked("proj_out.weight", &[8, 16]).unwrap_err(), &shard2);
    assert!(msg.contains("'proj_out.weight' has shape [16, 8], expected [8, 16]"), "{msg}");
    Ok(())
}

#[test]
fn check_keys_lists_missing_unexpected_and_mismatched_names() -> Result<()> {
    let dir = TempDir::new("checkkeys");
    let tensors = sharded_folder(&dir)?;
    let folder = ModelFolder::open(&dir.0)?;
    let exact: Vec<(String, Vec<usize>)> = tensors.iter().map(|(k, t)| (k.clone(), t.shape().to_vec())).collect();
    folder.check_keys(&exact)?;

    let mut expected = exact.clone();
    expected.retain(|(k, _)| k != "pos_embed.proj.bias"); // now unexpected
    expected.push(("norm_out.linear.weight".into(), vec![16, 8])); // missing
    expected.iter_mut().find(|(k, _)| k == "proj_out.weight").unwrap().1 = vec![8, 16]; // mismatch
    let msg = message(folder.check_keys(&expected).unwrap_err(), &dir.0);
    assert!(msg.contains("1 missing: norm_out.linear.weight"), "{msg}");
    assert!(msg.contains("1 unexpected: pos_embed.proj.bias"), "{msg}");
    assert!(msg.contains("1 with wrong shape: proj_out.weight [16, 8] (expected [8, 16])"), "{msg}");

    // Long lists are cut at 20 names with a count of the rest.
    let mut many = exact.clone();
    many.extend((0..25).map(|i| (format!("block.{i:02}.weight"), vec![1])));
    let msg = message(folder.check_keys(&many).unwrap_err(), &dir.0);
    assert!(msg.contains("25 missing: block.00.weight") && msg.contains("block.19.weight, ... and 5 more"), "{msg}");
    assert!(!msg.contains("block.20.weight"), "{msg}");

    // The same check on a single file.
    let f = io::load(dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"))?;
    let msg = message(f.check_keys(&exact).unwrap_err(), f.path());
    assert!(msg.contains("2 missing") && !msg.contains("unexpected"), "{msg}");
    Ok(())
}

#[test]
fn folder_weight_discovery() -> Result<()> {
    let w = randn(&[2, 2], 30);
    // The only *.safetensors in a folder (a variant name), no config.json.
    let dir = TempDir::new("variant");
    save_named(&dir.join("diffusion_pytorch_model.fp16.safetensors"), &[("w", &w)])?;
    let folder = ModelFolder::open(&dir.0)?;
    assert_eq!(folder.keys().collect::<Vec<_>>(), vec!["w"]);
    assert_eq!(folder.class_name(), None);
    let msg = message(folder.config().unwrap_err(), &dir.join("config.json"));
    assert!(msg.contains("not found"), "{msg}");

    // The standard name wins over other files; transformers' class comes from `architectures`.
    save_named(&dir.join("model.safetensors"), &[("v", &w)])?;
    io::atomic_write_json(dir.join("config.json"), &serde_json::json!({"architectures": ["Dinov2Model"]}))?;
    let folder = ModelFolder::open(&dir.0)?;
    assert_eq!(folder.keys().collect::<Vec<_>>(), vec!["v"]);
    assert_eq!(folder.class_name(), Some("Dinov2Model"));

    // Two candidates and no index: refuse, naming both.
    let dir = TempDir::new("ambiguous");
    save_named(&dir.join("a.safetensors"), &[("w", &w)])?;
    save_named(&dir.join("b.safetensors"), &[("w", &w)])?;
    let msg = message(ModelFolder::open(&dir.0).unwrap_err(), &dir.0);
    assert!(msg.contains("a.safetensors, b.safetensors"), "{msg}");

    // No weights at all; not a folder.
    let empty = TempDir::new("empty");
    let msg = message(ModelFolder::open(&empty.0).unwrap_err(), &empty.0);
    assert!(msg.contains("no weights"), "{msg}");
    let missing = empty.join("absent");
    let msg = message(ModelFolder::open(&missing).unwrap_err(), &missing);
    assert!(msg.contains("no such directory"), "{msg}");

    // An index that points a key at a shard without it; a corrupt config.json.
    let dir = TempDir::new("badindex");
    save_named(&dir.join("s1.safetensors"), &[("w", &w)])?;
    let index = serde_json::json!({"weight_map": {"w": "s1.safetensors", "ghost": "s1.safetensors"}});
    io::atomic_write_json(dir.join("model.safetensors.index.json"), &index)?;
    let index_path = dir.join("model.safetensors.index.json");
    let msg = message(ModelFolder::open(&dir.0).unwrap_err(), &index_path);
    assert!(msg.contains("'ghost' in s1.safetensors"), "{msg}");
    let index = serde_json::json!({"weight_map": {"w": "../s1.safetensors"}});
    io::atomic_write_json(&index_path, &index)?;
    let msg = message(ModelFolder::open(&dir.0).unwrap_err(), &index_path);
    assert!(msg.contains("not a file name in this folder"), "{msg}");
    std::fs::write(dir.join("config.json"), "{ broken").unwrap();
    let msg = message(ModelFolder::open(&dir.0).unwrap_err(), &dir.join("config.json"));
    assert!(msg.contains("corrupt JSON"), "{msg}");
    Ok(())
}

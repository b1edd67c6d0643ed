//! The data layer: captioned shapes (determinism, captions, vocabulary, pixel statistics),
//! the word-level tokenizer, image folders (loading and every error case) and PNG grids.

use senseflow::data::image_folder::{load_image, METADATA_FILE};
use senseflow::data::png::{grid_rgb8, to_u8, write_png};
use senseflow::data::shapes::{
    all_labels, all_prompts, caption_of, parse_caption, vocabulary, Color, Position, Shape, ShapeLabel, Size,
};
use senseflow::data::tokenizer::{split_words, Tokenizer, DEFAULT_MAX_LEN, UNK};
use senseflow::data::{drop_captions, write_png_grid, GridLayout, ImageFolder, ShapesConfig, ShapesDataset};
use senseflow::rng::Philox;
use senseflow::Tensor;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh, empty directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("senseflow-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shapes(seed: u64) -> ShapesDataset {
    ShapesDataset::new(ShapesConfig::default(), seed).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec_f32().unwrap().iter().map(|v| v.to_bits()).collect()
}

// ---- shapes: determinism -----------------------------------------------------------------

#[test]
fn shapes_sample_is_a_function_of_seed_and_index() {
    let (a, b) = (shapes(42), shapes(42));
    for i in [0u64, 1, 17, 1 << 40] {
        let (ia, ca, la) = a.sample(i);
        let (ib, cb, lb) = b.sample(i);
        assert_eq!(ia.shape(), &[3, 32, 32]);
        assert_eq!(bits(&ia), bits(&ib), "sample {i} differs between two datasets");
        assert_eq!((ca, la), (cb, lb));
        assert_eq!(a.label(i), la, "label() agrees with sample()");
    }
    // Another seed, or a neighbouring index, gives another image.
    assert_ne!(bits(&a.sample(3).0), bits(&shapes(43).sample(3).0));
    assert_ne!(bits(&a.sample(3).0), bits(&a.sample(4).0));
}

#[test]
fn shapes_batch_equals_stacked_samples_at_any_thread_count() {
    let ds = shapes(7);
    let indices = [9u64, 0, 9, 123_456_789_012, 5, 2, 31, 8];
    let stacked: Vec<u32> = indices.iter().flat_map(|&i| bits(&ds.sample(i).0)).collect();
    let mut results = Vec::new();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let (images, captions, labels) = pool.install(|| ds.batch(&indices));
        assert_eq!(images.shape(), &[8, 3, 32, 32]);
        assert_eq!(bits(&images), stacked, "batch with {threads} threads ≠ stacked samples");
        for (k, &i) in indices.iter().enumerate() {
            let (_, c, l) = ds.sample(i);
            assert_eq!((&captions[k], labels[k]), (&c, l));
        }
        results.push(bits(&images));
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn shapes_config_is_validated_and_size_is_configurable() {
    for bad in [ShapesConfig { size: 8, supersample: 4 }, ShapesConfig { size: 32, supersample: 0 }] {
        let err = ShapesDataset::new(bad.clone(), 0).err().expect("invalid config accepted");
        println!("{bad:?}: {err}");
    }
    let ds = ShapesDataset::new(ShapesConfig { size: 48, supersample: 2 }, 0).unwrap();
    let (images, _, _) = ds.batch(&[0, 1]);
    assert_eq!(images.shape(), &[2, 3, 48, 48]);
    assert_eq!(ds.mask(1).shape(), &[48, 48]);
    // The label is drawn before any image-size-dependent numbers: same seed, same labels.
    assert_eq!(ds.label(1), shapes(0).label(1));
}

// ---- shapes: captions and vocabulary -----------------------------------------------------

#[test]
fn shapes_every_caption_parses_back_to_its_label() {
    for label in all_labels() {
        assert_eq!(parse_caption(&caption_of(&label)), Some(label));
        assert_eq!(ShapeLabel::from_index(label.index()), Some(label));
    }
    let ds = shapes(1);
    for i in 0..300 {
        let label = ds.label(i);
        assert_eq!(parse_caption(&caption_of(&label)), Some(label));
    }
    let free_form = parse_caption("A small red triangle, at the Top-Left.").unwrap();
    assert_eq!(
        free_form,
        ShapeLabel { shape: Shape::Triangle, color: Color::Red, position: Position::TopLeft, size: Size::Small }
    );
    assert_eq!(caption_of(&free_form), "a small red triangle at the top left");
    for bad in [
        "",
        "a red triangle at the top left",
        "a small red triangle",
        "a small red triangle at the top middle",
        "the small red triangle at the top",
    ] {
        assert_eq!(parse_caption(bad), None, "{bad:?} parsed");
    }
}

#[test]
fn shapes_all_prompts_are_unique_and_cover_every_combination() {
    let prompts = all_prompts();
    assert_eq!(prompts.len(), ShapeLabel::COUNT);
    assert_eq!(ShapeLabel::COUNT, Shape::ALL.len() * Color::ALL.len() * Position::ALL.len() * Size::ALL.len());
    let unique: HashSet<&String> = prompts.iter().collect();
    assert_eq!(unique.len(), prompts.len(), "duplicate prompts");
    let labels: HashSet<ShapeLabel> = prompts.iter().map(|p| parse_caption(p).unwrap()).collect();
    for &shape in Shape::ALL {
        for &color in Color::ALL {
            for &position in Position::ALL {
                for &size in Size::ALL {
                    assert!(labels.contains(&ShapeLabel { shape, color, position, size }));
                }
            }
        }
    }
    // The label draw is roughly uniform over the 756 combinations' parts.
    let ds = shapes(5);
    let mut shape_counts = [0usize; 6];
    for i in 0..3000 {
        shape_counts[ds.label(i).shape.index()] += 1;
    }
    println!("shape counts over 3000 samples: {shape_counts:?}");
    assert!(shape_counts.iter().all(|&c| (400..600).contains(&c)));
}

#[test]
fn shapes_vocabulary_covers_every_caption() {
    let vocab = vocabulary();
    println!("vocabulary ({}): {}", vocab.len(), vocab.join(" "));
    assert_eq!(&vocab[..3], &["<pad>", "<bos>", "<eos>"]);
    let set: HashSet<&String> = vocab.iter().collect();
    assert_eq!(set.len(), vocab.len(), "duplicate vocabulary entries");
    let mut used = HashSet::new();
    for p in all_prompts() {
        for w in split_words(&p) {
            assert!(set.contains(&w), "{w:?} of {p:?} is not in the vocabulary");
            used.insert(w);
        }
    }
    assert_eq!(used.len() + 3, vocab.len(), "vocabulary has words no caption uses");
    let tok = Tokenizer::new(vocab, DEFAULT_MAX_LEN).unwrap();
    for p in all_prompts() {
        tok.encode(&p).unwrap();
    }
}

#[test]
fn caption_dropout() {
    let captions: Vec<String> = all_prompts().into_iter().cycle().take(10_000).collect();
    let mut none = captions.clone();
    drop_captions(&mut none, 0.0, &mut Philox::new(1)).unwrap();
    assert_eq!(none, captions);
    let mut all = captions.clone();
    drop_captions(&mut all, 1.0, &mut Philox::new(1)).unwrap();
    assert!(all.iter().all(String::is_empty));
    let (mut a, mut b) = (captions.clone(), captions.clone());
    drop_captions(&mut a, 0.3, &mut Philox::new(9)).unwrap();
    drop_captions(&mut b, 0.3, &mut Philox::new(9)).unwrap();
    assert_eq!(a, b, "same stream, same dropout");
    let dropped = a.iter().filter(|c| c.is_empty()).count() as f64 / a.len() as f64;
    println!("dropped fraction at p = 0.3: {dropped:.4}");
    assert!((dropped - 0.3).abs() < 0.02);
    for (c, orig) in a.iter().zip(&captions) {
        assert!(c.is_empty() || c == orig);
    }
    assert!(drop_captions(&mut a, 1.5, &mut Philox::new(1)).is_err());
}

// ---- shapes: pixel statistics ------------------------------------------------------------

#[test]
fn shapes_pixels_show_the_caption() {
    let ds = shapes(11);
    let n = 32 * 32;
    let mut max_bg = 0.0f32;
    let mut min_shape_max = f32::INFINITY;
    let mut worst_color_margin = f32::INFINITY;
    let mut area = std::collections::HashMap::<(Shape, Size), (f32, f32)>::new();
    for i in 0..400 {
        let (image, caption, label) = ds.sample(i);
        let img: Vec<f32> = image.to_vec_f32().unwrap().iter().map(|v| (v + 1.0) / 2.0).collect();
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)), "sample {i} outside [-1, 1]");
        let mask = ds.mask(i).to_vec_f32().unwrap();
        let (mut sum, mut count) = ([0.0f32; 3], 0.0f32);
        let (mut cx, mut cy, mut total) = (0.0f32, 0.0f32, 0.0f32);
        for p in 0..n {
            let (x, y) = ((p % 32) as f32 + 0.5, (p / 32) as f32 + 0.5);
            cx += mask[p] * x;
            cy += mask[p] * y;
            total += mask[p];
            if mask[p] >= 0.99 {
                for c in 0..3 {
                    sum[c] += img[c * n + p];
                }
                count += 1.0;
            } else if mask[p] == 0.0 {
                for c in 0..3 {
                    max_bg = max_bg.max(img[c * n + p]);
                }
            }
        }
        assert!(count >= 4.0, "sample {i} ({caption}) has only {count} full shape pixels");
        let mean = sum.map(|s| s / count);
        min_shape_max = min_shape_max.min(mean.iter().copied().fold(0.0, f32::max));
        assert_eq!(Color::nearest(mean), label.color, "sample {i} ({caption}): mean {mean:?}");
        // How much nearer the caption's color is than the runner-up.
        let d = |c: Color| (0..3).map(|k| (c.rgb()[k] - mean[k]).powi(2)).sum::<f32>().sqrt();
        let runner_up = Color::ALL.iter().filter(|&&c| c != label.color).map(|&c| d(c)).fold(f32::INFINITY, f32::min);
        worst_color_margin = worst_color_margin.min(runner_up - d(label.color));
        // The shape's centroid lies in the caption's third of the image on both axes.
        let (row, col) = label.position.cell();
        let (gx, gy) = ((cx / total / 32.0 * 3.0) as usize, (cy / total / 32.0 * 3.0) as usize);
        assert_eq!((gy, gx), (row, col), "sample {i} ({caption}): centroid in the wrong cell");
        let e = area.entry((label.shape, label.size)).or_insert((f32::INFINITY, 0.0));
        *e = (e.0.min(total), e.1.max(total));
    }
    println!(
        "brightest background channel {max_bg:.3}, dimmest shape (max channel of mean) \
         {min_shape_max:.3}, worst color margin {worst_color_margin:.3}"
    );
    assert!(max_bg < 0.45 && min_shape_max > 0.75, "background and shape colors overlap");
    for &shape in Shape::ALL {
        let (small, large) = (area[&(shape, Size::Small)], area[&(shape, Size::Large)]);
        println!("{shape:?}: small area {:.1}..{:.1} px, large {:.1}..{:.1} px", small.0, small.1, large.0, large.1);
        assert!(small.1 < large.0, "{shape:?}: small and large areas overlap");
    }
}

#[test]
fn shapes_sample_with_label_draws_the_requested_shape() {
    let ds = shapes(3);
    let label =
        ShapeLabel { shape: Shape::Cross, color: Color::Blue, position: Position::BottomRight, size: Size::Large };
    let image = ds.sample_with_label(10, label).to_vec_f32().unwrap();
    let (drawn, _, _) = ds.sample(10);
    assert_ne!(image, drawn.to_vec_f32().unwrap());
    // The bottom-right ninth holds the blue shape: its bluest pixel is bright blue.
    let n = 32 * 32;
    let blue = (22..32)
        .flat_map(|y| (22..32).map(move |x| y * 32 + x))
        .max_by(|&a, &b| image[2 * n + a].total_cmp(&image[2 * n + b]))
        .unwrap();
    let rgb = [image[blue], image[n + blue], image[2 * n + blue]].map(|v| (v + 1.0) / 2.0);
    assert_eq!(Color::nearest(rgb), Color::Blue, "{rgb:?}");
}

// ---- tokenizer -----------------------------------------------------------------------------

fn shapes_tokenizer() -> Tokenizer {
    Tokenizer::new(vocabulary(), DEFAULT_MAX_LEN).unwrap()
}

#[test]
fn tokenizer_round_trip_padding_and_eos() {
    let tok = shapes_tokenizer();
    for p in all_prompts() {
        let e = tok.encode(&p).unwrap();
        assert_eq!(e.ids.len(), DEFAULT_MAX_LEN);
        assert_eq!(e.ids[0], tok.bos_id());
        assert_eq!(e.eos, split_words(&p).len() + 1);
        assert_eq!(e.ids[e.eos], tok.eos_id());
        assert!(e.ids[e.eos + 1..].iter().all(|&id| id == tok.pad_id()));
        assert_eq!(tok.decode(&e.ids).unwrap(), p);
    }
    let e = tok.encode("A Small RED circle... in the center!").unwrap();
    assert_eq!(tok.decode(&e.ids).unwrap(), "a small red circle in the center");
    // The empty prompt of classifier-free guidance.
    let empty = tok.encode("").unwrap();
    assert_eq!(empty.eos, 1);
    assert_eq!(&empty.ids[..3], &[tok.bos_id(), tok.eos_id(), tok.pad_id()]);
    assert_eq!(tok.pad_id(), 0, "the shapes vocabulary puts <pad> first");
    let batch = tok.encode_batch(&["", "a large blue star on the left"]).unwrap();
    assert_eq!(batch.ids.len(), 2 * DEFAULT_MAX_LEN);
    assert_eq!(batch.eos, vec![1, 8]);
    assert_eq!(&batch.ids[..DEFAULT_MAX_LEN], &empty.ids[..]);
}

#[test]
fn tokenizer_truncates_like_clip() {
    let tok = Tokenizer::new(vocabulary(), 6).unwrap();
    let e = tok.encode("a small red circle at the top left").unwrap();
    assert_eq!(e.eos, 5);
    assert_eq!(tok.decode(&e.ids).unwrap(), "a small red circle");
}

#[test]
fn tokenizer_unknown_words() {
    let tok = shapes_tokenizer();
    let err = tok.encode("a small red hexagon at the topp").unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("'hexagon'") && err.contains("'topp'") && err.contains("triangle"), "{err}");
    let mut vocab = vocabulary();
    vocab.push(UNK.to_string());
    let tok = Tokenizer::new(vocab, DEFAULT_MAX_LEN).unwrap();
    let e = tok.encode("a small red hexagon").unwrap();
    assert_eq!(e.ids[4], tok.id(UNK).unwrap());
    assert_eq!(tok.decode(&e.ids).unwrap(), "a small red <unk>");
    assert!(tok.decode(&[1, 999]).is_err());
}

#[test]
fn tokenizer_rejects_bad_vocabularies() {
    let v = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    for (vocab, max_len) in [
        (v(&["<pad>", "<bos>", "red"]), 16),
        (v(&["<pad>", "<bos>", "<eos>", "red", "red"]), 16),
        (v(&["<pad>", "<bos>", "<eos>", "Red"]), 16),
        (v(&["<pad>", "<bos>", "<eos>", "top-left"]), 16),
        (v(&["<pad>", "<bos>", "<eos>"]), 1),
    ] {
        let err = Tokenizer::new(vocab.clone(), max_len).unwrap_err();
        println!("{vocab:?}, {max_len}: {err}");
    }
}

#[test]
fn tokenizer_vocab_file_round_trip() {
    let dir = temp_dir("vocab");
    let tok = shapes_tokenizer();
    let path = dir.join("vocab.json");
    tok.save(&path).unwrap();
    let back = Tokenizer::load(&path).unwrap();
    assert_eq!(back, tok);
    assert_eq!(
        back.encode("a large white cross at the bottom").unwrap(),
        tok.encode("a large white cross at the bottom").unwrap()
    );
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["max_len"], 16);
    std::fs::write(&path, "{\"max_len\": 16}").unwrap();
    let err = Tokenizer::load(&path).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::write(&path, "{\"max_len\": 16, \"vocab\": [\"<pad>\"]}").unwrap();
    let err = Tokenizer::load(&path).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("vocab.json") && err.contains("<bos>"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

// ---- image folders -------------------------------------------------------------------------

/// A w×h RGB image whose pixel (x, y) is `f(x, y)`.
fn rgb_image(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
}

fn pattern(x: u32, y: u32) -> [u8; 3] {
    [(x * 7 % 256) as u8, (y * 11 % 256) as u8, ((x + y) * 5 % 256) as u8]
}

fn value(b: u8) -> f32 {
    b as f32 / 255.0 * 2.0 - 1.0
}

fn assert_error_names(err: senseflow::Error, what: &str) -> String {
    let msg = err.to_string();
    println!("{msg}");
    assert!(msg.contains(what), "error does not name {what:?}: {msg}");
    assert_eq!(msg.lines().count(), 1, "not one line: {msg}");
    msg
}

#[test]
fn image_folder_with_txt_captions() {
    let dir = temp_dir("txt");
    rgb_image(32, 32, pattern).save(dir.join("b.png")).unwrap();
    std::fs::write(dir.join("b.txt"), "  a picture of b\n").unwrap();
    // Wider than tall: 48×32 at size 32 is not resized, only center-cropped (offset 8).
    rgb_image(48, 32, pattern).save(dir.join("a.PNG")).unwrap();
    std::fs::write(dir.join("a.txt"), "wide").unwrap();
    // A gray, larger, taller JPEG: resized to 32 wide, 64 tall, then cropped.
    image::GrayImage::from_fn(50, 100, |_, y| image::Luma([if y < 50 { 30 } else { 220 }]))
        .save(dir.join("c.jpg"))
        .unwrap();
    std::fs::write(dir.join("c.txt"), "gray").unwrap();
    std::fs::write(dir.join("notes.md"), "not an image").unwrap();

    let folder = ImageFolder::open(&dir, 32).unwrap();
    assert_eq!(folder.len(), 3);
    let captions: Vec<&str> = (0..3).map(|i| folder.caption(i)).collect();
    assert_eq!(captions, ["wide", "a picture of b", "gray"]);

    let (a, _) = folder.sample(0).unwrap();
    let a = a.to_vec_f32().unwrap();
    let (b, _) = folder.sample(1).unwrap();
    let b = b.to_vec_f32().unwrap();
    let mut max_err = 0.0f32;
    for y in 0..32u32 {
        for x in 0..32u32 {
            let p = (y * 32 + x) as usize;
            for c in 0..3 {
                max_err = max_err.max((b[c * 1024 + p] - value(pattern(x, y)[c])).abs());
                max_err = max_err.max((a[c * 1024 + p] - value(pattern(x + 8, y)[c])).abs());
            }
        }
    }
    println!("same-size and crop-only images: max error {max_err:e}");
    assert!(max_err < 1e-6);

    let (c, _) = folder.sample(2).unwrap();
    let c = c.to_vec_f32().unwrap();
    // 50×100 → 32×64, crop rows 16..48: the dark/bright edge sits at the middle row.
    let at = |x: usize, y: usize| (c[y * 32 + x] + 1.0) / 2.0 * 255.0;
    println!("gray image: top {:.1}, bottom {:.1}", at(16, 2), at(16, 29));
    assert!((at(16, 2) - 30.0).abs() < 4.0 && (at(16, 29) - 220.0).abs() < 4.0);
    assert!((0..1024).all(|p| c[p] == c[1024 + p] && c[p] == c[2048 + p]), "gray → equal channels");

    let (batch, caps) = folder.batch(&[2, 0]).unwrap();
    assert_eq!(batch.shape(), &[2, 3, 32, 32]);
    assert_eq!(caps, ["gray", "wide"]);
    assert_eq!(batch.to_vec_f32().unwrap()[3 * 1024..], a[..]);
    let err = folder.batch(&[0, 7]).unwrap_err();
    assert_error_names(err, &dir.display().to_string());

    // Downscaling averages (the filter widens): a 1-px checkerboard becomes flat gray.
    let checker = dir.join("checker.png");
    rgb_image(64, 64, |x, y| if (x + y) % 2 == 0 { [0; 3] } else { [255; 3] }).save(&checker).unwrap();
    let small = load_image(&checker, 16).unwrap();
    let spread = small.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    println!("checkerboard downscaled 4×: max |v| {spread:.4}");
    assert!(spread < 0.05);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn image_folder_with_metadata_jsonl() {
    let dir = temp_dir("jsonl");
    std::fs::create_dir(dir.join("sub")).unwrap();
    rgb_image(20, 20, pattern).save(dir.join("x.png")).unwrap();
    rgb_image(20, 20, pattern).save(dir.join("sub/y.png")).unwrap();
    // A .txt beside an image is ignored when metadata.jsonl exists.
    std::fs::write(dir.join("x.txt"), "ignored").unwrap();
    std::fs::write(
        dir.join(METADATA_FILE),
        "{\"file_name\": \"sub/y.png\", \"text\": \"why\", \"score\": 3}\n\n{\"file_name\": \"./x.png\", \"text\": \"ex\"}\n",
    )
    .unwrap();
    let folder = ImageFolder::open(&dir, 8).unwrap();
    assert_eq!(folder.len(), 2);
    assert_eq!(folder.path(0), dir.join("sub/y.png"));
    assert_eq!((folder.caption(0), folder.caption(1)), ("why", "ex"));
    let (img, cap) = folder.sample(1).unwrap();
    assert_eq!((img.shape(), cap.as_str()), (&[3usize, 8, 8][..], "ex"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn image_folder_errors_name_the_file() {
    // An empty folder, and a folder that does not exist.
    let dir = temp_dir("empty");
    assert_error_names(ImageFolder::open(&dir, 32).err().unwrap(), &dir.display().to_string());
    let missing = dir.join("nope");
    assert_error_names(ImageFolder::open(&missing, 32).err().unwrap(), "nope");

    // A corrupt image: opening works (captions only), loading names the file.
    let dir = temp_dir("corrupt");
    std::fs::write(dir.join("bad.png"), b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    std::fs::write(dir.join("bad.txt"), "broken").unwrap();
    let folder = ImageFolder::open(&dir, 32).unwrap();
    assert_error_names(folder.sample(0).unwrap_err(), "bad.png");
    assert_error_names(folder.batch(&[0]).unwrap_err(), "bad.png");

    // A missing caption.
    let dir = temp_dir("nocaption");
    rgb_image(8, 8, pattern).save(dir.join("lonely.png")).unwrap();
    let msg = assert_error_names(ImageFolder::open(&dir, 32).err().unwrap(), "lonely.png");
    assert!(msg.contains("lonely.txt"), "{msg}");

    // metadata.jsonl: a line that does not parse, an entry for a missing file, an image
    // without an entry, a duplicate entry.
    let dir = temp_dir("badjsonl");
    rgb_image(8, 8, pattern).save(dir.join("one.png")).unwrap();
    rgb_image(8, 8, pattern).save(dir.join("two.png")).unwrap();
    let meta = dir.join(METADATA_FILE);
    let line1 = "{\"file_name\": \"one.png\", \"text\": \"1\"}";
    for (content, named) in [
        (format!("{line1}\n{{\"file_name\": \"two.png\", \"caption\": \"2\"}}\n"), format!("{}:2", meta.display())),
        (format!("{line1}\nnot json\n"), format!("{}:2", meta.display())),
        (format!("{line1}\n{{\"file_name\": \"three.png\", \"text\": \"3\"}}\n"), format!("{}:2", meta.display())),
        (format!("{line1}\n"), "two.png".to_string()),
        (
            format!("{line1}\n{{\"file_name\": \"two.png\", \"text\": \"2\"}}\n{line1}\n"),
            format!("{}:3", meta.display()),
        ),
    ] {
        std::fs::write(&meta, content).unwrap();
        assert_error_names(ImageFolder::open(&dir, 32).err().unwrap(), &named);
    }
    for name in ["empty", "corrupt", "nocaption", "badjsonl"] {
        std::fs::remove_dir_all(temp_dir(name)).unwrap();
    }
}

// ---- PNG grids -----------------------------------------------------------------------------

#[test]
fn png_grid_round_trip() {
    let dir = temp_dir("png");
    // Odd sizes, values beyond [-1, 1] (clamped), a partial last row.
    let (b, h, w) = (5usize, 7usize, 9usize);
    let images = Tensor::rand(&[b, 3, h, w], -1.2, 1.2, &mut Philox::new(3));
    let values = images.to_vec_f32().unwrap();
    let path = dir.join("grid.png");
    let layout = GridLayout { cols: 3, pad: 1, zoom: 1 };
    write_png_grid(&path, &images, layout).unwrap();
    let png = image::open(&path).unwrap().to_rgb8();
    assert_eq!((png.width(), png.height()), (3 * 9 + 4, 2 * 7 + 3));
    let mut max_err = 0.0f32;
    for k in 0..b {
        let (ox, oy) = (1 + (k % 3) * (w + 1), 1 + (k / 3) * (h + 1));
        for y in 0..h {
            for x in 0..w {
                let px = png.get_pixel((ox + x) as u32, (oy + y) as u32).0;
                for c in 0..3 {
                    let v = values[((k * 3 + c) * h + y) * w + x].clamp(-1.0, 1.0);
                    let err = (px[c] as f32 / 255.0 - (v + 1.0) / 2.0).abs();
                    max_err = max_err.max(err);
                }
            }
        }
    }
    println!("PNG round trip: max error {max_err:.5} (budget {:.5})", 1.0 / 255.0);
    assert!(max_err <= 0.5 / 255.0 + 1e-6);
    // Padding, and the empty sixth tile, are gray.
    assert_eq!(png.get_pixel(0, 0).0, [128; 3]);
    assert_eq!(png.get_pixel(30, 16).0, [128; 3]);
    assert_eq!((to_u8(-1.0), to_u8(1.0), to_u8(f32::NAN)), (0, 255, 0));

    // Zoom repeats pixels; one [3, H, W] image is a one-tile grid.
    let one = Tensor::rand(&[3, 4, 5], -1.0, 1.0, &mut Philox::new(4));
    let zoomed = grid_rgb8(&one, GridLayout { cols: 1, pad: 0, zoom: 3 }).unwrap();
    assert_eq!((zoomed.width, zoomed.height), (15, 12));
    let v = one.to_vec_f32().unwrap();
    for (y, x) in [(0, 0), (11, 14), (5, 7)] {
        assert_eq!(zoomed.data[(y * 15 + x) * 3], to_u8(v[(y / 3) * 5 + x / 3]));
    }
    write_png(dir.join("zoomed.png"), &zoomed).unwrap();
    // Nothing but the two PNGs is left behind (the writes are atomic).
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["grid.png", "zoomed.png"]);

    let err = write_png_grid(dir.join("x.png"), &Tensor::zeros(&[2, 4, 5, 5]), GridLayout::square(2)).unwrap_err();
    println!("{err}");
    assert!(!Path::new(&dir.join("x.png")).exists());
    std::fs::remove_dir_all(dir).unwrap();
}

// ---- CLI -----------------------------------------------------------------------------------

#[test]
fn cli_data_preview() {
    let dir = temp_dir("cli");
    let out_png = dir.join("preview.png");
    let out = Command::new(env!("CARGO_BIN_EXE_senseflow"))
        .args(["data", "preview", "--n", "5", "--seed", "3", "--out"])
        .arg(&out_png)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ds = shapes(3);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, format!("{i}\t{}", ds.sample(i as u64).1));
    }
    // 5 images → 3 columns, 2 rows of 32 px with 2 px padding.
    let png = image::open(&out_png).unwrap();
    assert_eq!((png.width(), png.height()), (3 * 32 + 4 * 2, 2 * 32 + 3 * 2));
    std::fs::remove_dir_all(dir).unwrap();
}

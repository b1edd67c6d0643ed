//! Real data: a folder of PNG/JPEG images with captions, loaded as `[3, S, S]` f32 in
//! [−1, 1].
//!
//! Conventions:
//! - Images are the folder's top-level files ending in `.png`, `.jpg` or `.jpeg` (any
//!   case), ordered by file name; the file's content decides the format, not its name.
//! - Captions come from `metadata.jsonl` when the folder has one (the Hugging Face
//!   ImageFolder convention: one JSON object per line with `"file_name"`, relative to the
//!   folder, and `"text"`; other fields are ignored; entries may name images in
//!   subfolders). Otherwise each image needs a same-name `.txt` beside it (`cat.png` →
//!   `cat.txt`), whose trimmed content is the caption. With a metadata.jsonl, every
//!   top-level image must have an entry: a silently skipped image is a data bug.
//! - Resizing follows the diffusers training scripts (torchvision `Resize(S)` then
//!   `CenterCrop(S)`): the shorter side is scaled to S (the longer to `floor(S·long/short)`)
//!   with a triangle (bilinear) filter whose support widens by the shrink factor, which is
//!   what PIL's BILINEAR does, so downscaling averages instead of aliasing; then the
//!   center S×S is cut out, offset `round((long − S)/2)`. Filtering works on the stored
//!   (gamma-encoded) values, as PIL does. Alpha is dropped; gray images become RGB.
//! - Opening reads captions only; pixels are decoded on demand, so opening a large folder
//!   is quick and a corrupt image is reported when it is loaded.
//! - Every error is one line naming the file (and for metadata.jsonl, `file:line`).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use image::imageops::FilterType;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const METADATA_FILE: &str = "metadata.jsonl";
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

#[derive(serde::Deserialize)]
struct MetadataLine {
    file_name: String,
    text: String,
}

pub struct ImageFolder {
    root: PathBuf,
    size: usize,
    /// (image path, caption), ordered by path.
    items: Vec<(PathBuf, String)>,
}

impl ImageFolder {
    /// Lists the images of `root` and reads their captions; images will be loaded at
    /// `size × size`.
    pub fn open(root: impl AsRef<Path>, size: usize) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if size == 0 {
            return Err(Error::format(&root, "image size must be at least 1"));
        }
        let images = list_images(&root)?;
        let metadata = root.join(METADATA_FILE);
        let items = if metadata.is_file() {
            captions_from_metadata(&root, &metadata, &images)?
        } else {
            if images.is_empty() {
                return Err(Error::format(&root, "no images (.png, .jpg, .jpeg) and no metadata.jsonl in this folder"));
            }
            images
                .into_iter()
                .map(|path| {
                    let caption = caption_from_txt(&path)?;
                    Ok((path, caption))
                })
                .collect::<Result<_>>()?
        };
        Ok(Self { root, size, items })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The path of image `i` (panics if `i >= len()`, like slice indexing).
    pub fn path(&self, i: usize) -> &Path {
        &self.items[i].0
    }

    /// The caption of image `i` (panics if `i >= len()`).
    pub fn caption(&self, i: usize) -> &str {
        &self.items[i].1
    }

    /// Image `i` as `[3, S, S]` in [−1, 1], and its caption.
    pub fn sample(&self, i: usize) -> Result<(Tensor, String)> {
        let (path, caption) = self.item(i)?;
        let image = load_image(path, self.size)?;
        let s = self.size;
        Ok((Tensor::from_vec(image, &[3, s, s])?, caption.clone()))
    }

    /// Images `[B, 3, S, S]` (decoded in parallel) and captions; the first failing image
    /// (in `indices` order) is the error.
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Vec<String>)> {
        let loaded: Vec<Result<Vec<f32>>> =
            indices.par_iter().map(|&i| load_image(&self.item(i)?.0, self.size)).collect();
        let s = self.size;
        let mut images = Vec::with_capacity(indices.len() * 3 * s * s);
        for image in loaded {
            images.extend_from_slice(&image?);
        }
        let captions = indices.iter().map(|&i| self.items[i].1.clone()).collect();
        Ok((Tensor::from_vec(images, &[indices.len(), 3, s, s])?, captions))
    }

    fn item(&self, i: usize) -> Result<&(PathBuf, String)> {
        self.items.get(i).ok_or_else(|| {
            Error::format(&self.root, format!("image index {i} is out of range (the folder has {})", self.items.len()))
        })
    }
}

/// Decodes `path`, resizes and center-crops it to `size × size` (see the module doc), and
/// returns `[3, size, size]` values in [−1, 1].
pub fn load_image(path: &Path, size: usize) -> Result<Vec<f32>> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::format(path, format!("cannot read image: {what}{e}"));
    let decoded = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| bad("", &e))?;
    let rgb = decoded.into_rgb32f();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::format(path, format!("cannot read image: it is {w}×{h} pixels")));
    }
    // Shorter side → size; the longer side as torchvision computes it (truncated).
    let (nw, nh) = if w <= h {
        (size, ((size as u64 * h as u64) / w as u64) as usize)
    } else {
        (((size as u64 * w as u64) / h as u64) as usize, size)
    };
    let (nw32, nh32) = (u32::try_from(nw), u32::try_from(nh));
    let (Ok(nw32), Ok(nh32)) = (nw32, nh32) else {
        return Err(bad("too elongated to resize to ", &format!("{size} px")));
    };
    let resized = image::imageops::resize(&rgb, nw32, nh32, FilterType::Triangle);
    let (left, top) = (center_offset(nw, size), center_offset(nh, size));
    let plane = size * size;
    let mut out = vec![0.0; 3 * plane];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel((left + x) as u32, (top + y) as u32).0;
            for c in 0..3 {
                out[c * plane + y * size + x] = p[c].clamp(0.0, 1.0) * 2.0 - 1.0;
            }
        }
    }
    Ok(out)
}

/// torchvision CenterCrop's offset: `round((len − size) / 2)`, halves rounded to even.
fn center_offset(len: usize, size: usize) -> usize {
    let d = len - size;
    if d % 4 == 1 {
        // Half-integer offsets: (d/2).round_ties_even().
        d / 2
    } else {
        d.div_ceil(2)
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn list_images(root: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut images = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(root, e))?.path();
        if path.is_file() && is_image(&path) {
            images.push(path);
        }
    }
    images.sort();
    Ok(images)
}

fn caption_from_txt(image: &Path) -> Result<String> {
    let txt = image.with_extension("txt");
    match std::fs::read_to_string(&txt) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::format(
            image,
            format!(
                "missing caption: no {} beside it (and no {METADATA_FILE} in the folder)",
                txt.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
        )),
        Err(e) => Err(Error::io(&txt, e)),
    }
}

/// The (image, caption) pairs of `metadata`, ordered by path; checks that every entry
/// names an existing image and that every top-level image in `images` has an entry.
fn captions_from_metadata(root: &Path, metadata: &Path, images: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(metadata).map_err(|e| Error::io(metadata, e))?;
    let at_line = |n: usize| PathBuf::from(format!("{}:{n}", metadata.display()));
    let mut captions: HashMap<PathBuf, (String, usize)> = HashMap::new();
    for (k, line) in text.lines().enumerate() {
        let n = k + 1;
        if line.trim().is_empty() {
            continue;
        }
        let entry: MetadataLine = serde_json::from_str(line).map_err(|e| {
            Error::format(at_line(n), format!("expected a JSON object with \"file_name\" and \"text\" strings ({e})"))
        })?;
        // "./cat.png" and "cat.png" name the same image.
        let relative: PathBuf =
            Path::new(&entry.file_name).components().filter(|c| *c != std::path::Component::CurDir).collect();
        let path = root.join(relative);
        if !path.is_file() {
            return Err(Error::format(
                at_line(n),
                format!("file_name {:?}: no such file in {}", entry.file_name, root.display()),
            ));
        }
        if let Some((_, first)) = captions.insert(path, (entry.text, n)) {
            return Err(Error::format(
                at_line(n),
                format!("file_name {:?} already has a caption on line {first}", entry.file_name),
            ));
        }
    }
    if captions.is_empty() {
        return Err(Error::format(metadata, "no entries (and so no images to load)"));
    }
    for image in images {
        if !captions.contains_key(image) {
            return Err(Error::format(image, format!("missing caption: no entry for it in {}", metadata.display())));
        }
    }
    let mut items: Vec<(PathBuf, String)> = captions.into_iter().map(|(path, (text, _))| (path, text)).collect();
    items.sort();
    Ok(items)
}

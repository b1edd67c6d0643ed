//! Word-level tokenizer for the demo's tiny CLIP-architecture text encoder.
//!
//! Conventions:
//! - Words are the maximal runs of alphanumeric characters of the lowercased text; every
//!   other character (spaces, punctuation, hyphens, apostrophes) only separates words and
//!   is dropped. So "A red triangle, at the top-left." has the words
//!   `a red triangle at the top left`.
//! - A sequence is `<bos> w1 … wn <eos> <pad> …`, always exactly `max_len` ids. Texts with
//!   more than `max_len − 2` words keep their first `max_len − 2` words, as CLIP's
//!   tokenizer truncates; `<eos>` is always present, and its position is returned for the
//!   encoder's pooled output (CLIP pools the hidden state at `<eos>`).
//! - Ids are positions in the vocabulary list, which must contain `<pad>`, `<bos>` and
//!   `<eos>` (anywhere; the shapes vocabulary puts them first, so `<pad>` is 0).
//! - Unknown words: if the vocabulary contains `<unk>`, they map to it (for vocabularies
//!   built from real captions); otherwise encoding fails with an error that lists every
//!   unknown word and the vocabulary. The shapes vocabulary has no `<unk>` on purpose: a
//!   typo in a demo prompt ("a red triangel") is reported instead of silently generating
//!   an image for a prompt the model never saw.
//! - The vocabulary file is JSON, `{"max_len": 16, "vocab": ["<pad>", "<bos>", …]}`, so a
//!   trained text encoder ships with the exact ids it was trained on.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";

/// Sequence length of the demo text encoder: `<bos>`, up to 14 words, `<eos>`.
pub const DEFAULT_MAX_LEN: usize = 16;

/// Lists at most this many vocabulary words in an unknown-word error.
const LISTED_WORDS: usize = 60;

/// The lowercased words of `text` (see the module doc for what a word is).
pub fn split_words(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// One encoded text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// `[max_len]`: `<bos> words <eos> <pad>…`.
    pub ids: Vec<u32>,
    /// Index of `<eos>` in `ids` (the pooled-output position).
    pub eos: usize,
}

/// A batch of encoded texts, ready for `ops::embedding_u32(&ids, &[b, max_len], table)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEncoding {
    /// `[B, max_len]`, row-major.
    pub ids: Vec<u32>,
    /// `[B]`: the `<eos>` index of each row.
    pub eos: Vec<usize>,
    pub max_len: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct VocabFile {
    max_len: usize,
    vocab: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Tokenizer {
    vocab: Vec<String>,
    index: HashMap<String, u32>,
    max_len: usize,
    pad: u32,
    bos: u32,
    eos: u32,
    unk: Option<u32>,
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        // Everything else is derived from these two.
        self.vocab == other.vocab && self.max_len == other.max_len
    }
}

impl Tokenizer {
    /// A tokenizer over `vocab` (id = position) producing `max_len` ids per text.
    /// Errors on a missing special token, a duplicate or empty entry, a word the splitter
    /// can never produce (upper case, punctuation inside), or `max_len < 2`.
    pub fn new(vocab: Vec<String>, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            return Err(Error::op(
                "tokenizer",
                format!("max_len {max_len} leaves no room for <bos> and <eos> (need at least 2)"),
            ));
        }
        if vocab.len() > u32::MAX as usize {
            return Err(Error::op("tokenizer", "vocabulary has more than 2^32 entries"));
        }
        let mut index = HashMap::with_capacity(vocab.len());
        for (id, word) in vocab.iter().enumerate() {
            let special = [PAD, BOS, EOS, UNK].contains(&word.as_str());
            if !special && split_words(word) != [word.as_str()] {
                return Err(Error::op(
                    "tokenizer",
                    format!(
                        "vocabulary entry {id} {word:?} can never be produced: words are \
                         lowercase runs of letters and digits"
                    ),
                ));
            }
            if let Some(first) = index.insert(word.clone(), id as u32) {
                return Err(Error::op(
                    "tokenizer",
                    format!("vocabulary entry {word:?} appears twice (ids {first} and {id})"),
                ));
            }
        }
        let special = |name: &str| {
            index.get(name).copied().ok_or_else(|| Error::op("tokenizer", format!("vocabulary has no {name} token")))
        };
        let (pad, bos, eos) = (special(PAD)?, special(BOS)?, special(EOS)?);
        let unk = index.get(UNK).copied();
        Ok(Self { vocab, index, max_len, pad, bos, eos, unk })
    }

    /// Reads a vocabulary file written by [`Tokenizer::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: VocabFile = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a tokenizer vocabulary file ({e})")))?;
        Self::new(file.vocab, file.max_len).map_err(|e| Error::format(path, e.to_string()))
    }

    /// Writes the vocabulary file atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let file = VocabFile { max_len: self.max_len, vocab: self.vocab.clone() };
        crate::io::atomic_write_json(path, &file)
    }

    pub fn vocab(&self) -> &[String] {
        &self.vocab
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The id of `word` (an exact vocabulary entry), if any.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// `<bos> words <eos>` padded to `max_len` (see the module doc for truncation and
    /// unknown words).
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        let words = split_words(text);
        let mut unknown: Vec<&str> = Vec::new();
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        for w in words.iter().take(self.max_len - 2) {
            match (self.index.get(w), self.unk) {
                (Some(&id), _) => ids.push(id),
                (None, Some(unk)) => ids.push(unk),
                (None, None) => {
                    if !unknown.contains(&w.as_str()) {
                        unknown.push(w);
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return Err(self.unknown_error(&unknown, text));
        }
        let eos = ids.len();
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(Encoding { ids, eos })
    }

    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<BatchEncoding> {
        let mut ids = Vec::with_capacity(texts.len() * self.max_len);
        let mut eos = Vec::with_capacity(texts.len());
        for t in texts {
            let e = self.encode(t.as_ref())?;
            ids.extend_from_slice(&e.ids);
            eos.push(e.eos);
        }
        Ok(BatchEncoding { ids, eos, max_len: self.max_len })
    }

    /// The words of an id sequence, joined by spaces: `<bos>` and `<pad>` are skipped,
    /// decoding stops at `<eos>`, `<unk>` stays visible. Errors on an id outside the
    /// vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut words = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            if id == self.eos {
                break;
            }
            if id == self.bos || id == self.pad {
                continue;
            }
            let word = self.vocab.get(id as usize).ok_or_else(|| {
                Error::op(
                    "tokenizer",
                    format!("id {id} at position {i} is outside the vocabulary of {}", self.vocab.len()),
                )
            })?;
            words.push(word.as_str());
        }
        Ok(words.join(" "))
    }

    fn unknown_error(&self, unknown: &[&str], text: &str) -> Error {
        let words: Vec<&str> = self.vocab.iter().map(String::as_str).filter(|w| ![PAD, BOS, EOS].contains(w)).collect();
        let listed = words.iter().take(LISTED_WORDS).copied().collect::<Vec<_>>().join(" ");
        let more = if words.len() > LISTED_WORDS { format!(" … ({} in all)", words.len()) } else { String::new() };
        let quoted: Vec<String> = unknown.iter().map(|w| format!("'{w}'")).collect();
        Error::op(
            "tokenizer",
            format!(
                "unknown word{} {} in {text:?}; the vocabulary is: {listed}{more}",
                if unknown.len() == 1 { "" } else { "s" },
                quoted.join(", ")
            ),
        )
    }
}

//! Model definitions. Each file mirrors one diffusers/transformers class: a `Config`
//! deserialized from the checkpoint's config.json (unknown fields are errors, named
//! presets for the published checkpoints), `new(cfg, vb)` taking parameters by their
//! checkpoint keys, and `forward` with the reference's argument names and conventions.

pub mod clip_text;
pub mod config;
pub mod flux;
pub mod loading;
pub mod mmdit;
pub mod transformers;
pub mod vae;
pub mod vit;

pub use loading::{load_transformer, Transformer, TransformerConfig};

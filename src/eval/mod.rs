//! Measuring models: Fréchet distances (FD-T) and charts of training runs.

pub mod frechet;
pub mod plot;

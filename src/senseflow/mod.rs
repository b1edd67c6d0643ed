//! SenseFlow: DMD2-style distribution matching with implicit distribution alignment
//! (IDA), intra-segment guidance (ISG), a vision-foundation-model discriminator, TTUR
//! and backward simulation. The math of ../shared/design/SENSEFLOW.md lives here, one
//! piece per file; the training loop composes them.

pub mod anchors;
pub mod augment;
pub mod config;
pub mod disc;
pub mod distill;
pub mod dmd;
pub mod ida;
pub mod isg;
pub mod nets;

pub use anchors::{AdvWeight, Anchors};
pub use dmd::dmd_loss;
pub use ida::ida_blend;
pub use isg::{euler_step, isg_loss};

/// TTUR: the generator updates on every `ratio`-th iteration (iterations count from 1);
/// the fake score and discriminator update on every iteration.
pub fn generator_turn(iter: u64, ratio: u64) -> bool {
    ratio <= 1 || iter % ratio == 0
}

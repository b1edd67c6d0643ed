//! The tape: records the ops of one step and walks them backward.
//!
//! Invariants:
//! - Each recording thread has its own tape (tests run in parallel threads).
//! - An op appends a node only when recording is on and at least one input tracks
//!   gradients; the node's saved tensors are built lazily, only in that case.
//! - `backward` drains the tape: every node is dropped (its saved activations freed)
//!   as soon as its backward has run; nodes that do not lead to the loss are dropped
//!   without running.
//! - Gradients of leaves (tensors made with `Tensor::var`) are returned in `Grads`;
//!   intermediate gradients are freed once consumed. Backward rules run with
//!   recording off.
//! - `detach` (stop-grad) and `no_grad()` scopes keep ops off the tape.

use crate::error::Result;
use crate::tensor::{Tensor, TensorId};
use std::cell::RefCell;
use std::collections::HashMap;

/// The backward rule of one recorded op: given dL/d(output), return dL/d(input) for
/// each input in the order the op was recorded with (None: no gradient flows there).
pub trait Backward {
    fn name(&self) -> &'static str;
    fn backward(&self, grad_out: &Tensor) -> Result<Vec<Option<Tensor>>>;
}

struct Node {
    output: TensorId,
    inputs: Vec<Option<TensorId>>,
    rule: Box<dyn Backward>,
}

#[derive(Default)]
struct Tape {
    nodes: Vec<Node>,
    paused: usize,
}

thread_local! {
    static TAPE: RefCell<Tape> = RefCell::new(Tape::default());
}

/// Whether ops are currently recorded on this thread's tape.
pub fn is_recording() -> bool {
    TAPE.with(|t| t.borrow().paused == 0)
}

/// Number of nodes on this thread's tape.
pub fn tape_len() -> usize {
    TAPE.with(|t| t.borrow().nodes.len())
}

/// Drops every recorded node (and the activations they saved).
pub fn clear_tape() {
    let nodes = TAPE.with(|t| std::mem::take(&mut t.borrow_mut().nodes));
    drop(nodes);
}

/// While the guard lives, nothing is recorded (teacher forwards, EMA, evaluation).
pub struct NoGradGuard(());

pub fn no_grad() -> NoGradGuard {
    TAPE.with(|t| t.borrow_mut().paused += 1);
    NoGradGuard(())
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        TAPE.with(|t| t.borrow_mut().paused -= 1);
    }
}

/// Runs `f` with recording off.
pub fn without_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad();
    f()
}

/// Called by every op after its forward: when recording and some input tracks
/// gradients, marks `out` as tracked and appends a node whose rule `make_rule`
/// builds (capturing only what backward needs).
pub fn record<R: Backward + 'static>(out: Tensor, inputs: &[&Tensor], make_rule: impl FnOnce() -> R) -> Tensor {
    if !inputs.iter().any(|t| t.tracks_grad()) || !is_recording() {
        return out;
    }
    let out = out.with_track(true);
    let node = Node {
        output: out.id(),
        inputs: inputs.iter().map(|t| t.tracks_grad().then(|| t.id())).collect(),
        rule: Box::new(make_rule()),
    };
    TAPE.with(|t| t.borrow_mut().nodes.push(node));
    out
}

/// Leaf gradients, keyed by tensor id.
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
}

impl Grads {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    pub fn insert(&mut self, t: &Tensor, g: Tensor) {
        self.map.insert(t.id(), g);
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn clear(&mut self) {
        self.map.clear()
    }
    fn add(map: &mut HashMap<TensorId, Tensor>, id: TensorId, g: Tensor) -> Result<()> {
        let acc = match map.remove(&id) {
            Some(prev) => crate::ops::add(&prev, &g)?,
            None => g,
        };
        map.insert(id, acc);
        Ok(())
    }
    /// Adds every gradient of `other` into `self` (gradient accumulation).
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        let _g = no_grad();
        for (id, g) in other.map {
            Self::add(&mut self.map, id, g)?;
        }
        Ok(())
    }
}

/// Backpropagates from a scalar `loss` through this thread's tape and returns the
/// gradients of all tracked leaves that the loss depends on. Drains the tape.
pub fn backward(loss: &Tensor) -> Result<Grads> {
    let mut grads = Grads::new();
    backward_into(loss, &mut grads)?;
    Ok(grads)
}

/// Like [`backward`], adding into existing gradients (accumulation over micro-batches).
pub fn backward_into(loss: &Tensor, grads: &mut Grads) -> Result<()> {
    if loss.numel() != 1 {
        return Err(crate::error::Error::op(
            "backward",
            format!("loss must be a scalar, got shape {:?}", loss.shape()),
        ));
    }
    let mut nodes = TAPE.with(|t| std::mem::take(&mut t.borrow_mut().nodes));
    let _g = no_grad();
    let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
    pending.insert(loss.id(), Tensor::full(1.0, loss.shape()));
    while let Some(node) = nodes.pop() {
        let Some(g) = pending.remove(&node.output) else {
            continue; // does not lead to the loss; dropping the node frees its saves
        };
        let input_grads = node.rule.backward(&g)?;
        debug_assert_eq!(input_grads.len(), node.inputs.len(), "{}", node.rule.name());
        for (id, ig) in node.inputs.iter().zip(input_grads) {
            if let (Some(id), Some(ig)) = (id, ig) {
                Grads::add(&mut pending, *id, ig)?;
            }
        }
    }
    // What is left has no producing node on the tape: the leaves.
    for (id, g) in pending {
        Grads::add(&mut grads.map, id, g)?;
    }
    Ok(())
}

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
//! - [`checkpoint`] (activation recompute) records ONE node for a whole function; its
//!   backward re-runs the function on a nested sub-tape (see that function).

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
    let nodes = TAPE.with(|t| std::mem::take(&mut t.borrow_mut().nodes));
    let mut seeds = HashMap::new();
    seeds.insert(loss.id(), Tensor::full(1.0, loss.shape()));
    for (id, g) in run_backward(nodes, seeds)? {
        Grads::add(&mut grads.map, id, g)?;
    }
    Ok(())
}

/// Walks `nodes` backward from the seed gradients (dL/d(tensor) by id) and returns the
/// gradients left over: those of tensors no node produced (leaves, or tensors made
/// outside the walked tape). Drops every node as it goes.
fn run_backward(mut nodes: Vec<Node>, mut pending: HashMap<TensorId, Tensor>) -> Result<HashMap<TensorId, Tensor>> {
    let _g = no_grad();
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
    Ok(pending)
}

// ---- activation checkpointing ---------------------------------------------------------

/// Runs `f` on a fresh, recording tape of its own (whatever the caller's recording
/// state) and returns its result with the nodes it recorded. The caller's tape and
/// no-grad depth are restored afterwards, also when `f` panics.
fn on_sub_tape<R>(f: impl FnOnce() -> R) -> (R, Vec<Node>) {
    struct Restore(Option<Tape>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take().expect("restored once");
            TAPE.with(|t| *t.borrow_mut() = outer);
        }
    }
    let outer = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let restore = Restore(Some(outer));
    let r = f();
    let nodes = TAPE.with(|t| std::mem::take(&mut t.borrow_mut().nodes));
    drop(restore);
    (r, nodes)
}

/// A function checkpointed by [`checkpoint`]: maps the inputs to one or more outputs.
pub type CheckpointFn = dyn Fn(&[Tensor]) -> Result<Vec<Tensor>>;

/// Activation checkpointing (recompute): evaluates `f(inputs)` WITHOUT recording its
/// inner ops and records a single node in their place, whose backward re-runs `f` with
/// recording on into a nested sub-tape and backpropagates the incoming gradient through
/// it. Memory held between forward and backward is then the inputs of `f` (and its
/// outputs, which the caller keeps anyway) instead of every activation inside `f`;
/// the price is a second forward of `f` during backward. Peak memory during backward is
/// one checkpointed segment's activations at a time.
///
/// Contract:
/// - `captured` lists every gradient-tracking tensor that `f` uses other than through
///   `inputs` — its parameters, and any tracked tensor it closes over (e.g. a
///   conditioning embedding). Their gradients flow back through the node. A tracked
///   tensor that `f` uses but that is not listed would silently lose its gradient, so
///   the backward detects it and fails with an error naming the count. Untracked
///   (frozen) tensors need not be listed.
/// - `f` must be deterministic (the recompute must reproduce the forward): no dropout
///   or other random draws unless their generator state is part of the closure.
/// - `f` may itself use `checkpoint` (nested segments recompute recursively).
/// - Several outputs are returned as views of one flat buffer the node produces (one
///   copy of the outputs); a single output is returned as it is.
/// - When recording is off or neither an input nor a captured tensor tracks gradients,
///   `f` simply runs: no node, no copy.
///
/// The gradients equal those of running `f` directly (the recompute replays the same
/// kernels on the same values).
pub fn checkpoint(
    inputs: &[&Tensor],
    captured: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + 'static,
) -> Result<Vec<Tensor>> {
    let needs_grad = inputs.iter().chain(captured).any(|t| t.tracks_grad());
    if !needs_grad || !is_recording() {
        let xs: Vec<Tensor> = inputs.iter().map(|&t| t.clone()).collect();
        return f(&xs);
    }
    let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let outs = without_grad(|| f(&detached))?;
    if outs.is_empty() {
        return Err(crate::error::Error::op("checkpoint", "the checkpointed function returned no outputs"));
    }
    let shapes: Vec<Vec<usize>> = outs.iter().map(|o| o.shape().to_vec()).collect();
    let node_out = if outs.len() == 1 {
        // A fresh id even when `f` returned a tensor from outside (an input or a capture).
        outs.into_iter().next().expect("one output").detach()
    } else {
        let flat: Vec<Tensor> = outs.iter().map(|o| o.reshape(&[o.numel()])).collect::<Result<_>>()?;
        without_grad(|| crate::ops::concat(&flat.iter().collect::<Vec<_>>(), 0))?
    };
    let mut recorded: Vec<&Tensor> = inputs.to_vec();
    recorded.extend_from_slice(captured);
    let node_out = record(node_out, &recorded, || CheckpointBackward {
        inputs: detached,
        input_tracks: inputs.iter().map(|t| t.tracks_grad()).collect(),
        captured: captured.iter().map(|t| t.tracks_grad().then(|| t.id())).collect(),
        shapes: shapes.clone(),
        f: Box::new(f),
    });
    if shapes.len() == 1 {
        return Ok(vec![node_out]);
    }
    let mut offset = 0;
    let mut views = Vec::with_capacity(shapes.len());
    for s in &shapes {
        let n: usize = s.iter().product();
        views.push(node_out.narrow(0, offset, n)?.reshape(s)?);
        offset += n;
    }
    Ok(views)
}

struct CheckpointBackward {
    /// The inputs as the forward saw them (detached).
    inputs: Vec<Tensor>,
    input_tracks: Vec<bool>,
    /// Ids of the captured tensors that track gradients (None: frozen).
    captured: Vec<Option<TensorId>>,
    /// Output shapes; with several outputs the node's output is their flat concatenation.
    shapes: Vec<Vec<usize>>,
    f: Box<CheckpointFn>,
}

impl Backward for CheckpointBackward {
    fn name(&self) -> &'static str {
        "checkpoint"
    }
    fn backward(&self, grad_out: &Tensor) -> Result<Vec<Option<Tensor>>> {
        // Fresh leaves stand in for the tracked inputs so their gradients can be found.
        let leaves: Vec<Tensor> =
            self.inputs.iter().zip(&self.input_tracks).map(|(x, &tr)| if tr { x.var() } else { x.clone() }).collect();
        let (outs, nodes) = on_sub_tape(|| (self.f)(&leaves));
        let outs = outs?;
        if outs.len() != self.shapes.len() || outs.iter().zip(&self.shapes).any(|(o, s)| o.shape() != s.as_slice()) {
            return Err(crate::error::Error::op(
                "checkpoint",
                "the recomputed outputs differ in number or shape from the forward's: the function is not deterministic",
            ));
        }
        let mut seeds = HashMap::new();
        let mut offset = 0;
        for o in &outs {
            let n = o.numel();
            if o.tracks_grad() {
                let g = if outs.len() == 1 {
                    grad_out.clone()
                } else {
                    let _g = no_grad();
                    grad_out.narrow(0, offset, n)?.reshape(o.shape())?.contiguous()?
                };
                Grads::add(&mut seeds, o.id(), g)?;
            }
            offset += n;
        }
        let mut left = run_backward(nodes, seeds)?;
        let mut grads: Vec<Option<Tensor>> = Vec::with_capacity(leaves.len() + self.captured.len());
        for (leaf, &tr) in leaves.iter().zip(&self.input_tracks) {
            grads.push(if tr { left.remove(&leaf.id()) } else { None });
        }
        for id in &self.captured {
            // A tensor listed twice gets its gradient once.
            grads.push(id.and_then(|id| left.remove(&id)));
        }
        // Whatever is left was used by `f` and tracks gradients, yet was not declared.
        // (Untracked inputs reached by gradient-free paths never enter `left`.)
        let undeclared = left.len();
        if undeclared > 0 {
            return Err(crate::error::Error::op(
                "checkpoint",
                format!(
                    "the checkpointed function used {undeclared} gradient-tracking tensor(s) that are neither inputs \
                     nor listed in `captured`; list them (e.g. the module's parameters) so their gradients flow"
                ),
            ));
        }
        Ok(grads)
    }
}

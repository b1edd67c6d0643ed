//! `autograd::checkpoint` (activation recompute): gradients identical to the plain
//! computation for one and several outputs, captured parameters and captured non-leaf
//! tensors, nested segments, partial use of the outputs; fewer nodes held between forward
//! and backward; and an error (not a silently lost gradient) for an undeclared capture.

use senseflow::autograd::{self, checkpoint};
use senseflow::rng::Philox;
use senseflow::{ops, Grads, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

fn grads_of(g: &Grads, ts: &[&Tensor]) -> Vec<Vec<f32>> {
    ts.iter().map(|t| g.get(t).expect("a gradient").to_vec_f32().unwrap()).collect()
}

/// A small two-layer block: silu(x W1ᵀ + b1) W2ᵀ, then a residual.
#[derive(Clone)]
struct Block {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
}

impl Block {
    fn new(seed: u64) -> Self {
        Block { w1: randn(&[7, 5], seed).var(), b1: randn(&[7], seed + 1).var(), w2: randn(&[5, 7], seed + 2).var() }
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = ops::linear(x, &self.w1, Some(&self.b1))?.silu()?;
        x.add(&ops::linear(&h, &self.w2, None)?)
    }
    fn params(&self) -> Vec<Tensor> {
        vec![self.w1.clone(), self.b1.clone(), self.w2.clone()]
    }
    fn checkpointed(&self, x: &Tensor) -> Result<Tensor> {
        let blk = self.clone();
        let params = self.params();
        let refs: Vec<&Tensor> = params.iter().collect();
        Ok(checkpoint(&[x], &refs, move |xs| Ok(vec![blk.forward(&xs[0])?]))?.remove(0))
    }
}

#[test]
fn single_output_gradients_identical_and_tape_smaller() -> Result<()> {
    autograd::clear_tape();
    let blocks: Vec<Block> = (0..4).map(|i| Block::new(10 * i)).collect();
    let x = randn(&[3, 5], 99).var();
    let run = |ckpt: bool| -> Result<(usize, Vec<Vec<f32>>)> {
        let mut h = x.clone();
        for b in &blocks {
            h = if ckpt { b.checkpointed(&h)? } else { b.forward(&h)? };
        }
        let nodes = autograd::tape_len();
        let g = autograd::backward(&h.sqr()?.sum_all()?)?;
        let mut all: Vec<&Tensor> = vec![&x];
        let params: Vec<Tensor> = blocks.iter().flat_map(|b| b.params()).collect();
        all.extend(params.iter());
        Ok((nodes, grads_of(&g, &all)))
    };
    let (n_plain, plain) = run(false)?;
    let (n_ckpt, ckpt) = run(true)?;
    println!("tape nodes before backward: {n_plain} plain, {n_ckpt} checkpointed");
    assert_eq!(plain, ckpt);
    assert_eq!(n_ckpt, 4);
    assert!(n_plain >= 4 * 5, "each block records at least 5 ops");
    assert_eq!(autograd::tape_len(), 0);
    Ok(())
}

#[test]
fn several_outputs_partially_used() -> Result<()> {
    autograd::clear_tape();
    let (a, b) = (randn(&[4, 3], 1).var(), randn(&[4, 3], 2).var());
    let w = randn(&[3, 3], 3).var();
    let f = {
        let w = w.clone();
        move |xs: &[Tensor]| -> Result<Vec<Tensor>> {
            let p = xs[0].matmul(&w)?.tanh()?;
            let q = xs[0].mul(&xs[1])?.sum(&[1], false)?; // [4]
            let r = xs[1].exp()?; // unused by the loss
            Ok(vec![p, q, r])
        }
    };
    let loss = |o: &[Tensor]| -> Result<Tensor> { o[0].sqr()?.sum_all()?.add(&o[1].scale(3.0)?.sum_all()?) };
    let plain = f(&[a.clone(), b.clone()])?;
    let g_plain = grads_of(&autograd::backward(&loss(&plain)?)?, &[&a, &b, &w]);
    let outs = checkpoint(&[&a, &b], &[&w], f)?;
    assert_eq!(outs.iter().map(|o| o.shape().to_vec()).collect::<Vec<_>>(), vec![vec![4, 3], vec![4], vec![4, 3]]);
    for (o, p) in outs.iter().zip(&plain) {
        assert_eq!(o.to_vec_f32()?, p.to_vec_f32()?);
    }
    let g_ckpt = grads_of(&autograd::backward(&loss(&outs)?)?, &[&a, &b, &w]);
    assert_eq!(g_plain, g_ckpt);
    Ok(())
}

/// A tracked non-leaf tensor captured by the segment (like a conditioning embedding)
/// passes its gradient on to what produced it.
#[test]
fn captured_intermediate_and_untracked_input() -> Result<()> {
    autograd::clear_tape();
    let p = randn(&[5], 4).var();
    let x = randn(&[2, 5], 5); // not tracked
    let run = |ckpt: bool| -> Result<Vec<f32>> {
        let emb = p.silu()?.scale(2.0)?; // tracked, not a leaf
        let out = if ckpt {
            let e = emb.clone();
            checkpoint(&[&x], &[&emb], move |xs| Ok(vec![xs[0].mul(&e)?.tanh()?]))?.remove(0)
        } else {
            x.mul(&emb)?.tanh()?
        };
        let g = autograd::backward(&out.sum_all()?)?;
        assert!(g.get(&x).is_none());
        g.get(&p).unwrap().to_vec_f32()
    };
    assert_eq!(run(false)?, run(true)?);
    Ok(())
}

#[test]
fn nested_segments() -> Result<()> {
    autograd::clear_tape();
    let blocks: Vec<Block> = (0..3).map(|i| Block::new(100 + 10 * i)).collect();
    let x = randn(&[2, 5], 7).var();
    let params: Vec<Tensor> = blocks.iter().flat_map(|b| b.params()).collect();
    let plain = {
        let mut h = x.clone();
        for b in &blocks {
            h = b.forward(&h)?;
        }
        let g = autograd::backward(&h.sum_all()?)?;
        grads_of(&g, &std::iter::once(&x).chain(params.iter()).collect::<Vec<_>>())
    };
    // One outer segment over three inner ones.
    let inner = blocks.clone();
    let refs: Vec<&Tensor> = params.iter().collect();
    let h = checkpoint(&[&x], &refs, move |xs| {
        let mut h = xs[0].clone();
        for b in &inner {
            h = b.checkpointed(&h)?;
        }
        Ok(vec![h])
    })?
    .remove(0);
    assert_eq!(autograd::tape_len(), 1);
    let g = autograd::backward(&h.sum_all()?)?;
    let nested = grads_of(&g, &std::iter::once(&x).chain(params.iter()).collect::<Vec<_>>());
    assert_eq!(plain, nested);
    Ok(())
}

#[test]
fn undeclared_tracked_capture_is_an_error() -> Result<()> {
    autograd::clear_tape();
    let w = randn(&[3], 8).var();
    let x = randn(&[3], 9).var();
    let wc = w.clone();
    let y = checkpoint(&[&x], &[], move |xs| Ok(vec![xs[0].mul(&wc)?]))?.remove(0);
    let err = autograd::backward(&y.sum_all()?).err().expect("an error").to_string();
    println!("{err}");
    assert!(err.contains("checkpoint") && err.contains("captured"), "{err}");
    autograd::clear_tape();
    Ok(())
}

#[test]
fn duplicate_captures_count_once() -> Result<()> {
    autograd::clear_tape();
    let w = randn(&[3], 10).var();
    let x = randn(&[3], 11).var();
    let wc = w.clone();
    let y = checkpoint(&[&x], &[&w, &w], move |xs| Ok(vec![xs[0].mul(&wc)?]))?.remove(0);
    let g = autograd::backward(&y.sum_all()?)?;
    assert_eq!(g.get(&w).unwrap().to_vec_f32()?, x.to_vec_f32()?);
    Ok(())
}

#[test]
fn passthrough_without_grad() -> Result<()> {
    autograd::clear_tape();
    let b = Block::new(50);
    let x = randn(&[2, 5], 12).var();
    let y = autograd::without_grad(|| b.checkpointed(&x))?;
    assert!(!y.tracks_grad());
    assert_eq!(autograd::tape_len(), 0);
    assert_eq!(y.to_vec_f32()?, autograd::without_grad(|| b.forward(&x))?.to_vec_f32()?);
    Ok(())
}

/// A segment that returns a captured tensor or its input unchanged still routes gradients.
#[test]
fn identity_segments() -> Result<()> {
    autograd::clear_tape();
    let w = randn(&[3], 13).var();
    let x = randn(&[3], 14).var();
    let wc = w.clone();
    let outs = checkpoint(&[&x], &[&w], move |xs| Ok(vec![wc.clone(), xs[0].clone()]))?;
    let y = checkpoint(&[&x], &[], |xs| Ok(vec![xs[0].clone()]))?.remove(0);
    let loss = outs[0].scale(2.0)?.sum_all()?.add(&outs[1].scale(3.0)?.sum_all()?)?.add(&y.sum_all()?)?;
    let g = autograd::backward(&loss)?;
    assert_eq!(g.get(&w).unwrap().to_vec_f32()?, vec![2.0; 3]);
    assert_eq!(g.get(&x).unwrap().to_vec_f32()?, vec![4.0; 3]);
    Ok(())
}

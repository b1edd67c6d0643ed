//! How launchers see strided tensors: element offsets and strides into a storage, checked
//! against the storage's length before any pointer reaches a kernel.

use super::storage::CudaStorage;
use crate::error::Result;

/// A matrix: element (r, c) at `offset + r * row_stride + c` (unit column stride).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl Rows {
    pub fn contiguous(rows: usize, cols: usize) -> Self {
        Self { offset: 0, rows, cols, row_stride: cols }
    }
    pub(crate) fn check(&self, op: &'static str, what: &str, s: &CudaStorage) -> Result<()> {
        s.check_span(op, what, self.offset, &[self.rows, self.cols], &[self.row_stride, 1])
    }
}

/// A [B, N, D] token tensor: (b, n, d) at `offset + b * batch_stride + n * row_stride + d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub offset: usize,
    pub batch: usize,
    pub tokens: usize,
    pub dim: usize,
    pub batch_stride: usize,
    pub row_stride: usize,
}

impl Tokens {
    pub fn contiguous(batch: usize, tokens: usize, dim: usize) -> Self {
        Self { offset: 0, batch, tokens, dim, batch_stride: tokens * dim, row_stride: dim }
    }
    pub(crate) fn check(&self, op: &'static str, what: &str, s: &CudaStorage) -> Result<()> {
        s.check_span(
            op,
            what,
            self.offset,
            &[self.batch, self.tokens, self.dim],
            &[self.batch_stride, self.row_stride, 1],
        )
    }
}

/// A [B, D] per-sample vector (adaLN shift / scale / gate, often a chunk of a [B, k * D]
/// modulation tensor): (b, d) at `offset + b * batch_stride + d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerBatch {
    pub offset: usize,
    pub batch_stride: usize,
}

impl PerBatch {
    pub(crate) fn check(&self, op: &'static str, what: &str, s: &CudaStorage, batch: usize, dim: usize) -> Result<()> {
        s.check_span(op, what, self.offset, &[batch, dim], &[self.batch_stride, 1])
    }
}

/// A [B, H, N, D] attention operand with any batch / head / row strides (unit D stride).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub offset: usize,
    pub batch_stride: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

impl Heads {
    /// Contiguous [B, H, N, D].
    pub fn bhnd(heads: usize, len: usize, dim: usize) -> Self {
        Self { offset: 0, batch_stride: heads * len * dim, head_stride: len * dim, row_stride: dim }
    }
    /// Contiguous [B, N, H, D] (the layout projections produce).
    pub fn bnhd(heads: usize, len: usize, dim: usize) -> Self {
        Self { offset: 0, batch_stride: len * heads * dim, head_stride: dim, row_stride: heads * dim }
    }
    /// Checks a [batch, heads, len, dim] access through these strides.
    pub(crate) fn check(&self, op: &'static str, what: &str, s: &CudaStorage, shape: [usize; 4]) -> Result<()> {
        s.check_span(op, what, self.offset, &shape, &[self.batch_stride, self.head_stride, self.row_stride, 1])
    }
}

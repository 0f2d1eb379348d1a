//! `y = x W^T (+ b)` with a CPU fast path for the few-row products of decode steps.
//!
//! A general GEMM re-packs the whole weight on every call, which for one row costs more than the
//! product itself; decoding is bound by reading the weights once. For up to [`MAX_STREAMED_ROWS`]
//! rows each weight row is streamed once and dotted with every input row. Each output element is
//! computed by the same code whatever the number of rows, so a sequence's decode logits do not
//! depend on what else is in the batch.

use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor};
use rayon::prelude::*;

/// Rows up to which the streaming kernel is used (a decode step of that many sequences).
pub const MAX_STREAMED_ROWS: usize = 64;

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { inner: candle_nn::Linear::new(weight, bias) }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    fn streamed(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let w = self.inner.weight();
        if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
            return Ok(None);
        }
        let (rows, k) = match x.dims() {
            [rows, k] => (*rows, *k),
            _ => return Ok(None),
        };
        if rows > MAX_STREAMED_ROWS || !w.is_contiguous() {
            return Ok(None);
        }
        let n = w.dim(0)?;
        let x = x.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(wv))) = (&*xs, &*ws) else {
            return Ok(None);
        };
        let xv = &xv[xl.start_offset()..xl.start_offset() + rows * k];
        let wv = &wv[wl.start_offset()..wl.start_offset() + n * k];
        let mut out = vec![0f32; rows * n];
        // Blocks of output columns in parallel; each block streams its weight rows once.
        const BLOCK: usize = 32;
        let mut by_column = vec![0f32; n * rows];
        by_column.par_chunks_mut(BLOCK * rows).enumerate().for_each(|(b, chunk)| {
            let first = b * BLOCK;
            let cols = chunk.len() / rows;
            products(xv, rows, &wv[first * k..(first + cols) * k], cols, k, chunk);
        });
        for j in 0..n {
            for r in 0..rows {
                out[r * n + j] = by_column[j * rows + r];
            }
        }
        drop((xs, ws));
        let y = Tensor::from_vec(out, (rows, n), &Device::Cpu)?;
        Ok(Some(match self.inner.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        }))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.streamed(x)? {
            Some(y) => Ok(y),
            None => self.inner.forward(x),
        }
    }
}

const LANES: usize = 8;

/// `out[c * rows + r] = x_r · w_c` for `cols` weight rows. Every element is accumulated in the same
/// lane order and reduced the same way whatever tile computes it, so results are independent of
/// the number of rows.
fn products(x: &[f32], rows: usize, w: &[f32], cols: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { products_avx2(x, rows, w, cols, k, out) };
        }
    }
    products_portable(x, rows, w, cols, k, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn products_avx2(x: &[f32], rows: usize, w: &[f32], cols: usize, k: usize, out: &mut [f32]) {
    products_portable(x, rows, w, cols, k, out)
}

#[inline(always)]
fn products_portable(x: &[f32], rows: usize, w: &[f32], cols: usize, k: usize, out: &mut [f32]) {
    let mut c = 0;
    while c < cols {
        let tc = if cols - c >= 2 { 2 } else { 1 };
        let mut r = 0;
        while r < rows {
            let tr = (rows - r).min(4);
            match (tr, tc) {
                (4, 2) => tile::<4, 2>(x, r, w, c, k, rows, out),
                (_, 2) => (0..tr).for_each(|i| tile::<1, 2>(x, r + i, w, c, k, rows, out)),
                (4, _) => tile::<4, 1>(x, r, w, c, k, rows, out),
                _ => (0..tr).for_each(|i| tile::<1, 1>(x, r + i, w, c, k, rows, out)),
            }
            r += tr;
        }
        c += tc;
    }
}

#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn tile<const R: usize, const C: usize>(x: &[f32], r0: usize, w: &[f32], c0: usize, k: usize, rows: usize, out: &mut [f32]) {
    let mut acc = [[[0f32; LANES]; C]; R];
    let chunks = k / LANES;
    for ch in 0..chunks {
        let base = ch * LANES;
        for i in 0..R {
            let xr = &x[(r0 + i) * k + base..(r0 + i) * k + base + LANES];
            for j in 0..C {
                let wr = &w[(c0 + j) * k + base..(c0 + j) * k + base + LANES];
                for l in 0..LANES {
                    acc[i][j][l] = xr[l].mul_add(wr[l], acc[i][j][l]);
                }
            }
        }
    }
    for i in 0..R {
        for j in 0..C {
            let a = &acc[i][j];
            let mut sum = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
            for t in chunks * LANES..k {
                sum = x[(r0 + i) * k + t].mul_add(w[(c0 + j) * k + t], sum);
            }
            out[(c0 + j) * rows + r0 + i] = sum;
        }
    }
}

pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: candle_nn::VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((out_dim, in_dim), "weight")?, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_matches_gemm_and_is_row_independent() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (300, 77), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 300, &dev)?;
        let lin = Linear::new(w.clone(), Some(b.clone()));
        let x = Tensor::randn(0f32, 1.0, (5, 77), &dev)?;
        let fast = lin.forward(&x)?;
        let reference = x.matmul(&w.t()?)?.broadcast_add(&b)?;
        let diff = (&fast - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        // Row 2 alone gives bit-identical output to row 2 in the batch.
        let alone = lin.forward(&x.narrow(0, 2, 1)?)?;
        assert_eq!(alone.flatten_all()?.to_vec1::<f32>()?, fast.narrow(0, 2, 1)?.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}

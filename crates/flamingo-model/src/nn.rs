//! Small building blocks shared by the vision tower, the resampler and the xattn blocks.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::linear::Linear;

/// The activation dtype: f32 on the CPU whatever the weights are stored in (the packed matmul
/// reads f16/bf16 weights and computes in f32, and every other CPU op is fastest in f32); the
/// load dtype elsewhere.
pub fn activation_dtype(weights: DType, device: &candle_core::Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        weights
    }
}

/// `vb` for parameters that take part in activation arithmetic (norms, embeddings, gates).
pub fn activation_vb<'a>(vb: &VarBuilder<'a>) -> VarBuilder<'a> {
    vb.clone()
        .set_dtype(activation_dtype(vb.dtype(), vb.device()))
}

pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(
        dim,
        candle_nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
        activation_vb(&vb),
    )
}

pub fn rms_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<candle_nn::RmsNorm> {
    candle_nn::rms_norm(dim, eps, activation_vb(&vb))
}

/// `[.., tokens, heads * head_dim]` -> `[.., heads, tokens, head_dim]`, contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (tokens, features) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let mut shape = dims[..dims.len() - 2].to_vec();
    shape.extend([tokens, heads, features / heads]);
    let rank = shape.len();
    x.reshape(shape)?
        .transpose(rank - 3, rank - 2)?
        .contiguous()
}

/// Inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let rank = dims.len();
    let (heads, tokens, head_dim) = (dims[rank - 3], dims[rank - 2], dims[rank - 1]);
    let mut shape = dims[..rank - 3].to_vec();
    shape.extend([tokens, heads * head_dim]);
    x.transpose(rank - 3, rank - 2)?
        .contiguous()?
        .reshape(shape)
}

/// Scaled dot-product attention with an optional additive f32 mask `[Tq, Tk]` broadcast over
/// heads; the mask and softmax are applied in f32 whatever the activation dtype.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    if [q, k, v].iter().all(|t| is_host_f32(t)) && mask.is_none_or(|m| m.rank() == 2) {
        return host_attention(q, k, v, scale as f32, mask);
    }
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?
        .to_dtype(dtype)?
        .matmul(v)
}

fn is_host_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The CPU path: per (batch, head), `softmax(q·kᵀ·scale + mask)·v` with both products run by the
/// packed matmul (k and vᵀ packed on the fly; they are small next to the work done with them).
fn host_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    use crate::kernels::{elementwise::softmax_rows, PackedMatrix, WeightDtype};
    use rayon::prelude::*;
    let dims = q.dims().to_vec();
    let rank = dims.len();
    let (tq, d) = (dims[rank - 2], dims[rank - 1]);
    let tk = k.dim(rank - 2)?;
    let host = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let (qv, kv, vv) = (host(q)?, host(k)?, host(v)?);
    let mask = mask.map(host).transpose()?;
    let heads = qv.len() / (tq * d);
    if kv.len() != heads * tk * d
        || vv.len() != kv.len()
        || mask.as_ref().is_some_and(|m| m.len() != tq * tk)
    {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not line up",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let mut out = vec![0f32; qv.len()];
    out.par_chunks_mut(tq * d).enumerate().for_each(|(b, out)| {
        crate::kernels::serial(|| {
            let keys =
                PackedMatrix::new(&kv[b * tk * d..(b + 1) * tk * d], tk, d, WeightDtype::F32);
            let mut scores = vec![0f32; tq * tk];
            keys.matmul(&qv[b * tq * d..(b + 1) * tq * d], tq, None, &mut scores);
            let softmax_scale = match &mask {
                Some(m) => {
                    scores
                        .iter_mut()
                        .zip(m)
                        .for_each(|(s, m)| *s = *s * scale + m);
                    1.0
                }
                None => scale,
            };
            softmax_rows(&mut scores, tk, softmax_scale);
            let values = &vv[b * tk * d..(b + 1) * tk * d];
            PackedMatrix::from_transposed(values, d, tk, WeightDtype::F32)
                .matmul(&scores, tq, None, out);
        })
    });
    Tensor::from_vec(out, dims, q.device())
}

/// Applies an in-place f32 kernel to a copy of a CPU tensor.
struct HostMap {
    name: &'static str,
    f: fn(&mut [f32]),
}

impl candle_core::CustomOp1 for HostMap {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(values), Some((start, end))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("{}: expected a contiguous f32 tensor", self.name);
        };
        let mut out = values[start..end].to_vec();
        (self.f)(&mut out);
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// OpenAI CLIP's activation: x * sigmoid(1.702 x).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if is_host_f32(x) {
        let op = HostMap {
            name: "quick_gelu",
            f: crate::kernels::elementwise::quick_gelu,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// `nn.GELU()` (exact erf form).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if is_host_f32(x) {
        let op = HostMap {
            name: "gelu_erf",
            f: crate::kernels::elementwise::gelu_erf,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    x.gelu_erf()
}

/// Feed-forward `LayerNorm -> Linear -> GELU(erf) -> Linear` (Sequential indices 0, 1, 3), used by
/// the resampler and the xattn blocks; no biases on the linears.
pub struct FeedForward {
    norm: LayerNorm,
    up: crate::linear::Linear,
    down: crate::linear::Linear,
}

impl FeedForward {
    pub fn new(
        dim: usize,
        mult: usize,
        vb: VarBuilder,
        quant: Option<crate::linear::Quantization>,
    ) -> Result<Self> {
        Ok(Self {
            norm: layer_norm(dim, 1e-5, vb.pp("0"))?,
            up: Linear::load_quantizable(dim, dim * mult, vb.pp("1"), quant)?,
            down: Linear::load_quantizable(dim * mult, dim, vb.pp("3"), quant)?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        gelu_erf(&x.apply(&self.norm)?.apply(&self.up)?)?.apply(&self.down)
    }
}

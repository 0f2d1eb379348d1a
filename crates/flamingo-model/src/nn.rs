//! Small building blocks shared by the vision tower, the resampler and the xattn blocks.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::linear::Linear;

pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(
        dim,
        candle_nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
        vb,
    )
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

/// Scaled dot-product attention with an optional additive f32 mask broadcast over heads; the
/// mask and softmax are applied in f32 whatever the activation dtype.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
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
        x.apply(&self.norm)?
            .apply(&self.up)?
            .gelu_erf()?
            .apply(&self.down)
    }
}

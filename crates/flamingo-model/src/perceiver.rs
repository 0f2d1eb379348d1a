//! Perceiver resampler (docs/architecture.md §4): 64 learned latents cross-attend to each
//! image's patch tokens. Every layer re-normalises the *original* patch tokens; keys/values are
//! [norm(x); norm(latents)].

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::linear::Linear;

use crate::config::ResamplerConfig;

use crate::nn::{activation_vb, add, attention_heads, layer_norm, FeedForward};

struct PerceiverAttention {
    norm_media: LayerNorm,
    norm_latents: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
}

impl PerceiverAttention {
    fn new(dim: usize, cfg: &ResamplerConfig, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.heads * cfg.dim_head;
        Ok(Self {
            norm_media: layer_norm(dim, 1e-5, vb.pp("norm_media"))?,
            norm_latents: layer_norm(dim, 1e-5, vb.pp("norm_latents"))?,
            to_q: Linear::load(dim, inner, false, vb.pp("to_q"))?,
            to_kv: Linear::load(dim, 2 * inner, false, vb.pp("to_kv"))?,
            to_out: Linear::load(inner, dim, false, vb.pp("to_out"))?,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
        })
    }

    /// x [N, P, D] patch tokens, latents [N, L, D].
    fn forward(&self, x: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let inner = self.heads * self.dim_head;
        let media = x.apply(&self.norm_media)?;
        let lat = latents.apply(&self.norm_latents)?;
        let q = lat.apply(&self.to_q)?;
        let kv = Tensor::cat(&[&media, &lat], 1)?.apply(&self.to_kv)?;
        let scale = 1.0 / (self.dim_head as f64).sqrt();
        attention_heads(
            (&q, 0),
            (&kv, 0),
            (&kv, inner),
            self.heads,
            self.dim_head,
            scale,
        )?
        .apply(&self.to_out)
    }
}

pub struct PerceiverResampler {
    latents: Tensor,
    layers: Vec<(PerceiverAttention, FeedForward)>,
    norm: LayerNorm,
}

impl PerceiverResampler {
    /// `vb` points at the checkpoint's `perceiver` prefix.
    pub fn new(dim: usize, cfg: &ResamplerConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.depth)
            .map(|i| {
                let layer = vb.pp("layers").pp(i);
                Ok((
                    PerceiverAttention::new(dim, cfg, layer.pp("0"))?,
                    FeedForward::new(dim, cfg.ff_mult, layer.pp("1"), None)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            latents: activation_vb(&vb).get((cfg.num_latents, dim), "latents")?,
            layers,
            norm: layer_norm(dim, 1e-5, vb.pp("norm"))?,
        })
    }

    /// Patch tokens [N, P, D] (one row per image) -> latents [N, num_latents, D].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (l, d) = self.latents.dims2()?;
        let mut latents = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((n, l, d))?
            .contiguous()?;
        for (attn, ff) in &self.layers {
            latents = add(&attn.forward(x, &latents)?, &latents)?;
            latents = add(&ff.forward(&latents)?, &latents)?;
        }
        latents.apply(&self.norm)
    }
}

//! Gated cross-attention block (spec §6), in front of every Nth decoder layer, on the residual
//! stream. Media keys/values depend only on the images, so they are computed once per sequence.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::linear::Linear;

use crate::config::XattnConfig;

use crate::nn::{activation_vb, attention, layer_norm, merge_heads, split_heads, FeedForward};

/// Keys and values of one sequence's images for one block: [heads, images * latents, dim_head].
#[derive(Debug, Clone)]
pub struct MediaKv {
    pub k: Tensor,
    pub v: Tensor,
}

/// The rows of a packed batch that belong to one sequence, with the image each token sees.
pub struct XattnRows<'a> {
    pub start: usize,
    pub len: usize,
    /// 1-based image index per token, 0 = no image.
    pub media_time: &'a [u32],
    pub media: Option<&'a MediaKv>,
}

pub struct GatedCrossAttention {
    norm: LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    attn_gate: Tensor,
    ff: FeedForward,
    ff_gate: Tensor,
    heads: usize,
    dim_head: usize,
    num_latents: usize,
}

impl GatedCrossAttention {
    /// `vb` points at `lang_encoder.model.layers.X.gated_cross_attn_layer`.
    pub fn new(
        dim: usize,
        dim_visual: usize,
        num_latents: usize,
        cfg: &XattnConfig,
        vb: VarBuilder,
        quant: Option<crate::linear::Quantization>,
    ) -> Result<Self> {
        let inner = cfg.heads * cfg.dim_head;
        let attn = vb.pp("attn");
        Ok(Self {
            norm: layer_norm(dim, 1e-5, attn.pp("norm"))?,
            to_q: Linear::load(dim, inner, false, attn.pp("to_q"))?,
            to_kv: Linear::load(dim_visual, 2 * inner, false, attn.pp("to_kv"))?,
            to_out: Linear::load(inner, dim, false, attn.pp("to_out"))?,
            attn_gate: activation_vb(&vb).get(1, "attn_gate")?.tanh()?,
            ff: FeedForward::new(dim, cfg.ff_mult, vb.pp("ff"), quant)?,
            ff_gate: activation_vb(&vb).get(1, "ff_gate")?.tanh()?,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
            num_latents,
        })
    }

    /// Resampler output of a sequence's images [T_img, latents, D] -> keys/values.
    pub fn media_kv(&self, media: &Tensor) -> Result<MediaKv> {
        let (t, l, d) = media.dims3()?;
        let inner = self.heads * self.dim_head;
        let kv = media.reshape((t * l, d))?.apply(&self.to_kv)?;
        Ok(MediaKv {
            k: split_heads(&kv.narrow(1, 0, inner)?, self.heads)?,
            v: split_heads(&kv.narrow(1, inner, inner)?, self.heads)?,
        })
    }

    /// x: packed hidden states [tokens, dim].
    pub fn forward(&self, x: &Tensor, rows: &[XattnRows]) -> Result<Tensor> {
        let sees_image = |r: &XattnRows| r.media.is_some() && r.media_time.iter().any(|&t| t > 0);
        let x = if rows.iter().any(sees_image) {
            // A token without an image gets an all-zero attention row and `to_out` has no bias,
            // so sequences that see no image contribute exact zeros.
            let q = x.apply(&self.norm)?.apply(&self.to_q)?;
            let mut parts = Vec::with_capacity(rows.len());
            for r in rows {
                let inner = self.heads * self.dim_head;
                match r.media.filter(|_| sees_image(r)) {
                    Some(media) => parts.push(self.attend(
                        &q.narrow(0, r.start, r.len)?,
                        r.media_time,
                        media,
                    )?),
                    None => parts.push(Tensor::zeros((r.len, inner), x.dtype(), x.device())?),
                }
            }
            let out = Tensor::cat(&parts, 0)?.apply(&self.to_out)?;
            (x + out.broadcast_mul(&self.attn_gate)?)?
        } else {
            x.clone()
        };
        let ff = self.ff.forward(&x)?.broadcast_mul(&self.ff_gate)?;
        x + ff
    }

    fn attend(&self, q: &Tensor, media_time: &[u32], media: &MediaKv) -> Result<Tensor> {
        let n = q.dim(0)?;
        let keys = media.k.dim(1)?;
        // Disallowed scores get -f32::MAX (not -inf) like the reference; rows of tokens with no
        // image are zeroed after the softmax.
        let mut mask = vec![0f32; n * keys];
        let mut keep = vec![0f32; n];
        for (i, &t) in media_time.iter().enumerate() {
            if t == 0 {
                continue;
            }
            keep[i] = 1.0;
            mask[i * keys..(i + 1) * keys].fill(f32::MIN);
            let first = (t as usize - 1) * self.num_latents;
            let last = (first + self.num_latents).min(keys);
            mask[i * keys + first.min(keys)..i * keys + last].fill(0.0);
        }
        let dev = q.device();
        let mask = Tensor::from_vec(mask, (n, keys), dev)?;
        let keep = Tensor::from_vec(keep, (n, 1), dev)?.to_dtype(q.dtype())?;
        let q = split_heads(q, self.heads)?;
        let scale = 1.0 / (self.dim_head as f64).sqrt();
        let out = attention(&q, &media.k, &media.v, scale, Some(&mask))?;
        merge_heads(&out)?.broadcast_mul(&keep)
    }
}

//! Gated cross-attention block (docs/architecture.md §6), in front of every Nth decoder layer,
//! on the residual stream. Media keys/values depend only on the images, so they are computed
//! once per sequence.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::kernels::{PackedMatrix, SharedOut, WeightDtype};
use crate::linear::Linear;

use crate::config::XattnConfig;

use crate::nn::{activation_vb, attention, layer_norm, merge_heads, split_heads, FeedForward};

/// Keys and values of one sequence's images for one block.
#[derive(Debug, Clone)]
pub enum MediaKv {
    /// `[heads, images * latents, dim_head]` each.
    Tensors { k: Tensor, v: Tensor },
    /// The CPU form, per image and head (index `image * heads + head`): keys packed for `q·kᵀ`
    /// and values for `p·v`, once per sequence instead of once per step.
    Host(Arc<Vec<HeadKv>>),
}

#[derive(Debug)]
pub struct HeadKv {
    keys: PackedMatrix,
    values: PackedMatrix,
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
        if kv.device().is_cpu() && kv.dtype() == DType::F32 {
            let rows = kv.flatten_all()?.to_vec1::<f32>()?;
            let (dh, stride) = (self.dim_head, 2 * inner);
            let heads = (0..t * self.heads)
                .map(|task| {
                    let (image, h) = (task / self.heads, task % self.heads);
                    let at = image * l * stride + h * dh;
                    HeadKv {
                        keys: PackedMatrix::new_strided(&rows[at..], l, dh, stride, F32),
                        values: PackedMatrix::from_transposed_strided(
                            &rows[at + inner..],
                            dh,
                            l,
                            stride,
                            F32,
                        ),
                    }
                })
                .collect();
            return Ok(MediaKv::Host(Arc::new(heads)));
        }
        Ok(MediaKv::Tensors {
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
            let host = rows
                .iter()
                .all(|r| r.media.is_none_or(|m| matches!(m, MediaKv::Host(_))));
            let attended = if host && q.dtype() == DType::F32 {
                self.host_attend(&q, rows)?
            } else {
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
                Tensor::cat(&parts, 0)?
            };
            let out = attended.apply(&self.to_out)?;
            (x + out.broadcast_mul(&self.attn_gate)?)?
        } else {
            x.clone()
        };
        let ff = self.ff.forward(&x)?.broadcast_mul(&self.ff_gate)?;
        x + ff
    }

    /// The CPU path, all sequences at once: each run of tokens that sees one image attends to
    /// that image's latents alone, per head, with keys and values packed once per sequence. The
    /// same numbers as the masked softmax over every image (a masked score's exp is exactly 0;
    /// bit for bit when the latent count is a multiple of the softmax's 16 lanes, as 64 is);
    /// tokens that see no image get zeros.
    fn host_attend(&self, q: &Tensor, rows: &[XattnRows]) -> Result<Tensor> {
        let (dh, heads) = (self.dim_head, self.heads);
        let inner = heads * dh;
        let queries = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let tokens = queries.len() / inner;
        // (first row, rows, that image's per-head keys and values)
        let mut runs: Vec<(usize, usize, &[HeadKv])> = Vec::new();
        for r in rows {
            let Some(MediaKv::Host(kv)) = r.media else {
                continue;
            };
            let images = kv.len() / heads;
            let mut i = 0;
            while i < r.len {
                let t = r.media_time[i] as usize;
                let mut j = i + 1;
                while j < r.len && r.media_time[j] as usize == t {
                    j += 1;
                }
                if t > 0 {
                    if t > images {
                        candle_core::bail!("token sees image {t} of {images}");
                    }
                    runs.push((r.start + i, j - i, &kv[(t - 1) * heads..t * heads]));
                }
                i = j;
            }
        }
        let mut out = vec![0f32; tokens * inner];
        let out_ptr = SharedOut::new(&mut out);
        let scale = 1.0 / (dh as f32).sqrt();
        let latents = self.num_latents;
        let one = |(run, h): (usize, usize)| {
            let (row, n, kv) = runs[run];
            let HeadKv { keys, values } = &kv[h];
            crate::kernels::serial(|| {
                let mut scores = vec![0f32; n * latents];
                // SAFETY: rows row..row+n of `queries` and `out` are in bounds (runs lie inside
                // their sequence's rows); this task alone writes head h's columns of them.
                unsafe {
                    let at = row * inner + h * dh;
                    keys.matmul_strided(
                        queries[at..].as_ptr(),
                        inner,
                        n,
                        scores.as_mut_ptr(),
                        latents,
                    );
                    crate::kernels::elementwise::softmax_rows(&mut scores, latents, scale);
                    values.matmul_strided(scores.as_ptr(), latents, n, out_ptr.at(at), inner);
                }
            })
        };
        let tasks: Vec<(usize, usize)> = (0..runs.len())
            .flat_map(|run| (0..heads).map(move |h| (run, h)))
            .collect();
        if crate::kernels::in_serial() || tasks.len() == 1 {
            tasks.into_iter().for_each(one);
        } else {
            use rayon::prelude::*;
            tasks.into_par_iter().for_each(one);
        }
        Tensor::from_vec(out, (tokens, inner), q.device())
    }

    fn attend(&self, q: &Tensor, media_time: &[u32], media: &MediaKv) -> Result<Tensor> {
        let MediaKv::Tensors { k, v } = media else {
            candle_core::bail!("cross-attention: packed media keys on a tensor path");
        };
        let n = q.dim(0)?;
        let keys = k.dim(1)?;
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
        let out = attention(&q, k, v, scale, Some(&mask))?;
        merge_heads(&out)?.broadcast_mul(&keep)
    }
}

const F32: WeightDtype = WeightDtype::F32;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(crate::kernels::test_values(n, seed), shape, &Device::Cpu).unwrap()
    }

    /// A block with random weights: dim 32, visual dim 24, 2 heads of 16, 16 latents per image.
    fn block() -> GatedCrossAttention {
        let (dim, visual, inner) = (32, 24, 32);
        let mut w = HashMap::new();
        for (i, (name, shape)) in [
            ("attn.norm.weight", vec![dim]),
            ("attn.norm.bias", vec![dim]),
            ("attn.to_q.weight", vec![inner, dim]),
            ("attn.to_kv.weight", vec![2 * inner, visual]),
            ("attn.to_out.weight", vec![dim, inner]),
            ("attn_gate", vec![1]),
            ("ff.0.weight", vec![dim]),
            ("ff.0.bias", vec![dim]),
            ("ff.1.weight", vec![4 * dim, dim]),
            ("ff.3.weight", vec![dim, 4 * dim]),
            ("ff_gate", vec![1]),
        ]
        .into_iter()
        .enumerate()
        {
            w.insert(name.to_string(), random(&shape, 40 + i as u64));
        }
        let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
        let cfg = XattnConfig {
            heads: 2,
            dim_head: 16,
            ff_mult: 4,
        };
        GatedCrossAttention::new(dim, visual, 16, &cfg, vb, None).unwrap()
    }

    #[test]
    fn packed_per_image_attention_equals_the_masked_attention_over_all_images_bit_for_bit() {
        let block = block();
        let media = random(&[3, 16, 24], 7);
        let host = block.media_kv(&media).unwrap();
        assert!(matches!(host, MediaKv::Host(_)));
        let kv = media
            .reshape((48, 24))
            .unwrap()
            .apply(&block.to_kv)
            .unwrap();
        let tensors = MediaKv::Tensors {
            k: split_heads(&kv.narrow(1, 0, 32).unwrap(), 2).unwrap(),
            v: split_heads(&kv.narrow(1, 32, 32).unwrap(), 2).unwrap(),
        };
        let x = random(&[9, 32], 8);
        // Two sequences packed together: one sees no image, then images 1, 2, 3; one sees image 2.
        let times_a = [0u32, 1, 1, 2, 3, 3, 3];
        let times_b = [2u32, 2];
        let run = |media: &MediaKv| {
            let rows = [
                XattnRows {
                    start: 0,
                    len: 7,
                    media_time: &times_a,
                    media: Some(media),
                },
                XattnRows {
                    start: 7,
                    len: 2,
                    media_time: &times_b,
                    media: Some(media),
                },
            ];
            block
                .forward(&x, &rows)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (packed, masked) = (run(&host), run(&tensors));
        assert_eq!(packed, masked);
        let x_in = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(packed, x_in, "the block must change its input");
    }
}

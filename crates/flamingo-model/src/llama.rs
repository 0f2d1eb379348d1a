//! LLaMA decoder layers (transformers 4.28 `LlamaDecoderLayer`) over a packed batch: the linear
//! layers see every token of every sequence at once; attention runs per sequence against its
//! own KV cache, so sequences of any length mix in one step with no padding.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{RmsNorm, VarBuilder};

use crate::config::LlamaConfig;
use crate::kernels::attention::{causal_attention, AttnShape, RopeTables, SeqAttn};
use crate::kv_cache::KvCache;
use crate::linear::{Linear, Quantization};
use crate::nn::{attention, merge_heads, rms_norm, split_heads};

/// Where a sequence's tokens sit in the packed batch and in its own history.
pub struct AttnRows<'a> {
    pub start: usize,
    pub len: usize,
    /// Position of the first token (tokens already in the cache).
    pub position: usize,
    pub cache: &'a mut KvCache,
}

/// cos/sin tables of the HF "rotate_half" rotary embedding.
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// The same tables in host memory for the CPU attention kernel.
    host: Option<RopeTables>,
}

impl Rotary {
    pub fn new(
        cfg: &LlamaConfig,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let dim = cfg.head_dim();
        let inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / dim as f64) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, dim / 2), device)?;
        let t = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = t.matmul(&inv_freq)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        let host = match device {
            Device::Cpu => Some(RopeTables {
                cos: cos.flatten_all()?.to_vec1()?,
                sin: sin.flatten_all()?.to_vec1()?,
                half: dim / 2,
            }),
            _ => None,
        };
        Ok(Self {
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            host,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// x [1, heads, n, head_dim] at positions `position..position + n`.
    fn apply(&self, x: &Tensor, position: usize) -> Result<Tensor> {
        let n = x.dim(2)?;
        if position + n > self.max_positions() {
            candle_core::bail!(
                "position {} exceeds the model's {} positions",
                position + n,
                self.max_positions()
            );
        }
        let cos = self.cos.narrow(0, position, n)?;
        let sin = self.sin.narrow(0, position, n)?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}

struct SelfAttention {
    /// q_proj, k_proj and v_proj stacked.
    qkv_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(cfg: &LlamaConfig, vb: VarBuilder, quant: Option<Quantization>) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let kv = cfg.kv_heads() * hd;
        Ok(Self {
            qkv_proj: Linear::load_stacked(
                h,
                &[
                    (cfg.num_attention_heads * hd, vb.pp("q_proj")),
                    (kv, vb.pp("k_proj")),
                    (kv, vb.pp("v_proj")),
                ],
                quant,
            )?,
            o_proj: Linear::load_quantizable(
                cfg.num_attention_heads * hd,
                h,
                vb.pp("o_proj"),
                quant,
            )?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: hd,
        })
    }

    fn forward(&self, x: &Tensor, rows: &mut [AttnRows], rotary: &Rotary) -> Result<Tensor> {
        let qkv = x.apply(&self.qkv_proj)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if let (Some(tables), DType::F32) = (&rotary.host, qkv.dtype()) {
            return self
                .host_attention(&qkv, rows, tables, scale as f32)?
                .apply(&self.o_proj);
        }
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let q = qkv.narrow(1, 0, q_width)?.contiguous()?;
        let k = qkv.narrow(1, q_width, kv_width)?.contiguous()?;
        let v = qkv.narrow(1, q_width + kv_width, kv_width)?.contiguous()?;
        let mut outs = Vec::with_capacity(rows.len());
        for r in rows.iter_mut() {
            let heads =
                |t: &Tensor, n: usize| split_heads(&t.narrow(0, r.start, r.len)?.unsqueeze(0)?, n);
            let qs = rotary.apply(&heads(&q, self.heads)?, r.position)?;
            let ks = rotary.apply(&heads(&k, self.kv_heads)?, r.position)?;
            let vs = heads(&v, self.kv_heads)?;
            let (ks, vs) = r.cache.device()?.append(&ks.squeeze(0)?, &vs.squeeze(0)?)?;
            let (ks, vs) = (self.repeat_kv(ks)?, self.repeat_kv(vs)?);
            let mask = causal_mask(r.len, r.cache.len(), x.device())?;
            let out = attention(&qs.squeeze(0)?, &ks, &vs, scale, mask.as_ref())?;
            outs.push(merge_heads(&out)?);
        }
        Tensor::cat(&outs, 0)?.apply(&self.o_proj)
    }

    /// The CPU path: one kernel call for every sequence and head of the batch, straight on the
    /// stacked projection's rows.
    fn host_attention(
        &self,
        qkv: &Tensor,
        rows: &mut [AttnRows],
        tables: &RopeTables,
        scale: f32,
    ) -> Result<Tensor> {
        for r in rows.iter() {
            if r.position + r.len > tables.cos.len() / tables.half {
                candle_core::bail!(
                    "position {} exceeds the model's {} positions",
                    r.position + r.len,
                    tables.cos.len() / tables.half
                );
            }
        }
        let qkv_rows = qkv.flatten_all()?.to_vec1::<f32>()?;
        let mut seqs = rows
            .iter_mut()
            .map(|r| {
                Ok(SeqAttn {
                    start: r.start,
                    len: r.len,
                    cache: r.cache.host()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let shape = AttnShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        };
        let tokens = qkv.dim(0)?;
        let mut out = vec![0f32; tokens * self.heads * self.head_dim];
        causal_attention(&qkv_rows, &mut seqs, shape, tables, scale, &mut out);
        Tensor::from_vec(out, (tokens, self.heads * self.head_dim), qkv.device())
    }

    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let groups = self.heads / self.kv_heads;
        if groups == 1 {
            return Ok(x);
        }
        let (kvh, t, d) = x.dims3()?;
        x.unsqueeze(1)?
            .broadcast_as((kvh, groups, t, d))?
            .reshape((kvh * groups, t, d))
    }
}

/// Additive mask for `n` new tokens at the end of a `total`-long history; `None` for one token.
fn causal_mask(n: usize, total: usize, device: &Device) -> Result<Option<Tensor>> {
    if n <= 1 {
        return Ok(None);
    }
    let past = total - n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (n, total), device).map(Some)
}

struct Mlp {
    /// gate_proj and up_proj stacked.
    gate_up_proj: Linear,
    down_proj: Linear,
    intermediate: usize,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::nn::silu_mul(&x.apply(&self.gate_up_proj)?, self.intermediate)?
            .apply(&self.down_proj)
    }
}

pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// `vb` points at `model.layers.N`.
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder, quant: Option<Quantization>) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mlp = vb.pp("mlp");
        Ok(Self {
            input_layernorm: rms_norm(h, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: SelfAttention::new(cfg, vb.pp("self_attn"), quant)?,
            post_attention_layernorm: rms_norm(
                h,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp {
                gate_up_proj: Linear::load_stacked(
                    h,
                    &[(i, mlp.pp("gate_proj")), (i, mlp.pp("up_proj"))],
                    quant,
                )?,
                down_proj: Linear::load_quantizable(i, h, mlp.pp("down_proj"), quant)?,
                intermediate: i,
            },
        })
    }

    pub fn forward(&self, x: &Tensor, rows: &mut [AttnRows], rotary: &Rotary) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&x.apply(&self.input_layernorm)?, rows, rotary)?;
        let x = crate::nn::add(x, &attn)?;
        let mlp = x.apply(&self.post_attention_layernorm)?.apply(&self.mlp)?;
        crate::nn::add(&x, &mlp)
    }
}

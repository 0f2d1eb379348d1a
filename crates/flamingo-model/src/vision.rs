//! CLIP ViT as open_clip 2.16 runs it for OpenFlamingo: patch tokens after the last block,
//! `ln_pre` applied, CLS dropped, no `ln_post`/`proj` (docs/architecture.md §2). Module paths are
//! open_clip keys.

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use crate::config::VisionConfig;
use crate::linear::Linear;

use crate::nn::{activation_vb, add, attention_heads, layer_norm, quick_gelu};

struct ResidualBlock {
    ln_1: LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

impl ResidualBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (w, eps) = (cfg.width, cfg.layer_norm_eps);
        let attn = vb.pp("attn");
        Ok(Self {
            ln_1: layer_norm(w, eps, vb.pp("ln_1"))?,
            in_proj: Linear::from_weights(
                attn.get((3 * w, w), "in_proj_weight")?,
                Some(attn.get(3 * w, "in_proj_bias")?),
                None,
            )?,
            out_proj: Linear::load(w, w, true, attn.pp("out_proj"))?,
            ln_2: layer_norm(w, eps, vb.pp("ln_2"))?,
            c_fc: Linear::load(w, cfg.mlp_width(), true, vb.pp("mlp").pp("c_fc"))?,
            c_proj: Linear::load(cfg.mlp_width(), w, true, vb.pp("mlp").pp("c_proj"))?,
            heads: cfg.heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = self.out_proj.out_dim();
        let h = x.apply(&self.ln_1)?;
        // Packed rows are [q; k; v] along the output dim (nn.MultiheadAttention layout).
        let qkv = h.apply(&self.in_proj)?;
        let head_dim = width / self.heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let attn = attention_heads(
            (&qkv, 0),
            (&qkv, width),
            (&qkv, 2 * width),
            self.heads,
            head_dim,
            scale,
        )?
        .apply(&self.out_proj)?;
        let x = add(x, &attn)?;
        let mlp = x.apply(&self.ln_2)?.apply(&self.c_fc)?;
        let mlp = quick_gelu(&mlp)?.apply(&self.c_proj)?;
        add(&x, &mlp)
    }
}

pub struct VisionTransformer {
    patch_embed: Linear,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<ResidualBlock>,
    cfg: VisionConfig,
}

impl VisionTransformer {
    /// `vb` points at open_clip's `visual` prefix.
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (w, p) = (cfg.width, cfg.patch_size);
        let conv = vb.get((w, 3, p, p), "conv1.weight")?;
        let blocks = (0..cfg.layers)
            .map(|i| ResidualBlock::new(cfg, vb.pp("transformer.resblocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            // A stride-p, kernel-p convolution is a matmul over flattened (c, ky, kx) patches.
            patch_embed: Linear::from_weights(conv.reshape((w, 3 * p * p))?, None, None)?,
            class_embedding: activation_vb(&vb).get(w, "class_embedding")?,
            positional_embedding: activation_vb(&vb)
                .get((cfg.num_patches() + 1, w), "positional_embedding")?,
            ln_pre: layer_norm(w, cfg.layer_norm_eps, vb.pp("ln_pre"))?,
            blocks,
            cfg: cfg.clone(),
        })
    }

    /// `pixels` [N, 3, S, S] -> patch tokens [N, num_patches, width].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, _, _, _) = pixels.dims4()?;
        let (g, p, w) = (self.cfg.grid(), self.cfg.patch_size, self.cfg.width);
        let patches = pixels
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n, g * g, 3 * p * p))?;
        let tokens = patches.apply(&self.patch_embed)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, w))?
            .broadcast_as((n, 1, w))?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?
            .broadcast_add(&self.positional_embedding)?
            .apply(&self.ln_pre)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        x.narrow(1, 1, g * g)
    }
}

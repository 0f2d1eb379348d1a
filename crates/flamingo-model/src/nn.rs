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

/// Multi-head attention of projection outputs whose rows hold the heads side by side: queries
/// are columns `q.1..` of `q.0 [N, Tq, *]`, keys and values columns `k.1..`, `v.1..` of
/// `[N, Tk, *]` (they may all be one stacked projection). Returns `[N, Tq, heads · head_dim]`,
/// the heads merged, as `merge_heads(attention(split_heads(q), split_heads(k), split_heads(v)))`.
pub fn attention_heads(
    q: (&Tensor, usize),
    k: (&Tensor, usize),
    v: (&Tensor, usize),
    heads: usize,
    head_dim: usize,
    scale: f64,
) -> Result<Tensor> {
    let width = heads * head_dim;
    if [q.0, k.0, v.0]
        .iter()
        .all(|t| is_host_f32(t) && t.rank() == 3)
    {
        return host_attention_heads(q, k, v, heads, head_dim, scale as f32);
    }
    let part = |(t, col): (&Tensor, usize)| split_heads(&t.narrow(2, col, width)?, heads);
    merge_heads(&attention(&part(q)?, &part(k)?, &part(v)?, scale, None)?)
}

fn host_attention_heads(
    q: (&Tensor, usize),
    k: (&Tensor, usize),
    v: (&Tensor, usize),
    heads: usize,
    head_dim: usize,
    scale: f32,
) -> Result<Tensor> {
    use crate::kernels::heads::multi_head_attention;
    let (q_t, k_t, v_t) = (q.0.contiguous()?, k.0.contiguous()?, v.0.contiguous()?);
    let (items, tq, q_stride) = q_t.dims3()?;
    let (k_items, tk, k_stride) = k_t.dims3()?;
    let (v_items, tv, v_stride) = v_t.dims3()?;
    let width = heads * head_dim;
    if k_items != items
        || v_items != items
        || tv != tk
        || q.1 + width > q_stride
        || k.1 + width > k_stride
        || v.1 + width > v_stride
        || tq == 0
        || tk == 0
    {
        candle_core::bail!(
            "attention: q {:?}@{}, k {:?}@{}, v {:?}@{} do not hold {heads} heads of {head_dim}",
            q_t.dims(),
            q.1,
            k_t.dims(),
            k.1,
            v_t.dims(),
            v.1
        );
    }
    let (q_guard, q_layout) = q_t.storage_and_layout();
    let (k_guard, k_layout) = k_t.storage_and_layout();
    let (v_guard, v_layout) = v_t.storage_and_layout();
    let out = multi_head_attention(
        head_rows(&q_guard, q_layout, tq, q_stride, q.1)?,
        head_rows(&k_guard, k_layout, tk, k_stride, k.1)?,
        head_rows(&v_guard, v_layout, tk, v_stride, v.1)?,
        items,
        heads,
        head_dim,
        scale,
        None,
    );
    Tensor::from_vec(out, (items, tq, width), q.0.device())
}

fn is_host_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The CPU path: each (batch, head) as one item of [`multi_head_attention`] (keys and values packed
/// on the fly; they are small next to the work done with them).
fn host_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    use crate::kernels::heads::{multi_head_attention, HeadRows};
    let dims = q.dims().to_vec();
    let rank = dims.len();
    let (tq, d) = (dims[rank - 2], dims[rank - 1]);
    let tk = k.dim(rank - 2)?;
    let host = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let (qv, kv, vv) = (host(q)?, host(k)?, host(v)?);
    let mask = mask.map(host).transpose()?;
    if tq == 0 || tk == 0 || d == 0 {
        // Nothing to attend with or to: the products are empty sums.
        return Tensor::zeros(dims, DType::F32, q.device());
    }
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
    // Each (batch, head) is one item of one head whose rows are its own `[t, d]` block.
    let rows = |data, rows| HeadRows {
        data,
        rows,
        stride: d,
        col: 0,
    };
    let out = multi_head_attention(
        rows(&qv, tq),
        rows(&kv, tk),
        rows(&vv, tk),
        heads,
        1,
        d,
        scale,
        mask.as_deref(),
    );
    Tensor::from_vec(out, dims, q.device())
}

/// The values of a contiguous f32 CPU tensor, or an error naming `op`.
pub(crate) fn host_values<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{op}: expected a contiguous f32 tensor"),
    }
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
        let mut out = host_values(storage, layout, self.name)?.to_vec();
        (self.f)(&mut out);
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// The rows of a contiguous f32 CPU tensor's storage as [`HeadRows`].
fn head_rows<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
    rows: usize,
    stride: usize,
    col: usize,
) -> Result<crate::kernels::heads::HeadRows<'a>> {
    let candle_core::Storage::Cpu(storage) = storage else {
        candle_core::bail!("attention: expected CPU tensors");
    };
    Ok(crate::kernels::heads::HeadRows {
        data: host_values(storage, layout, "attention")?,
        rows,
        stride,
        col,
    })
}

/// `a + b` of two CPU tensors of one shape.
struct HostAdd;

impl candle_core::CustomOp2 for HostAdd {
    fn name(&self) -> &'static str {
        "host-add"
    }

    fn cpu_fwd(
        &self,
        a: &candle_core::CpuStorage,
        a_layout: &candle_core::Layout,
        b: &candle_core::CpuStorage,
        b_layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (a, b) = (
            host_values(a, a_layout, "host-add")?,
            host_values(b, b_layout, "host-add")?,
        );
        if a_layout.shape() != b_layout.shape() {
            candle_core::bail!(
                "host-add: shapes {:?} and {:?} differ",
                a_layout.shape(),
                b_layout.shape()
            );
        }
        let out = crate::kernels::elementwise::add(a, b);
        Ok((candle_core::CpuStorage::F32(out), a_layout.shape().clone()))
    }
}

/// `a + b` for the residual stream. On the CPU our own add: candle's runs big tensors on a
/// second, spinning thread pool that competes with the kernels' pool for the same cores and
/// serialises its callers (images encoded side by side would take turns).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if is_host_f32(a) && is_host_f32(b) && a.shape() == b.shape() {
        return a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &HostAdd);
    }
    a + b
}

/// `silu(gate) · up` of stacked `[.., 2 · width]` rows on the CPU.
struct HostSiluMul(usize);

impl candle_core::CustomOp1 for HostSiluMul {
    fn name(&self) -> &'static str {
        "host-silu-mul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let values = host_values(storage, layout, "host-silu-mul")?;
        let mut dims = layout.dims().to_vec();
        if dims.last() != Some(&(2 * self.0)) {
            candle_core::bail!("host-silu-mul: rows of {:?}, expected {}", dims, 2 * self.0);
        }
        *dims.last_mut().expect("checked") = self.0;
        let out = crate::kernels::elementwise::silu_mul(values, self.0);
        Ok((candle_core::CpuStorage::F32(out), dims.into()))
    }
}

/// LLaMA's gated activation `silu(gate) · up` from the stacked `[gate | up]` projection
/// (last dim `2 · width`): one pass instead of two narrows, a SiLU and a product.
pub fn silu_mul(gate_up: &Tensor, width: usize) -> Result<Tensor> {
    if is_host_f32(gate_up) {
        return gate_up.contiguous()?.apply_op1_no_bwd(&HostSiluMul(width));
    }
    let last = gate_up.rank() - 1;
    let gate = gate_up.narrow(last, 0, width)?.silu()?;
    gate * gate_up.narrow(last, width, width)?
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

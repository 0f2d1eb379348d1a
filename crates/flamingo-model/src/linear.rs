//! The model's linear layers. On the CPU the weight is packed once at load time for
//! [`crate::kernels`] (f32, f16 or bf16 storage, f32 arithmetic); on other devices candle's
//! matmul runs it; optionally the big projections (LLaMA layers, xattn feed-forwards, lm_head)
//! are quantized through candle's quantized matmul so the 9B model fits a 24 GB CPU machine.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::{PackedMatrix, WeightDtype};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// 8-bit blocks of 32 (about 1.06 bytes per weight).
    Q8_0,
    /// 4-bit k-quants, blocks of 256 (about 0.56 bytes per weight).
    Q4K,
}

impl Quantization {
    fn ggml(self) -> GgmlDType {
        match self {
            Quantization::Q8_0 => GgmlDType::Q8_0,
            Quantization::Q4K => GgmlDType::Q4K,
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Packed {
        weight: Arc<PackedMatrix>,
        bias: Option<Arc<Vec<f32>>>,
    },
    Dense(candle_nn::Linear),
    Quantized(QMatMul),
}

/// `y = x · Wᵀ (+ b)` over the last dimension of `x`, in `x`'s dtype.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    kind: Kind,
    out_dim: usize,
}

impl Linear {
    /// `weight` (and `bias` when `with_bias`) under `vb`, as `nn.Linear` names them.
    pub fn load(in_dim: usize, out_dim: usize, with_bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = with_bias.then(|| vb.get(out_dim, "bias")).transpose()?;
        Self::from_weights(weight, bias, None)
    }

    /// A bias-free projection, quantized when `quant` is set and the rows fit its block size.
    pub fn load_quantizable(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        quant: Option<Quantization>,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Self::from_weights(weight, None, quant)
    }

    /// Several bias-free projections of the same input as one (their weights stacked along the
    /// output dim, in order): one pass over `x` and one parallel dispatch instead of several, with
    /// every output column computed exactly as its own projection would.
    pub fn load_stacked(
        in_dim: usize,
        parts: &[(usize, VarBuilder)],
        quant: Option<Quantization>,
    ) -> Result<Self> {
        let weights = parts
            .iter()
            .map(|(out_dim, vb)| vb.get((*out_dim, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        Self::from_weights(Tensor::cat(&weights, 0)?, None, quant)
    }

    /// `weight` is `[out, in]`; the storage dtype of the weight is kept (f32/f16/bf16).
    pub fn from_weights(
        weight: Tensor,
        bias: Option<Tensor>,
        quant: Option<Quantization>,
    ) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let kind = match quant {
            Some(q) if bias.is_none() && in_dim % q.ggml().block_size() == 0 => {
                let qt = QTensor::quantize(&weight.to_dtype(DType::F32)?, q.ggml())?;
                Kind::Quantized(QMatMul::from_qtensor(qt)?)
            }
            _ => match (weight.device(), packed_dtype(weight.dtype())) {
                (Device::Cpu, Some(dtype)) => {
                    let values = weight
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let bias = bias
                        .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
                        .transpose()?;
                    Kind::Packed {
                        weight: Arc::new(PackedMatrix::new(&values, out_dim, in_dim, dtype)),
                        bias: bias.map(Arc::new),
                    }
                }
                _ => Kind::Dense(candle_nn::Linear::new(weight, bias)),
            },
        };
        Ok(Self { kind, out_dim })
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
}

fn packed_dtype(dtype: DType) -> Option<WeightDtype> {
    match dtype {
        DType::F32 => Some(WeightDtype::F32),
        DType::F16 => Some(WeightDtype::F16),
        DType::BF16 => Some(WeightDtype::BF16),
        _ => None,
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            Kind::Packed { weight, bias } => {
                let op = PackedLinear {
                    weight,
                    bias: bias.as_deref().map(Vec::as_slice),
                };
                let dtype = x.dtype();
                x.to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&op)?
                    .to_dtype(dtype)
            }
            Kind::Dense(l) => l.forward(x),
            Kind::Quantized(q) => {
                let dtype = x.dtype();
                q.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
            }
        }
    }
}

struct PackedLinear<'a> {
    weight: &'a PackedMatrix,
    bias: Option<&'a [f32]>,
}

impl CustomOp1 for PackedLinear<'_> {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let values = crate::nn::host_values(storage, layout, "packed-linear")?;
        let dims = layout.dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.weight.in_dim() {
            candle_core::bail!(
                "packed-linear: input has {k} features, the weight expects {}",
                self.weight.in_dim()
            );
        }
        let m = values.len().checked_div(k).unwrap_or(0);
        let n = self.weight.out_dim();
        let out = self.weight.matmul_to_vec(values, m, self.bias);
        let mut shape = dims[..dims.len() - 1].to_vec();
        shape.push(n);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

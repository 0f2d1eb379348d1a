//! Optional weight quantization of the big projections (LLaMA layers, xattn feed-forwards,
//! lm_head) through candle's quantized matmul, so the 9B model fits a 24 GB CPU machine.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

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

/// A bias-free projection, dense or quantized.
#[derive(Debug, Clone)]
pub enum Proj {
    Dense(Linear),
    Quantized(QMatMul),
}

impl Proj {
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        quant: Option<Quantization>,
    ) -> Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        Self::from_weight(w, quant)
    }

    /// Rows whose length is not a multiple of the block size stay dense.
    pub fn from_weight(w: Tensor, quant: Option<Quantization>) -> Result<Self> {
        match quant {
            Some(q) if w.dim(1)? % q.ggml().block_size() == 0 => {
                let qt = QTensor::quantize(&w.to_dtype(DType::F32)?, q.ggml())?;
                Ok(Proj::Quantized(QMatMul::from_qtensor(qt)?))
            }
            _ => Ok(Proj::Dense(Linear::new(w, None))),
        }
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Dense(l) => l.forward(x),
            Proj::Quantized(q) => {
                let dtype = x.dtype();
                q.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
            }
        }
    }
}

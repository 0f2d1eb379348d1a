//! Per-sequence key/value cache that grows in place, so a decode step appends one column instead
//! of re-allocating the whole history. On the CPU it is plain memory that
//! [`crate::kernels::attention`] reads and appends to; on other devices, device tensors.

use candle_core::{Result, Tensor};

use crate::kernels::attention::HostKv;

#[derive(Debug, Clone, Default)]
pub enum KvCache {
    #[default]
    Empty,
    Device(DeviceKv),
    Host(HostKv),
}

impl KvCache {
    pub fn len(&self) -> usize {
        match self {
            KvCache::Empty => 0,
            KvCache::Device(d) => d.len,
            KvCache::Host(h) => h.len(),
        }
    }

    /// The device history (created on first use).
    pub fn device(&mut self) -> Result<&mut DeviceKv> {
        if let KvCache::Empty = self {
            *self = KvCache::Device(DeviceKv::default());
        }
        match self {
            KvCache::Device(d) => Ok(d),
            _ => candle_core::bail!("this sequence's cache lives in host memory"),
        }
    }

    /// The host history (created on first use).
    pub fn host(&mut self) -> Result<&mut HostKv> {
        if let KvCache::Empty = self {
            *self = KvCache::Host(HostKv::default());
        }
        match self {
            KvCache::Host(h) => Ok(h),
            _ => candle_core::bail!("this sequence's cache lives on the device"),
        }
    }

    /// An independent copy of the first `n` positions (at most `len`), sized to fit them: a
    /// prefix cache stores it, and a sequence that starts from it grows its own copy.
    pub fn prefix(&self, n: usize) -> Result<Self> {
        Ok(match self {
            KvCache::Empty => KvCache::Empty,
            _ if n == 0 => KvCache::Empty,
            KvCache::Device(d) => KvCache::Device(d.prefix(n)?),
            KvCache::Host(h) => KvCache::Host(h.prefix(n)),
        })
    }

    /// Bytes held, by allocated capacity.
    pub fn bytes(&self) -> usize {
        match self {
            KvCache::Empty => 0,
            KvCache::Device(d) => d.bytes(),
            KvCache::Host(h) => h.bytes(),
        }
    }

    /// An independent copy (beam search forks a beam).
    pub fn deep_copy(&self) -> Result<Self> {
        Ok(match self {
            KvCache::Empty => KvCache::Empty,
            KvCache::Device(d) => KvCache::Device(d.deep_copy()?),
            KvCache::Host(h) => KvCache::Host(h.clone()),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeviceKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

/// Smallest capacity allocated, in positions.
const MIN_CAPACITY: usize = 32;

impl DeviceKv {
    fn capacity(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dims()[1])
    }

    /// Appends `k`, `v` of shape [heads, n, head_dim]; returns the whole history.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        if self.len + n > self.capacity() {
            self.grow((self.len + n).max(2 * self.capacity()).max(MIN_CAPACITY), k)?;
        }
        let (kb, vb) = (
            self.k.as_ref().expect("grown"),
            self.v.as_ref().expect("grown"),
        );
        kb.slice_set(&k.contiguous()?, 1, self.len)?;
        vb.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len += n;
        Ok((kb.narrow(1, 0, self.len)?, vb.narrow(1, 0, self.len)?))
    }

    fn grow(&mut self, capacity: usize, like: &Tensor) -> Result<()> {
        let (heads, _, head_dim) = like.dims3()?;
        let fresh = || Tensor::zeros((heads, capacity, head_dim), like.dtype(), like.device());
        let (k, v) = (fresh()?, fresh()?);
        if let (Some(old_k), Some(old_v)) = (&self.k, &self.v) {
            k.slice_set(&old_k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            v.slice_set(&old_v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
        }
        self.k = Some(k);
        self.v = Some(v);
        Ok(())
    }

    fn prefix(&self, n: usize) -> Result<Self> {
        let n = n.min(self.len);
        let copy = |t: &Option<Tensor>| {
            t.as_ref()
                .map(|t| t.narrow(1, 0, n)?.contiguous()?.copy())
                .transpose()
        };
        Ok(Self {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            len: n,
        })
    }

    fn bytes(&self) -> usize {
        let size = |t: &Option<Tensor>| {
            t.as_ref()
                .map_or(0, |t| t.elem_count() * t.dtype().size_in_bytes())
        };
        size(&self.k) + size(&self.v)
    }

    fn deep_copy(&self) -> Result<Self> {
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy()).transpose();
        Ok(Self {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            len: self.len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn appends_across_growth() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = DeviceKv::default();
        let mut all = Vec::new();
        for step in 0..40 {
            let n = if step == 0 { 5 } else { 1 };
            let k = Tensor::full(step as f32, (2, n, 3), &dev)?;
            all.push(k.clone());
            let (ks, _) = cache.append(&k, &k)?;
            assert_eq!(ks.dims(), &[2, cache.len, 3]);
        }
        let (ks, _) = cache.append(
            &Tensor::zeros((2, 0, 3), candle_core::DType::F32, &dev)?,
            &Tensor::zeros((2, 0, 3), candle_core::DType::F32, &dev)?,
        )?;
        let expected = Tensor::cat(&all, 1)?;
        assert_eq!(ks.i(1)?.to_vec2::<f32>()?, expected.i(1)?.to_vec2::<f32>()?);
        Ok(())
    }
}

//! Causal self-attention of a packed batch on the CPU, straight on slices: RoPE, the append to
//! each sequence's history and softmax(q·kᵀ·scale)·v per (sequence, head), all heads of all
//! sequences in parallel. It replaces ~15 small tensor ops per sequence per layer, whose fixed
//! costs dominated decode steps of many short sequences.

use rayon::prelude::*;

use super::elementwise::{exp, lanes};
use super::SharedOut;

/// One sequence's history of keys and values, head-major: `[kv_heads][capacity][head_dim]`, so
/// one head's keys (and values) are one contiguous run that the prefetcher streams.
#[derive(Debug, Clone, Default)]
pub struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
    capacity: usize,
    /// Set by the first append (0 while empty).
    head_dim: usize,
}

/// Smallest capacity allocated, in positions.
const MIN_CAPACITY: usize = 64;

impl HostKv {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An independent copy of positions `0..n` (at most `len`), sized to hold exactly them.
    pub fn prefix(&self, n: usize) -> HostKv {
        let n = n.min(self.len);
        if n == 0 {
            return HostKv::default();
        }
        let hd = self.head_dim;
        let kv_heads = self.k.len() / (self.capacity * hd);
        let copy = |data: &[f32]| {
            let mut out = Vec::with_capacity(kv_heads * n * hd);
            for h in 0..kv_heads {
                out.extend_from_slice(&data[h * self.capacity * hd..][..n * hd]);
            }
            out
        };
        HostKv {
            k: copy(&self.k),
            v: copy(&self.v),
            len: n,
            capacity: n,
            head_dim: hd,
        }
    }

    /// Bytes held (allocated capacity, not just `len`).
    pub fn bytes(&self) -> usize {
        (self.k.capacity() + self.v.capacity()) * std::mem::size_of::<f32>()
    }

    /// Room for `extra` more positions; doubling keeps appends amortised O(1).
    fn reserve(&mut self, extra: usize, kv_heads: usize, head_dim: usize) {
        self.head_dim = head_dim;
        let needed = self.len + extra;
        if needed <= self.capacity {
            return;
        }
        let capacity = needed.max(2 * self.capacity).max(MIN_CAPACITY);
        let regrow = |old: &[f32]| {
            let mut fresh = vec![0f32; kv_heads * capacity * head_dim];
            for h in 0..kv_heads {
                let src = &old[h * self.capacity * head_dim..][..self.len * head_dim];
                fresh[h * capacity * head_dim..][..self.len * head_dim].copy_from_slice(src);
            }
            fresh
        };
        self.k = regrow(&self.k);
        self.v = regrow(&self.v);
        self.capacity = capacity;
    }

    /// Keys (or values) of head `h` at positions `0..len`.
    fn head<'a>(&self, data: &'a [f32], h: usize, head_dim: usize) -> &'a [f32] {
        &data[h * self.capacity * head_dim..][..self.len * head_dim]
    }
}

/// Shapes of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// HF "rotate_half" rotary tables, `[positions][head_dim / 2]`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTables {
    /// `x[d], x[d + half]` rotated by position `pos`, as `x * cos + rotate_half(x) * sin`.
    fn rotate(&self, x: &mut [f32], pos: usize) {
        let (cos, sin) = (
            &self.cos[pos * self.half..(pos + 1) * self.half],
            &self.sin[pos * self.half..(pos + 1) * self.half],
        );
        let (lo, hi) = x.split_at_mut(self.half);
        for d in 0..self.half {
            let (a, b) = (lo[d], hi[d]);
            lo[d] = a * cos[d] - b * sin[d];
            hi[d] = b * cos[d] + a * sin[d];
        }
    }
}

/// The new tokens of one sequence: rows `start..start + len` of the packed q/k/v.
pub struct SeqAttn<'a> {
    pub start: usize,
    pub len: usize,
    pub cache: &'a mut HostKv,
}

/// `qkv [tokens, heads*hd + 2*kv_heads*hd]` (each row q, k, v side by side, as the stacked
/// projection writes them; before RoPE) -> `out [tokens, heads*hd]`.
pub fn causal_attention(
    qkv: &[f32],
    seqs: &mut [SeqAttn],
    shape: AttnShape,
    rope: &RopeTables,
    scale: f32,
    out: &mut [f32],
) {
    let (qw, kw, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
    let row_width = qw + 2 * kw;
    // RoPE and the cache append, sequence by sequence (cheap, memory-bound).
    let mut q_rot = vec![0f32; out.len()];
    for s in seqs.iter_mut() {
        let cache = &mut *s.cache;
        cache.reserve(s.len, shape.kv_heads, hd);
        for t in 0..s.len {
            let (row, pos) = (s.start + t, cache.len + t);
            let (q, kv) = qkv[row * row_width..(row + 1) * row_width].split_at(qw);
            let (k, v) = kv.split_at(kw);
            let q_out = &mut q_rot[row * qw..(row + 1) * qw];
            q_out.copy_from_slice(q);
            for head in q_out.chunks_exact_mut(hd) {
                rope.rotate(head, pos);
            }
            for h in 0..shape.kv_heads {
                let at = (h * cache.capacity + pos) * hd;
                cache.k[at..at + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
                rope.rotate(&mut cache.k[at..at + hd], pos);
                cache.v[at..at + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
            }
        }
        cache.len += s.len;
    }
    let group = shape.heads / shape.kv_heads;
    let tasks: Vec<(&SeqAttn, usize)> = seqs
        .iter()
        .flat_map(|s| (0..shape.heads).map(move |h| (s, h)))
        .collect();
    let out_ptr = SharedOut::new(out);
    let q_rot = &q_rot;
    tasks.par_iter().for_each(|&(s, h)| {
        super::serial(|| {
            let keys = s.cache.head(&s.cache.k, h / group, hd);
            let values = s.cache.head(&s.cache.v, h / group, hd);
            let first_pos = s.cache.len - s.len;
            let mut scores = Vec::with_capacity(s.cache.len);
            let mut acc = vec![0f32; hd];
            for t in 0..s.len {
                let row = s.start + t;
                let qh = &q_rot[row * qw + h * hd..row * qw + (h + 1) * hd];
                let visible = first_pos + t + 1;
                scores.clear();
                scores.extend(
                    keys[..visible * hd]
                        .chunks_exact(hd)
                        .map(|kj| dot(qh, kj) * scale),
                );
                let max = lanes(&scores, f32::NEG_INFINITY, f32::max, f32::max);
                scores.iter_mut().for_each(|s| *s = exp(*s - max));
                let sum = lanes(&scores, 0.0, |a, s| a + s, |a, b| a + b);
                acc.fill(0.0);
                for (p, vj) in scores.iter().zip(values.chunks_exact(hd)) {
                    axpy(*p / sum, vj, &mut acc);
                }
                // SAFETY: each task writes only its own head's columns of its own sequence's rows.
                unsafe { out_ptr.write(row * qw + h * hd, &acc) };
            }
        })
    });
}

/// `a · b`; 8-lane FMA when the build targets AVX2 (x86-64-v3, see .cargo/config.toml).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    // SAFETY: the features are enabled at compile time; loads stay within the equal-length slices.
    unsafe {
        use std::arch::x86_64::*;
        let n = a.len() / 16 * 16;
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n {
            acc0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc0,
            );
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                acc1,
            );
            i += 16;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let single = _mm_add_ss(pair, _mm_movehdup_ps(pair));
        let tail: f32 = a[n..].iter().zip(&b[n..]).map(|(x, y)| x * y).sum();
        _mm_cvtss_f32(single) + tail
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
}

#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = alpha.mul_add(*x, *y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

    fn tables(positions: usize, hd: usize) -> RopeTables {
        let half = hd / 2;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..positions {
            for i in 0..half {
                let f = p as f32 / 10000f32.powf(2.0 * i as f32 / hd as f32);
                cos.push(f.cos());
                sin.push(f.sin());
            }
        }
        RopeTables { cos, sin, half }
    }

    /// Straightforward f64 attention over the whole sequence at once.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        shape: AttnShape,
        rope: &RopeTables,
    ) -> Vec<f64> {
        let (qw, kw, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        let (mut q, mut k) = (q.to_vec(), k.to_vec());
        for t in 0..n {
            for h in 0..shape.heads {
                rope.rotate(&mut q[t * qw + h * hd..t * qw + (h + 1) * hd], t);
            }
            for h in 0..shape.kv_heads {
                rope.rotate(&mut k[t * kw + h * hd..t * kw + (h + 1) * hd], t);
            }
        }
        let mut out = vec![0f64; n * qw];
        let group = shape.heads / shape.kv_heads;
        for h in 0..shape.heads {
            let g = h / group;
            for t in 0..n {
                let s: Vec<f64> = (0..=t)
                    .map(|j| {
                        (0..hd)
                            .map(|d| q[t * qw + h * hd + d] as f64 * k[j * kw + g * hd + d] as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[t * qw + h * hd + d] = (0..=t)
                        .map(|j| e[j] / z * v[j * kw + g * hd + d] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn prefill_then_decode_matches_full_attention_with_grouped_heads() {
        let shape = AttnShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let (n, prefill) = (9, 6);
        let rope = tables(32, shape.head_dim);
        let (q, k, v) = (values(n * 32, 1), values(n * 16, 2), values(n * 16, 3));
        let expect = reference(&q, &k, &v, n, shape, &rope);
        let mut cache = HostKv::default();
        let mut got = Vec::new();
        // Prefill 6 tokens, then one token per step, each packed next to another sequence.
        let mut other = HostKv::default();
        let mut t = 0;
        while t < n {
            let len = if t == 0 { prefill } else { 1 };
            // Row 0: the other sequence's token; rows 1..: ours. Each row is [q | k | v].
            let mut qkv = values(32, 10 + t as u64);
            qkv.extend(values(16, 20));
            qkv.extend(values(16, 30));
            for r in t..t + len {
                qkv.extend_from_slice(&q[r * 32..(r + 1) * 32]);
                qkv.extend_from_slice(&k[r * 16..(r + 1) * 16]);
                qkv.extend_from_slice(&v[r * 16..(r + 1) * 16]);
            }
            let mut out = vec![0f32; (1 + len) * 32];
            let mut seqs = [
                SeqAttn {
                    start: 0,
                    len: 1,
                    cache: &mut other,
                },
                SeqAttn {
                    start: 1,
                    len,
                    cache: &mut cache,
                },
            ];
            let scale = 1.0 / (shape.head_dim as f32).sqrt();
            causal_attention(&qkv, &mut seqs, shape, &rope, scale, &mut out);
            got.extend_from_slice(&out[32..]);
            t += len;
        }
        assert_eq!(cache.len(), n);
        for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
            assert!((*g as f64 - e).abs() < 1e-5, "[{i}] {g} vs {e}");
        }
    }
}

//! Unmasked-or-masked multi-head attention on the CPU, read straight out of projection rows (the
//! vision tower's stacked q|k|v, the resampler's q and k|v) and written straight into the merged
//! `[tokens, heads · head_dim]` layout the output projection reads. Each (item, head) packs its
//! keys and values once from inside the wider rows; no per-head split, host or merge copies.

use rayon::prelude::*;

use super::elementwise::softmax_rows;
use super::{PackedMatrix, SharedOut, WeightDtype};

/// Rows that hold the heads side by side from column `col`: item `b`'s row `t` starts at
/// `(b * rows + t) * stride`.
#[derive(Debug, Clone, Copy)]
pub struct HeadRows<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub stride: usize,
    pub col: usize,
}

impl<'a> HeadRows<'a> {
    /// The values from item `b`'s first row at head `h` to its last row's end of that head.
    fn head(&self, b: usize, h: usize, head_dim: usize) -> &'a [f32] {
        let start = b * self.rows * self.stride + self.col + h * head_dim;
        &self.data[start..start + (self.rows - 1) * self.stride + head_dim]
    }

    fn check(&self, items: usize, width: usize, what: &str) {
        assert!(
            self.rows > 0
                && self.col + width <= self.stride
                && self.data.len() >= items * self.rows * self.stride,
            "{what}: {} values do not hold {items} x {} rows of {} columns from {} every {}",
            self.data.len(),
            self.rows,
            width,
            self.col,
            self.stride
        );
    }
}

/// `[items, q.rows, heads · head_dim]` = per item and head, `softmax(q·kᵀ·scale + mask)·v`,
/// with an optional additive `mask [q.rows, k.rows]` shared by every item and head.
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention(
    q: HeadRows,
    k: HeadRows,
    v: HeadRows,
    items: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let width = heads * head_dim;
    let (tq, tk) = (q.rows, k.rows);
    q.check(items, width, "queries");
    k.check(items, width, "keys");
    v.check(items, width, "values");
    assert_eq!(v.rows, tk, "keys and values differ in length");
    assert!(mask.is_none_or(|m| m.len() == tq * tk), "mask size");
    let len = items * tq * width;
    let mut out = Vec::with_capacity(len);
    let out_ptr = SharedOut(out.as_mut_ptr());
    let one = |task: usize| {
        let (b, h) = (task / heads, task % heads);
        super::serial(|| {
            let keys =
                PackedMatrix::new_strided(k.head(b, h, head_dim), tk, head_dim, k.stride, F32);
            let mut scores = Vec::with_capacity(tq * tk);
            let queries = q.head(b, h, head_dim);
            // SAFETY: `queries` holds tq rows of head_dim every q.stride; the product stores all
            // tq · tk scores before the length covers them.
            unsafe {
                keys.matmul_strided(queries.as_ptr(), q.stride, tq, scores.as_mut_ptr(), tk);
                scores.set_len(tq * tk);
            }
            let softmax_scale = match mask {
                Some(m) => {
                    scores
                        .iter_mut()
                        .zip(m)
                        .for_each(|(s, m)| *s = *s * scale + m);
                    1.0
                }
                None => scale,
            };
            softmax_rows(&mut scores, tk, softmax_scale);
            let values = PackedMatrix::from_transposed_strided(
                v.head(b, h, head_dim),
                head_dim,
                tk,
                v.stride,
                F32,
            );
            // SAFETY: this task alone writes head h's columns of item b's rows, inside `out`.
            unsafe {
                values.matmul_strided(
                    scores.as_ptr(),
                    tk,
                    tq,
                    out_ptr.at(b * tq * width + h * head_dim),
                    width,
                )
            };
        })
    };
    if super::in_serial() {
        (0..items * heads).for_each(one);
    } else {
        (0..items * heads).into_par_iter().for_each(one);
    }
    // SAFETY: the (item, head) tasks together stored every element (all rows, all heads' columns).
    unsafe { out.set_len(len) };
    out
}

const F32: WeightDtype = WeightDtype::F32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values;

    /// Float64 attention of one item and head, from separate row-major q `[tq, d]`, k, v `[tk, d]`.
    fn naive(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        d: usize,
        scale: f64,
        mask: Option<&[f32]>,
    ) -> Vec<f64> {
        let (tq, tk) = (q.len() / d, k.len() / d);
        let mut out = vec![0f64; tq * d];
        for i in 0..tq {
            let s: Vec<f64> = (0..tk)
                .map(|j| {
                    let dot: f64 = (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum();
                    dot * scale + mask.map_or(0.0, |m| m[i * tk + j] as f64)
                })
                .collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, p) in e.iter().enumerate() {
                for c in 0..d {
                    out[i * d + c] += p / z * v[j * d + c];
                }
            }
        }
        out
    }

    #[test]
    fn stacked_qkv_rows_give_each_heads_attention_in_merged_layout() {
        let (items, t, heads, d) = (3, 9, 4, 8);
        let width = heads * d;
        // One stacked projection: each row is q | k | v, plus 5 unrelated columns at the end.
        let stride = 3 * width + 5;
        let data = test_values(items * t * stride, 21);
        let rows = |col| HeadRows {
            data: &data,
            rows: t,
            stride,
            col,
        };
        for masked in [false, true] {
            let mask: Vec<f32> = (0..t * t)
                .map(|i| if i % t > i / t { -1e30 } else { 0.0 })
                .collect();
            let mask = masked.then_some(mask.as_slice());
            for serial in [false, true] {
                let run = || {
                    multi_head_attention(
                        rows(0),
                        rows(width),
                        rows(2 * width),
                        items,
                        heads,
                        d,
                        0.3,
                        mask,
                    )
                };
                let out = if serial {
                    crate::kernels::serial(run)
                } else {
                    run()
                };
                for b in 0..items {
                    for h in 0..heads {
                        let part = |col: usize| -> Vec<f64> {
                            (0..t)
                                .flat_map(|r| {
                                    let at = (b * t + r) * stride + col + h * d;
                                    data[at..at + d].iter().map(|&v| v as f64)
                                })
                                .collect()
                        };
                        let expect = naive(&part(0), &part(width), &part(2 * width), d, 0.3, mask);
                        for r in 0..t {
                            for c in 0..d {
                                let got = out[(b * t + r) * width + h * d + c] as f64;
                                let want = expect[r * d + c];
                                assert!(
                                    (got - want).abs() < 1e-5,
                                    "item {b} head {h} row {r} col {c}: {got} vs {want} (mask {masked})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn queries_and_keys_may_have_different_lengths_and_sources() {
        let (items, tq, tk, heads, d) = (2, 3, 11, 2, 16);
        let width = heads * d;
        let q = test_values(items * tq * width, 31);
        let kv = test_values(items * tk * 2 * width, 32);
        let out = multi_head_attention(
            HeadRows {
                data: &q,
                rows: tq,
                stride: width,
                col: 0,
            },
            HeadRows {
                data: &kv,
                rows: tk,
                stride: 2 * width,
                col: 0,
            },
            HeadRows {
                data: &kv,
                rows: tk,
                stride: 2 * width,
                col: width,
            },
            items,
            heads,
            d,
            0.25,
            None,
        );
        let b = 1;
        let h = 1;
        let pick = |src: &[f32], rows: usize, stride: usize, col: usize| -> Vec<f64> {
            (0..rows)
                .flat_map(|r| {
                    let at = (b * rows + r) * stride + col + h * d;
                    src[at..at + d]
                        .iter()
                        .map(|&v| v as f64)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let expect = naive(
            &pick(&q, tq, width, 0),
            &pick(&kv, tk, 2 * width, 0),
            &pick(&kv, tk, 2 * width, width),
            d,
            0.25,
            None,
        );
        for r in 0..tq {
            for c in 0..d {
                let got = out[(b * tq + r) * width + h * d + c] as f64;
                assert!((got - expect[r * d + c]).abs() < 1e-5, "row {r} col {c}");
            }
        }
    }
}

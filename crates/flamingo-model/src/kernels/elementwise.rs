//! Vectorisable f32 activation functions and a row softmax for the CPU path. candle's versions
//! call libm per element on one thread; in the vision tower alone QuickGELU and softmax cost
//! more than all the matmuls. These are branch-free polynomials (≈1 ulp exp, 2.5e-7 erf) that
//! LLVM vectorises, run in parallel over chunks.

use rayon::prelude::*;

/// Elements per parallel chunk.
const CHUNK: usize = 16 * 1024;

/// e^x with Cody–Waite range reduction and the Cephes degree-6 polynomial (≈1 ulp in range).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.722_83);
    let shifted = x.mul_add(LOG2E, ROUND);
    let k = shifted - ROUND;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let poly = p.mul_add(r * r, r) + 1.0;
    // The integer k sits in the low mantissa bits of `shifted`; reading it there (not `k as
    // i32`, a saturating scalar conversion) keeps the loop in vector registers.
    let k_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    poly * f32::from_bits(((k_int + 127) << 23) as u32)
}

/// erf(x): its Maclaurin series below |x| = 1, Abramowitz & Stegun 7.1.26 above (absolute
/// error ≤ 1.5e-7 there); both are evaluated and one selected, which keeps the loop vectorised.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x2 = x * x;
    let mut s = 1.0f32 / 76_204_800.0;
    s = s.mul_add(x2, -1.0 / 6_894_720.0);
    s = s.mul_add(x2, 1.0 / 685_440.0);
    s = s.mul_add(x2, -1.0 / 75_600.0);
    s = s.mul_add(x2, 1.0 / 9360.0);
    s = s.mul_add(x2, -1.0 / 1320.0);
    s = s.mul_add(x2, 1.0 / 216.0);
    s = s.mul_add(x2, -1.0 / 42.0);
    s = s.mul_add(x2, 1.0 / 10.0);
    s = s.mul_add(x2, -1.0 / 3.0);
    s = s.mul_add(x2, 1.0);
    let series = std::f32::consts::FRAC_2_SQRT_PI * x * s;
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152_1);
    p = p.mul_add(t, 1.421_413_8);
    p = p.mul_add(t, -0.284_496_72);
    p = p.mul_add(t, 0.254_829_6);
    let tail = (1.0 - p * t * exp(-a * a)).copysign(x);
    if a < 1.0 {
        series
    } else {
        tail
    }
}

fn for_chunks(data: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() <= CHUNK || super::in_serial() {
        f(data);
    } else {
        data.par_chunks_mut(CHUNK).for_each(f);
    }
}

/// OpenAI CLIP's `x * sigmoid(1.702 x)`.
pub fn quick_gelu(data: &mut [f32]) {
    for_chunks(data, |c| {
        for v in c.iter_mut() {
            *v *= 1.0 / (1.0 + exp(-1.702 * *v));
        }
    });
}

/// `nn.GELU()` (erf form): `0.5 x (1 + erf(x / √2))`.
pub fn gelu_erf(data: &mut [f32]) {
    for_chunks(data, |c| {
        for v in c.iter_mut() {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// `a + b` element by element (the residual stream's add), into a new vector.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add: lengths differ");
    if a.len() <= CHUNK || super::in_serial() {
        a.iter().zip(b).map(|(a, b)| a + b).collect()
    } else {
        a.par_iter()
            .zip(b)
            .with_min_len(CHUNK)
            .map(|(a, b)| a + b)
            .collect()
    }
}

/// LLaMA's gated activation from stacked `[gate | up]` rows of `2 · width`: `silu(gate) · up`,
/// with `silu(g) = g / (1 + e^-g)` as torch computes it.
pub fn silu_mul(gate_up: &[f32], width: usize) -> Vec<f32> {
    assert!(
        width > 0 && gate_up.len().is_multiple_of(2 * width),
        "silu_mul: ragged rows"
    );
    let rows = gate_up.len() / (2 * width);
    let mut out = vec![0f32; rows * width];
    let one = |(o, gu): (&mut [f32], &[f32])| {
        let (g, u) = gu.split_at(width);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = *g / (1.0 + exp(-*g)) * u;
        }
    };
    if out.len() <= CHUNK || super::in_serial() {
        out.chunks_mut(width)
            .zip(gate_up.chunks(2 * width))
            .for_each(one);
    } else {
        out.par_chunks_mut(width)
            .zip(gate_up.par_chunks(2 * width))
            .for_each(one);
    }
    out
}

/// A reduction in 16 independent lanes, combined at the end (vectorises; a single running
/// accumulator would not).
#[inline(always)]
pub fn lanes(
    row: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(init, |a, &v| step(a, v));
    for c in chunks {
        for i in 0..16 {
            acc[i] = step(acc[i], c[i]);
        }
    }
    acc.iter().fold(tail, |a, &b| combine(a, b))
}

/// `softmax(scale · row)` over each `row_len`-long row.
pub fn softmax_rows(data: &mut [f32], row_len: usize, scale: f32) {
    let rows_per_chunk = (CHUNK / row_len.max(1)).max(1);
    let one = |rows: &mut [f32]| {
        for row in rows.chunks_exact_mut(row_len) {
            let max = lanes(row, f32::NEG_INFINITY, |m, v| m.max(v * scale), f32::max);
            for v in row.iter_mut() {
                *v = exp(*v * scale - max);
            }
            let inv = 1.0 / lanes(row, 0.0, |s, v| s + v, |a, b| a + b);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    };
    if data.len() <= CHUNK || super::in_serial() {
        one(data);
    } else {
        data.par_chunks_mut(rows_per_chunk * row_len).for_each(one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..n).map(move |i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        for x in grid(-87.0, 88.0, 200_001) {
            let (ours, libm) = (exp(x), x.exp());
            assert!(
                (ours - libm).abs() <= 2.5e-7 * libm,
                "exp({x}) = {ours}, libm {libm}"
            );
        }
        assert_eq!(exp(-200.0), exp(-87.336_55));
        assert!(exp(-200.0) < 1e-37);
    }

    #[test]
    fn erf_matches_a_float64_series_to_2_5e7() {
        fn erf64(x: f64) -> f64 {
            // Maclaurin series, converges well on |x| ≤ 3.
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        for x in grid(-3.0, 3.0, 6001) {
            let d = (erf(x) as f64 - erf64(x as f64)).abs();
            assert!(d < 2.5e-7, "erf({x}) off by {d}");
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn silu_mul_gates_each_rows_up_half_with_silu_of_its_gate_half() {
        let width = 5;
        let rows: Vec<f32> = grid(-6.0, 6.0, 3 * 2 * width).collect();
        let out = silu_mul(&rows, width);
        assert_eq!(out.len(), 3 * width);
        for r in 0..3 {
            for j in 0..width {
                let (g, u) = (
                    rows[r * 2 * width + j] as f64,
                    rows[r * 2 * width + width + j] as f64,
                );
                let want = g / (1.0 + (-g).exp()) * u;
                let got = out[r * width + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "[{r},{j}] {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_follow_the_scaled_logits() {
        let mut data: Vec<f32> = grid(-5.0, 5.0, 3 * 40_000).collect();
        softmax_rows(&mut data, 40_000, 0.5);
        for row in data.chunks(40_000) {
            let sum: f64 = row.iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        }
        let mut small = vec![1.0f32, 2.0, 3.0];
        softmax_rows(&mut small, 3, 2.0);
        let z = 2f32.exp() + 4f32.exp() + 6f32.exp();
        let expect = [2f32.exp() / z, 4f32.exp() / z, 6f32.exp() / z];
        for (a, b) in small.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}

//! Next-token choice for one sequence, following transformers 4.28's processor order:
//! repetition penalty, then temperature, top-k, top-p, then sample (or argmax).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            seed: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// `log_softmax` in f32, computed the way torch does (max-shifted).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let (max, log_sum) = max_and_log_sum_exp(logits);
    logits.iter().map(|&x| x - max - log_sum).collect()
}

/// `max` and `ln Σ exp(x - max)`: the two terms of every log-probability, in vectorised passes
/// (a decode step of 16 sequences over a 32k vocabulary would otherwise spend milliseconds here).
fn max_and_log_sum_exp(logits: &[f32]) -> (f32, f32) {
    use crate::kernels::elementwise::{exp, lanes};
    let max = lanes(logits, f32::NEG_INFINITY, f32::max, f32::max);
    let sum = lanes(logits, 0.0, |s, x| s + exp(x - max), |a, b| a + b);
    (max, sum.ln())
}

/// Index of the first maximum (torch.argmax's tie rule; NaNs are passed over). Two vectorised
/// passes (the maximum, then its first position) instead of a compare-and-branch per element.
pub fn argmax(values: &[f32]) -> usize {
    use crate::kernels::elementwise::lanes;
    let max = lanes(values, f32::NEG_INFINITY, f32::max, f32::max);
    values.iter().position(|&v| v == max).unwrap_or(0)
}

/// HF `RepetitionPenaltyLogitsProcessor`: divide positive, multiply negative scores of tokens
/// already in the sequence (prompt included).
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    let mut done = vec![false; logits.len()];
    for &t in seen {
        let t = t as usize;
        if t < logits.len() && !done[t] {
            done[t] = true;
            let l = &mut logits[t];
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token; returns it with its log-probability under the processed
    /// distribution (the raw one for greedy).
    pub fn next(&mut self, logits: &[f32], seen: &[u32]) -> (u32, f32) {
        let penalty = self.params.repetition_penalty.filter(|&p| p != 1.0);
        if !self.params.do_sample && penalty.is_none() {
            let token = argmax(logits);
            let (max, log_sum) = max_and_log_sum_exp(logits);
            return (token as u32, logits[token] - max - log_sum);
        }
        let mut logits = logits.to_vec();
        if let Some(p) = penalty {
            apply_repetition_penalty(&mut logits, seen, p);
        }
        if !self.params.do_sample {
            let token = argmax(&logits);
            return (token as u32, log_softmax(&logits)[token]);
        }
        if self.params.temperature != 1.0 {
            let t = self.params.temperature as f32;
            logits.iter_mut().for_each(|l| *l /= t);
        }
        if let Some(k) = self.params.top_k.filter(|&k| k > 0 && k < logits.len()) {
            let mut sorted = logits.clone();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            logits
                .iter_mut()
                .filter(|l| **l < kth)
                .for_each(|l| *l = f32::NEG_INFINITY);
        }
        if let Some(p) = self.params.top_p.filter(|&p| p < 1.0) {
            top_p_filter(&mut logits, p as f32);
        }
        let logprobs = log_softmax(&logits);
        let token = self.draw(&logprobs);
        (token as u32, logprobs[token])
    }

    fn draw(&mut self, logprobs: &[f32]) -> usize {
        let u: f64 = self.rng.random();
        let mut acc = 0f64;
        let mut last_possible = 0;
        for (i, &lp) in logprobs.iter().enumerate() {
            if lp == f32::NEG_INFINITY {
                continue;
            }
            last_possible = i;
            acc += (lp as f64).exp();
            if u < acc {
                return i;
            }
        }
        last_possible
    }
}

/// HF `TopPLogitsWarper`: drop the low-probability tail whose mass is at most `1 - p`, always
/// keeping the most likely token.
fn top_p_filter(logits: &mut [f32], p: f32) {
    let probs: Vec<f32> = log_softmax(logits).iter().map(|l| l.exp()).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    let mut cumulative = 0f32;
    for (rank, &i) in order.iter().enumerate() {
        cumulative += probs[i];
        if cumulative > 1.0 - p || rank == order.len() - 1 {
            break;
        }
        logits[i] = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_finds_the_first_maximum_across_lanes_and_tails_and_skips_nans() {
        let mut v: Vec<f32> = (0..37).map(|i| (i % 7) as f32).collect();
        v[33] = 9.0;
        v[35] = 9.0;
        assert_eq!(
            argmax(&v),
            33,
            "a maximum in the tail past the 16-lane blocks"
        );
        v[3] = 9.5;
        v[19] = 9.5;
        assert_eq!(argmax(&v), 3);
        v[0] = f32::NAN;
        assert_eq!(argmax(&v), 3);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 5]), 0);
    }

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.next(&[0.0, 2.0, 2.0, 1.0], &[]).0, 1);
    }

    #[test]
    fn repetition_penalty_follows_hf() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn same_seed_same_tokens() {
        let params = SamplingParams {
            do_sample: true,
            temperature: 0.8,
            top_p: Some(0.9),
            seed: 7,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || {
            let mut s = Sampler::new(params.clone());
            (0..20).map(|_| s.next(&logits, &[]).0).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            do_sample: true,
            top_k: Some(1),
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(params);
        for _ in 0..10 {
            assert_eq!(s.next(&[0.1, 0.5, 3.0, 0.2], &[]).0, 2);
        }
    }

    #[test]
    fn top_p_keeps_the_head() {
        let mut l = vec![3.0, 2.0, -5.0, -6.0];
        top_p_filter(&mut l, 0.5);
        assert_eq!(l[0], 3.0);
        assert!(l[1..].iter().all(|x| *x == f32::NEG_INFINITY));
    }
}

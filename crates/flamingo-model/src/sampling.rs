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

/// One of the most likely tokens of a step's distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// The `n` most likely tokens of `logprobs` (`log_prob(value)` maps a value to its
/// log-probability), most likely first, ties by lower id; tokens with probability 0 (`-inf`,
/// removed by top-k/top-p) and NaNs are left out, so the list can be shorter than `n`.
pub fn most_likely<F: Fn(f32) -> f32>(values: &[f32], n: usize, log_prob: F) -> Vec<TopLogprob> {
    if n == 0 {
        return Vec::new();
    }
    // Sorted best first; a value enters only if it beats the current last (one compare per
    // element once the list is full).
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() || v == f32::NEG_INFINITY {
            continue;
        }
        if best.len() == n && v <= best[n - 1].0 {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= v);
        best.insert(at, (v, i as u32));
        best.truncate(n);
    }
    best.into_iter()
        .map(|(v, id)| TopLogprob {
            id,
            logprob: log_prob(v),
        })
        .collect()
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
        let (token, logprob, _) = self.next_with_top(logits, seen, 0);
        (token, logprob)
    }

    /// [`Sampler::next`], plus the `top_n` most likely tokens of the same distribution the
    /// token was drawn from: after the repetition penalty, temperature, top-k and top-p (TGI's
    /// `top_tokens` rule), i.e. the raw model distribution for plain greedy decoding. Tokens that
    /// top-k/top-p removed have probability 0 and are not listed. The token and its
    /// log-probability are computed exactly as without `top_n`.
    pub fn next_with_top(
        &mut self,
        logits: &[f32],
        seen: &[u32],
        top_n: usize,
    ) -> (u32, f32, Vec<TopLogprob>) {
        let penalty = self.params.repetition_penalty.filter(|&p| p != 1.0);
        if !self.params.do_sample && penalty.is_none() {
            let token = argmax(logits);
            let (max, log_sum) = max_and_log_sum_exp(logits);
            let top = most_likely(logits, top_n, |x| x - max - log_sum);
            return (token as u32, logits[token] - max - log_sum, top);
        }
        let mut logits = logits.to_vec();
        if let Some(p) = penalty {
            apply_repetition_penalty(&mut logits, seen, p);
        }
        if !self.params.do_sample {
            let token = argmax(&logits);
            let logprobs = log_softmax(&logits);
            let top = most_likely(&logprobs, top_n, |x| x);
            return (token as u32, logprobs[token], top);
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
        let top = most_likely(&logprobs, top_n, |x| x);
        (token as u32, logprobs[token], top)
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
    fn top_n_lists_the_most_likely_of_the_sampled_distribution() {
        let logits = [0.5f32, 3.0, -1.0, 3.0, 2.0];
        let lps = log_softmax(&logits);
        let mut s = Sampler::new(SamplingParams::default());
        let (token, lp, top) = s.next_with_top(&logits, &[], 3);
        assert_eq!(
            (token, lp),
            s.next(&logits, &[]),
            "top_n does not change the choice"
        );
        let ids: Vec<u32> = top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 3, 4], "best first, ties by lower id");
        for t in &top {
            assert!((t.logprob - lps[t.id as usize]).abs() < 1e-6);
        }
        assert_eq!(top[0].logprob, lp, "the greedy token heads its own list");
        // Sampling with top_k = 2: the distribution has two tokens, renormalised, at T = 0.5.
        let mut s = Sampler::new(SamplingParams {
            do_sample: true,
            temperature: 0.5,
            top_k: Some(2),
            seed: 1,
            ..Default::default()
        });
        let (token, lp, top) = s.next_with_top(&logits, &[], 5);
        assert_eq!(top.len(), 2, "removed tokens are not listed: {top:?}");
        assert!(top.iter().any(|t| t.id == token && t.logprob == lp));
        let mass: f32 = top.iter().map(|t| t.logprob.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-5, "{mass}");
        assert!(most_likely(&logits, 0, |x| x).is_empty());
    }

    #[test]
    fn top_p_keeps_the_head() {
        let mut l = vec![3.0, 2.0, -5.0, -6.0];
        top_p_filter(&mut l, 0.5);
        assert_eq!(l[0], 3.0);
        assert!(l[1..].iter().all(|x| *x == f32::NEG_INFINITY));
    }
}

//! Beam search bookkeeping as transformers 4.28 `BeamSearchScorer` does it (the reference eval
//! uses 3 beams, length_penalty -2.0, early_stopping False): a hypothesis scores
//! `sum_logprobs / len ** length_penalty` where `len` counts the prompt too.

/// Finished hypotheses of one request.
#[derive(Debug, Clone)]
pub struct BeamHypotheses {
    num_beams: usize,
    length_penalty: f64,
    worst_score: f64,
    /// (score, tokens after the prompt, per-token logprobs)
    pub beams: Vec<(f64, Vec<u32>, Vec<f32>)>,
}

impl BeamHypotheses {
    pub fn new(num_beams: usize, length_penalty: f64) -> Self {
        Self {
            num_beams,
            length_penalty,
            worst_score: 1e9,
            beams: Vec::new(),
        }
    }

    /// `full_len` is the length of prompt + generated tokens the reference divides by.
    pub fn add(
        &mut self,
        generated: Vec<u32>,
        logprobs: Vec<f32>,
        sum_logprobs: f32,
        full_len: usize,
    ) {
        let score = sum_logprobs as f64 / (full_len as f64).powf(self.length_penalty);
        if self.beams.len() < self.num_beams || score > self.worst_score {
            self.beams.push((score, generated, logprobs));
            if self.beams.len() > self.num_beams {
                let mut ranked: Vec<(f64, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (b.0, i))
                    .collect();
                ranked.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                self.beams.remove(ranked[0].1);
                self.worst_score = ranked[1].0;
            } else {
                self.worst_score = self.worst_score.min(score);
            }
        }
    }

    pub fn is_done(&self, best_sum_logprobs: f32, cur_len: usize) -> bool {
        if self.beams.len() < self.num_beams {
            return false;
        }
        let cur_score = best_sum_logprobs as f64 / (cur_len as f64).powf(self.length_penalty);
        self.worst_score >= cur_score
    }

    /// Best first (Python's stable sort then `pop()` picks the last of equal scores).
    pub fn into_ranked(mut self) -> Vec<(f64, Vec<u32>, Vec<f32>)> {
        let mut ranked = Vec::new();
        self.beams
            .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        while let Some(b) = self.beams.pop() {
            ranked.push(b);
        }
        ranked
    }
}

/// One candidate continuation: (score, token, parent beam).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub score: f32,
    pub token: u32,
    pub beam: usize,
}

/// The `2 * num_beams` best (beam score + token logprob) over all beams, best first; equal
/// scores keep the lower flat index first, as `torch.topk` on CPU does in practice.
pub fn top_candidates(beam_scores: &[f32], logprobs: &[Vec<f32>], k: usize) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = Vec::new();
    for (beam, (score, lp)) in beam_scores.iter().zip(logprobs).enumerate() {
        // Only a candidate that could enter the top k matters; prefilter cheaply per beam.
        let mut local: Vec<(f32, u32)> = lp
            .iter()
            .enumerate()
            .map(|(t, &l)| (score + l, t as u32))
            .collect();
        let keep = k.min(local.len());
        local.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        local.truncate(keep);
        all.extend(local.into_iter().map(|(s, t)| Candidate {
            score: s,
            token: t,
            beam,
        }));
    }
    all.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then((a.beam, a.token).cmp(&(b.beam, b.token)))
    });
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_length_penalty_prefers_short() {
        let mut h = BeamHypotheses::new(2, -2.0);
        h.add(vec![1], vec![-1.0], -1.0, 10);
        h.add(vec![1, 2], vec![-0.5, -0.5], -1.0, 11);
        let ranked = h.into_ranked();
        assert_eq!(ranked[0].1, vec![1]);
    }

    #[test]
    fn keeps_only_num_beams() {
        let mut h = BeamHypotheses::new(2, 1.0);
        for (i, s) in [-3.0f32, -1.0, -2.0].iter().enumerate() {
            h.add(vec![i as u32], vec![], *s, 1);
        }
        let scores: Vec<f64> = h.into_ranked().iter().map(|b| b.0).collect();
        assert_eq!(scores, vec![-1.0, -2.0]);
    }

    #[test]
    fn candidates_span_beams() {
        let c = top_candidates(&[0.0, -1.0], &[vec![-0.1, -3.0], vec![-0.2, -0.05]], 3);
        assert_eq!(
            c.iter().map(|c| (c.beam, c.token)).collect::<Vec<_>>(),
            vec![(0, 0), (1, 1), (1, 0)]
        );
    }
}

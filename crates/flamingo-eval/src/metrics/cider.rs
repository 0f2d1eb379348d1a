//! CIDEr-D as pycocoevalcap computes it (`cider/cider_scorer.py`): tf-idf n-gram vectors
//! (n = 1..4) with document frequencies over the references of the evaluated set, clipped
//! cosine similarity, a Gaussian length penalty (sigma 6) and the x10 scale. Inputs are
//! already-tokenized strings (see `ptb`).

use std::collections::{HashMap, HashSet};

const N: usize = 4;
const SIGMA: f64 = 6.0;

type Counts<'a> = HashMap<Vec<&'a str>, f64>;

/// `precook`: counts of all 1..4-grams of a whitespace-split sentence.
fn ngram_counts(s: &str) -> Counts<'_> {
    // `s.split()` in cider_scorer.py: Python's whitespace.
    let words: Vec<&str> = crate::pytext::py_split(s).collect();
    let mut counts = Counts::new();
    for k in 1..=N {
        for w in words.windows(k) {
            *counts.entry(w.to_vec()).or_insert(0.0) += 1.0;
        }
    }
    counts
}

struct Vector<'a> {
    vec: [HashMap<Vec<&'a str>, f64>; N],
    norm: [f64; N],
    /// pycocoevalcap counts *bigrams* here (`if n == 1` on the 0-based n-gram index); the
    /// length penalty therefore compares bigram counts. Kept as is to reproduce its numbers.
    length: f64,
}

fn counts_to_vec<'a>(
    counts: &Counts<'a>,
    df: &HashMap<Vec<&'a str>, f64>,
    ref_len: f64,
) -> Vector<'a> {
    let mut v = Vector {
        vec: Default::default(),
        norm: [0.0; N],
        length: 0.0,
    };
    for (ngram, &tf) in counts {
        let n = ngram.len() - 1;
        let d = df.get(ngram).copied().unwrap_or(0.0).max(1.0).ln();
        let w = tf * (ref_len - d);
        v.vec[n].insert(ngram.clone(), w);
        v.norm[n] += w * w;
        if n == 1 {
            v.length += tf;
        }
    }
    for x in &mut v.norm {
        *x = x.sqrt();
    }
    v
}

fn sim(hyp: &Vector, r: &Vector) -> [f64; N] {
    let delta = hyp.length - r.length;
    std::array::from_fn(|n| {
        let mut v: f64 = hyp.vec[n]
            .iter()
            .map(|(ngram, &h)| {
                let rv = r.vec[n].get(ngram).copied().unwrap_or(0.0);
                h.min(rv) * rv
            })
            .sum();
        if hyp.norm[n] != 0.0 && r.norm[n] != 0.0 {
            v /= hyp.norm[n] * r.norm[n];
        }
        v * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp()
    })
}

/// Corpus CIDEr-D (mean over items) and the per-item scores, in pycocoevalcap's scale
/// (the OpenFlamingo card multiplies by 100). `refs[i]` are the references of `hyps[i]`.
pub fn cider_d<S: AsRef<str>, T: AsRef<str>>(refs: &[Vec<S>], hyps: &[T]) -> (f64, Vec<f64>) {
    assert_eq!(refs.len(), hyps.len(), "one reference set per hypothesis");
    if hyps.is_empty() {
        return (0.0, Vec::new());
    }
    let crefs: Vec<Vec<Counts>> = refs
        .iter()
        .map(|rs| rs.iter().map(|r| ngram_counts(r.as_ref())).collect())
        .collect();
    let ctest: Vec<Counts> = hyps.iter().map(|h| ngram_counts(h.as_ref())).collect();

    // Document frequency: in how many items' reference sets an n-gram occurs.
    let mut df: HashMap<Vec<&str>, f64> = HashMap::new();
    for rs in &crefs {
        let uniq: HashSet<&Vec<&str>> = rs.iter().flat_map(|c| c.keys()).collect();
        for g in uniq {
            *df.entry(g.clone()).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (crefs.len() as f64).ln();

    let scores: Vec<f64> = ctest
        .iter()
        .zip(&crefs)
        .map(|(test, rs)| {
            let hv = counts_to_vec(test, &df, ref_len);
            let mut acc = [0.0; N];
            for r in rs {
                let rv = counts_to_vec(r, &df, ref_len);
                for (a, s) in acc.iter_mut().zip(sim(&hv, &rv)) {
                    *a += s;
                }
            }
            let mean = acc.iter().sum::<f64>() / N as f64;
            mean / rs.len().max(1) as f64 * 10.0
        })
        .collect();
    let corpus = scores.iter().sum::<f64>() / scores.len() as f64;
    (corpus, scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_single_item_scores_zero_idf() {
        // With one item every n-gram has df = 1 = N, so idf = log(1) - log(1) = 0.
        let (s, _) = cider_d(&[vec!["a cat"]], &["a cat"]);
        assert_eq!(s, 0.0);
    }

    #[test]
    fn matching_beats_non_matching() {
        let refs = vec![
            vec!["a dog runs on the grass", "a brown dog on grass"],
            vec!["a red car parked on a street", "a car on the street"],
            vec!["two people eating pizza", "people sharing a pizza"],
        ];
        let (_, good) = cider_d(
            &refs,
            &[
                "a dog on the grass",
                "a car on a street",
                "people eating pizza",
            ],
        );
        let (_, bad) = cider_d(
            &refs,
            &[
                "a car on a street",
                "people eating pizza",
                "a dog on the grass",
            ],
        );
        for (g, b) in good.iter().zip(&bad) {
            assert!(g > b, "{g} <= {b}");
        }
    }

    #[test]
    fn empty_hypothesis_is_zero() {
        let (s, _) = cider_d(&[vec!["a cat"], vec!["a dog"]], &["", ""]);
        assert_eq!(s, 0.0);
    }
}

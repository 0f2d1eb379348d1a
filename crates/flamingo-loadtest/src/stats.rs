//! Percentiles, latency summaries and the per-second timeline.

use serde::Serialize;

/// Nearest-rank percentile (p in 0..=100) of an ascending slice: the smallest value with at
/// least p% of the samples at or below it. Nearest-rank (rather than interpolation) reports a
/// latency some request actually had, which is what an SLO check should compare against.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// Summary of a set of durations, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// `None` for no samples (the report then shows `null`, not a misleading 0).
    pub fn of_seconds(samples: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let mut v: Vec<f64> = samples
            .into_iter()
            .filter(|x| x.is_finite())
            .map(|s| s * 1000.0)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let p = |q| round3(percentile(&v, q).expect("non-empty"));
        Some(Summary {
            count: v.len(),
            mean_ms: round3(v.iter().sum::<f64>() / v.len() as f64),
            min_ms: round3(v[0]),
            p50_ms: p(50.0),
            p90_ms: p(90.0),
            p95_ms: p(95.0),
            p99_ms: p(99.0),
            max_ms: round3(v[v.len() - 1]),
        })
    }
}

/// Microsecond precision is plenty and keeps the JSON readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One second of the run, by completion time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, seconds since the run started.
    pub t: f64,
    pub completed: u64,
    /// Acceptable answers that were not shed: success, rejected bad input, disconnect.
    pub ok: u64,
    /// Shed (429/503) and documented errors.
    pub errors: u64,
    pub lost: u64,
    pub failures: u64,
    /// Latency of successful requests completing in this bucket.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

/// What the timeline needs from one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Ok,
    Success,
    Error,
    Lost,
    Failure,
}

/// Group (completion time, latency, tally) into `width`-second buckets covering `span` seconds.
pub fn timeline(points: &[(f64, f64, Tally)], width: f64, span: f64) -> Vec<Bucket> {
    let n = ((span / width).ceil() as usize).max(1);
    let mut buckets: Vec<(Bucket, Vec<f64>)> = (0..n)
        .map(|i| {
            (
                Bucket {
                    t: round3(i as f64 * width),
                    completed: 0,
                    ok: 0,
                    errors: 0,
                    lost: 0,
                    failures: 0,
                    p50_ms: None,
                    p95_ms: None,
                },
                Vec::new(),
            )
        })
        .collect();
    for &(done, latency, tally) in points {
        let i = ((done / width).floor().max(0.0) as usize).min(n - 1);
        let (b, lat) = &mut buckets[i];
        b.completed += 1;
        match tally {
            Tally::Success => {
                b.ok += 1;
                lat.push(latency * 1000.0);
            }
            Tally::Ok => b.ok += 1,
            Tally::Error => b.errors += 1,
            Tally::Lost => b.lost += 1,
            Tally::Failure => b.failures += 1,
        }
    }
    buckets
        .into_iter()
        .map(|(mut b, mut lat)| {
            lat.sort_by(f64::total_cmp);
            b.p50_ms = percentile(&lat, 50.0).map(round3);
            b.p95_ms = percentile(&lat, 95.0).map(round3);
            b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Small samples: p99 of 10 values is the maximum, never an interpolated value.
        let w = [5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 8.0, 7.0, 6.0, 10.0];
        let mut s = w.to_vec();
        s.sort_by(f64::total_cmp);
        assert_eq!(percentile(&s, 99.0), Some(10.0));
        assert_eq!(percentile(&s, 50.0), Some(5.0));
        assert_eq!(percentile(&s, 51.0), Some(6.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn summary_in_ms_ignores_non_finite() {
        let s = Summary::of_seconds([0.001, 0.002, 0.003, f64::NAN]).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 3.0);
        assert_eq!(s.mean_ms, 2.0);
        assert!(Summary::of_seconds([]).is_none());
    }

    #[test]
    fn timeline_buckets_by_completion_second() {
        let pts = [
            (0.2, 0.1, Tally::Success),
            (0.9, 0.3, Tally::Success),
            (1.5, 0.2, Tally::Lost),
            (2.99, 0.2, Tally::Error),
            (3.5, 0.2, Tally::Failure), // past the span: clamped into the last bucket
        ];
        let t = timeline(&pts, 1.0, 3.0);
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].completed, t[0].ok), (2, 2));
        assert_eq!(t[0].p50_ms, Some(100.0));
        assert_eq!(t[0].p95_ms, Some(300.0));
        assert_eq!(t[1].lost, 1);
        assert_eq!(t[1].p50_ms, None);
        assert_eq!((t[2].errors, t[2].failures), (1, 1));
    }
}

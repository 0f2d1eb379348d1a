//! The run's report: counts, throughput, latency/TTFT summaries, statuses, lost requests,
//! pass/fail checks; written as JSON and printed as a table.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cli::Args;
use crate::client::{Record, RequestId};
use crate::outcome::{enum_name, Class};
use crate::stats::{round3, timeline, Bucket, Summary, Tally};
use crate::workload::{Kind, Mix};

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub label: String,
    pub url: String,
    pub mode: &'static str,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    pub requests_budget: Option<u64>,
    pub duration_budget_s: Option<f64>,
    pub timeout_s: f64,
    pub mix: String,
    pub seed: u64,
    pub images: usize,
    pub interrupted: bool,
    /// From the first send to the last completion.
    pub wall_s: f64,
    pub counts: Counts,
    pub throughput: Throughput,
    /// Share of valid requests (neither bad inputs nor disconnects) that did not succeed.
    pub error_rate: f64,
    /// Successful requests, all kinds.
    pub latency_ms: Option<Summary>,
    /// Successful streams: request sent -> first token event.
    pub ttft_ms: Option<Summary>,
    /// 429/503 answers: how fast the server says no.
    pub shed_latency_ms: Option<Summary>,
    /// Bad inputs refused with a 4xx.
    pub rejected_latency_ms: Option<Summary>,
    /// Open loop only: how late requests were sent (client-side saturation).
    pub send_delay_ms: Option<Summary>,
    pub by_kind: BTreeMap<String, KindStats>,
    /// By HTTP status ("none" = no response).
    pub status_counts: BTreeMap<String, u64>,
    pub lost_by_reason: BTreeMap<String, u64>,
    pub failures_by_reason: BTreeMap<String, u64>,
    pub request_id: RequestIdCounts,
    pub timeline: Vec<Bucket>,
    /// The first lost requests and failures, with their cause.
    pub samples: Vec<Sample>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub success: u64,
    pub rejected: u64,
    pub shed: u64,
    pub errors: u64,
    pub stream_errors: u64,
    pub disconnected: u64,
    pub lost: u64,
    pub failures: u64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub requests_per_s: f64,
    pub success_per_s: f64,
    /// Streamed token events per second (streams only).
    pub stream_tokens_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct KindStats {
    pub count: u64,
    pub success: u64,
    pub latency_ms: Option<Summary>,
    pub ttft_ms: Option<Summary>,
    pub statuses: BTreeMap<String, u64>,
    pub classes: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct RequestIdCounts {
    pub ok: u64,
    pub missing: u64,
    pub mismatch: u64,
}

#[derive(Debug, Serialize)]
pub struct Sample {
    pub index: u64,
    pub kind: &'static str,
    pub status: Option<u16>,
    pub class: String,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

const MAX_SAMPLES: usize = 20;

pub fn status_key(s: Option<u16>) -> String {
    s.map_or_else(|| "none".to_string(), |s| s.to_string())
}

impl Report {
    pub fn build(
        args: &Args,
        mix: &Mix,
        images: usize,
        records: &[Record],
        wall_s: f64,
        interrupted: bool,
    ) -> Report {
        let mut counts = Counts::default();
        let mut status_counts = BTreeMap::new();
        let mut lost_by_reason = BTreeMap::new();
        let mut failures_by_reason = BTreeMap::new();
        let mut request_id = RequestIdCounts::default();
        let mut samples = Vec::new();
        let (mut valid, mut valid_bad) = (0u64, 0u64);
        let mut stream_tokens = 0;
        for r in records {
            counts.sent += 1;
            *status_counts.entry(status_key(r.status)).or_insert(0) += 1;
            stream_tokens += r.tokens;
            match r.request_id {
                RequestId::Ok => request_id.ok += 1,
                RequestId::Missing => request_id.missing += 1,
                RequestId::Mismatch => request_id.mismatch += 1,
                RequestId::NotApplicable => {}
            }
            match r.class {
                Class::Success => counts.success += 1,
                Class::Rejected => counts.rejected += 1,
                Class::Shed => counts.shed += 1,
                Class::Error => counts.errors += 1,
                Class::StreamError => counts.stream_errors += 1,
                Class::Disconnected => counts.disconnected += 1,
                Class::Lost(l) => {
                    counts.lost += 1;
                    *lost_by_reason.entry(enum_name(&l)).or_insert(0) += 1;
                }
                Class::Failure(f) => {
                    counts.failures += 1;
                    *failures_by_reason.entry(enum_name(&f)).or_insert(0) += 1;
                }
            }
            if matches!(r.class, Class::Lost(_) | Class::Failure(_)) && samples.len() < MAX_SAMPLES
            {
                samples.push(Sample {
                    index: r.index,
                    kind: r.kind.name(),
                    status: r.status,
                    class: r.class.name(),
                    detail: r.detail.clone(),
                });
            }
            if !r.kind.is_bad_input() && r.class != Class::Disconnected {
                valid += 1;
                if r.class != Class::Success {
                    valid_bad += 1;
                }
            }
        }

        let wall = wall_s.max(1e-9);
        let success = |r: &&Record| r.class == Class::Success;
        let latency_ms = Summary::of_seconds(records.iter().filter(success).map(|r| r.latency));
        let ttft_ms = Summary::of_seconds(records.iter().filter(success).filter_map(|r| r.ttft));
        let of_class = |c: Class| {
            Summary::of_seconds(records.iter().filter(|r| r.class == c).map(|r| r.latency))
        };
        let open = args.rate.is_some();
        let send_delay_ms = open
            .then(|| Summary::of_seconds(records.iter().map(|r| r.send_delay)))
            .flatten();

        let mut by_kind: BTreeMap<String, KindStats> = BTreeMap::new();
        for kind in Kind::ALL {
            let rs: Vec<&Record> = records.iter().filter(|r| r.kind == kind).collect();
            if rs.is_empty() {
                continue;
            }
            let mut statuses = BTreeMap::new();
            let mut classes = BTreeMap::new();
            for r in &rs {
                *statuses.entry(status_key(r.status)).or_insert(0) += 1;
                *classes.entry(r.class.name()).or_insert(0) += 1;
            }
            let ok: Vec<&&Record> = rs.iter().filter(|r| r.class == Class::Success).collect();
            by_kind.insert(
                kind.name().to_string(),
                KindStats {
                    count: rs.len() as u64,
                    success: ok.len() as u64,
                    latency_ms: Summary::of_seconds(ok.iter().map(|r| r.latency)),
                    ttft_ms: Summary::of_seconds(ok.iter().filter_map(|r| r.ttft)),
                    statuses,
                    classes,
                },
            );
        }

        let points: Vec<(f64, f64, Tally)> = records
            .iter()
            .map(|r| (r.sent_at + r.latency, r.latency, tally(r.class)))
            .collect();

        let mut report = Report {
            tool: "flamingo-loadtest",
            version: env!("CARGO_PKG_VERSION"),
            label: args.label.clone(),
            url: args.url.clone(),
            mode: if open { "open" } else { "closed" },
            concurrency: (!open).then_some(args.concurrency),
            rate: args.rate,
            requests_budget: args.request_budget(),
            duration_budget_s: args.duration,
            timeout_s: args.timeout,
            mix: mix.describe(),
            seed: args.seed,
            images,
            interrupted,
            wall_s: round3(wall_s),
            throughput: Throughput {
                requests_per_s: round3(counts.sent as f64 / wall),
                success_per_s: round3(counts.success as f64 / wall),
                stream_tokens_per_s: round3(stream_tokens as f64 / wall),
            },
            counts,
            error_rate: if valid == 0 {
                0.0
            } else {
                (valid_bad as f64 / valid as f64 * 1e6).round() / 1e6
            },
            latency_ms,
            ttft_ms,
            shed_latency_ms: of_class(Class::Shed),
            rejected_latency_ms: of_class(Class::Rejected),
            send_delay_ms,
            by_kind,
            status_counts,
            lost_by_reason,
            failures_by_reason,
            request_id,
            timeline: timeline(&points, args.bucket, wall_s),
            samples,
            checks: Vec::new(),
            passed: false,
        };
        report.checks = checks(args, &report);
        report.passed = report.checks.iter().all(|c| c.ok);
        report
    }

    /// The human-readable summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let c = &self.counts;
        let mode = match (self.concurrency, self.rate) {
            (Some(n), _) => format!("concurrency {n}"),
            (_, Some(r)) => format!("rate {r} req/s"),
            _ => String::new(),
        };
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.label)
        };
        let _ = writeln!(
            s,
            "flamingo-loadtest{label}  {}  {mode}  {:.1} s",
            self.url, self.wall_s
        );
        let _ = writeln!(
            s,
            "requests {}  success {}  rejected(bad input) {}  shed {}  errors {}  stream_errors {}  disconnected {}  LOST {}  failures {}",
            c.sent, c.success, c.rejected, c.shed, c.errors, c.stream_errors, c.disconnected, c.lost, c.failures
        );
        let _ = writeln!(
            s,
            "throughput {:.1} req/s  ({:.1} successful/s, {:.0} streamed tokens/s)  error rate {:.2}%",
            self.throughput.requests_per_s,
            self.throughput.success_per_s,
            self.throughput.stream_tokens_per_s,
            self.error_rate * 100.0
        );
        let _ = writeln!(
            s,
            "{:<22}{:>7}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "(ms)", "count", "p50", "p95", "p99", "max", "mean"
        );
        let mut row = |name: &str, x: &Option<Summary>| {
            if let Some(x) = x {
                let _ = writeln!(
                    s,
                    "{name:<22}{:>7}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
                    x.count, x.p50_ms, x.p95_ms, x.p99_ms, x.max_ms, x.mean_ms
                );
            }
        };
        row("latency (success)", &self.latency_ms);
        row("ttft (streams)", &self.ttft_ms);
        row("shed (429/503)", &self.shed_latency_ms);
        row("rejected bad input", &self.rejected_latency_ms);
        row("send delay (open)", &self.send_delay_ms);
        for (k, ks) in &self.by_kind {
            row(&format!("  {k}"), &ks.latency_ms);
        }
        let _ = writeln!(s, "statuses: {}", kv(&self.status_counts));
        if !self.lost_by_reason.is_empty() {
            let _ = writeln!(s, "lost: {}", kv(&self.lost_by_reason));
        }
        if !self.failures_by_reason.is_empty() {
            let _ = writeln!(s, "failures: {}", kv(&self.failures_by_reason));
        }
        for smp in self.samples.iter().take(5) {
            let _ = writeln!(
                s,
                "  e.g. #{} {} status {} {}: {}",
                smp.index,
                smp.kind,
                status_key(smp.status),
                smp.class,
                smp.detail.as_deref().unwrap_or("")
            );
        }
        for ch in &self.checks {
            let _ = writeln!(
                s,
                "[{}] {}: {}",
                if ch.ok { "PASS" } else { "FAIL" },
                ch.name,
                ch.detail
            );
        }
        let _ = writeln!(s, "RESULT: {}", if self.passed { "PASS" } else { "FAIL" });
        s
    }
}

/// One line of `--samples-out`.
pub fn sample_line(r: &Record) -> String {
    serde_json::json!({
        "index": r.index,
        "kind": r.kind.name(),
        "status": r.status,
        "class": r.class.name(),
        "sent_at_s": round3(r.sent_at),
        "latency_ms": round3(r.latency * 1000.0),
        "ttft_ms": r.ttft.map(|t| round3(t * 1000.0)),
        "tokens": r.tokens,
    })
    .to_string()
}

fn kv(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tally(c: Class) -> Tally {
    match c {
        Class::Success => Tally::Success,
        Class::Rejected | Class::Disconnected => Tally::Ok,
        Class::Shed | Class::Error | Class::StreamError => Tally::Error,
        Class::Lost(_) => Tally::Lost,
        Class::Failure(_) => Tally::Failure,
    }
}

fn check(name: &str, ok: bool, detail: String) -> Check {
    Check {
        name: name.to_string(),
        ok,
        detail,
    }
}

/// The pass/fail conditions, from the flags.
pub fn checks(args: &Args, r: &Report) -> Vec<Check> {
    let c = &r.counts;
    let mut out = vec![
        check(
            "requests_sent",
            c.sent > 0,
            format!("{} requests completed", c.sent),
        ),
        check(
            "lost",
            c.lost <= args.max_lost,
            format!("{} lost (max {})", c.lost, args.max_lost),
        ),
        check(
            "contract_failures",
            c.failures <= args.max_failures,
            format!(
                "{} failures (max {}){}",
                c.failures,
                args.max_failures,
                if r.failures_by_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", kv(&r.failures_by_reason))
                }
            ),
        ),
    ];
    if !args.no_check_request_id {
        let bad = r.request_id.missing + r.request_id.mismatch;
        out.push(check(
            "request_id",
            bad == 0,
            format!(
                "x-request-id missing {}, changed {}",
                r.request_id.missing, r.request_id.mismatch
            ),
        ));
    }
    if let Some(max) = args.max_error_rate {
        out.push(check(
            "error_rate",
            r.error_rate <= max,
            format!("{:.4} (max {max})", r.error_rate),
        ));
    }
    if let Some(max) = args.max_p99_ms {
        let p99 = r.latency_ms.as_ref().map(|s| s.p99_ms);
        out.push(check(
            "latency_p99",
            p99.is_some_and(|p| p <= max),
            format!("{p99:?} ms (max {max})"),
        ));
    }
    if let Some(max) = args.max_ttft_p50_ms {
        let p50 = r.ttft_ms.as_ref().map(|s| s.p50_ms);
        out.push(check(
            "ttft_p50",
            p50.is_some_and(|p| p <= max),
            format!("{p50:?} ms (max {max})"),
        ));
    }
    if let Some(min) = args.min_throughput {
        out.push(check(
            "throughput",
            r.throughput.success_per_s >= min,
            format!("{} successful/s (min {min})", r.throughput.success_per_s),
        ));
    }
    if let Some(min) = args.expect_shed {
        out.push(check(
            "shed",
            c.shed >= min,
            format!("{} shed with Retry-After (min {min})", c.shed),
        ));
    }
    out
}

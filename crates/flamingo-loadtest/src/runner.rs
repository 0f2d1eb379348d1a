//! Scheduling: closed loop (N clients back to back) or open loop (a fixed arrival rate), a
//! request or time budget, the progress display, and collecting the records.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

use crate::client::{execute, Record};
use crate::outcome::Class;
use crate::workload::Workload;

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Closed { concurrency: usize },
    Open { rate: f64, max_in_flight: usize },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub budget: Option<u64>,
    pub duration: Option<Duration>,
    pub timeout: Duration,
    pub progress: bool,
}

pub struct RunResult {
    pub records: Vec<Record>,
    /// From the start of the run to the last completion.
    pub wall: Duration,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
}

/// Shared by the scheduler tasks: when to stop starting new requests.
struct Gate {
    start: Instant,
    budget: Option<u64>,
    duration: Option<Duration>,
    stop: AtomicBool,
}

impl Gate {
    fn may_start(&self, index: u64, at: Instant) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && self.budget.is_none_or(|b| index < b)
            && self
                .duration
                .is_none_or(|d| at.saturating_duration_since(self.start) < d)
    }
}

pub async fn run(
    workload: Arc<Workload>,
    client: reqwest::Client,
    url: String,
    plan: Plan,
) -> RunResult {
    let start = Instant::now();
    let gate = Arc::new(Gate {
        start,
        budget: plan.budget,
        duration: plan.duration,
        stop: AtomicBool::new(false),
    });
    {
        // Ctrl-C stops starting requests; in-flight ones finish (bounded by --timeout), so the
        // report still describes what was sent.
        let gate = gate.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: waiting for requests in flight");
                gate.stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
    let url: Arc<str> = url.into();
    let timeout = plan.timeout;

    let scheduler = match plan.mode {
        Mode::Closed { concurrency } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut workers = Vec::new();
            for _ in 0..concurrency {
                let (gate, next, tx) = (gate.clone(), next.clone(), tx.clone());
                let (workload, client, url) = (workload.clone(), client.clone(), url.clone());
                workers.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if !gate.may_start(i, Instant::now()) {
                            break;
                        }
                        let req = workload.request(i);
                        let rec = execute(&client, &url, &req, timeout, start, 0.0).await;
                        if tx.send(rec).is_err() {
                            break;
                        }
                    }
                }));
            }
            tokio::spawn(async move {
                for w in workers {
                    let _ = w.await;
                }
            })
        }
        Mode::Open {
            rate,
            max_in_flight,
        } => {
            let (gate, tx) = (gate.clone(), tx.clone());
            let (workload, client, url) = (workload.clone(), client.clone(), url.clone());
            tokio::spawn(async move {
                let slots = Arc::new(Semaphore::new(max_in_flight));
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0u64.. {
                    // Arrivals on a fixed schedule (not "sleep 1/rate after each send"), so a
                    // slow loop iteration does not lower the offered rate.
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if !gate.may_start(i, due) {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    if gate.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let permit = slots.clone().acquire_owned().await.expect("never closed");
                    let delay = due.elapsed().as_secs_f64();
                    let req = workload.request(i);
                    let (tx, client, url) = (tx.clone(), client.clone(), url.clone());
                    tasks.spawn(async move {
                        let rec = execute(&client, &url, &req, timeout, start, delay).await;
                        drop(permit);
                        let _ = tx.send(rec);
                    });
                    // Reap finished tasks so the set does not grow with the run.
                    while tasks.try_join_next().is_some() {}
                }
                while tasks.join_next().await.is_some() {}
            })
        }
    };
    drop(tx);

    let mut progress = Progress::new(&plan);
    let mut records = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            rec = rx.recv() => match rec {
                Some(r) => {
                    progress.record(&r);
                    records.push(r);
                }
                None => break,
            },
            _ = tick.tick() => progress.tick(start.elapsed(), records.len()),
        }
    }
    let _ = scheduler.await;
    let wall = start.elapsed();
    progress.finish(records.len());
    records.sort_by_key(|r| r.index);
    RunResult {
        records,
        wall,
        interrupted: gate.stop.load(Ordering::Relaxed),
    }
}

/// Progress bar on a terminal; a plain line every 10 s otherwise (CI logs).
struct Progress {
    bar: Option<ProgressBar>,
    by_time: bool,
    log_lines: bool,
    last_line: Instant,
    ok: u64,
    shed_or_error: u64,
    lost: u64,
    failures: u64,
}

impl Progress {
    fn new(plan: &Plan) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let by_time = plan.budget.is_none();
        let bar = (plan.progress && tty).then(|| {
            let len = match (plan.budget, plan.duration) {
                (Some(b), _) => b,
                (None, Some(d)) => d.as_secs().max(1),
                (None, None) => 0,
            };
            let unit = if by_time { "s" } else { "req" };
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            by_time,
            log_lines: plan.progress && !tty,
            last_line: Instant::now(),
            ok: 0,
            shed_or_error: 0,
            lost: 0,
            failures: 0,
        }
    }

    fn record(&mut self, r: &Record) {
        match r.class {
            Class::Success | Class::Rejected | Class::Disconnected => self.ok += 1,
            Class::Shed | Class::Error | Class::StreamError => self.shed_or_error += 1,
            Class::Lost(_) => self.lost += 1,
            Class::Failure(_) => self.failures += 1,
        }
        if let Some(bar) = &self.bar {
            if !self.by_time {
                bar.inc(1);
            }
        }
    }

    fn message(&self) -> String {
        format!(
            "ok {} | shed/err {} | lost {} | fail {}",
            self.ok, self.shed_or_error, self.lost, self.failures
        )
    }

    fn tick(&mut self, elapsed: Duration, done: usize) {
        if let Some(bar) = &self.bar {
            if self.by_time {
                bar.set_position(elapsed.as_secs().min(bar.length().unwrap_or(u64::MAX)));
            }
            bar.set_message(self.message());
        }
        if self.log_lines && self.last_line.elapsed() >= Duration::from_secs(10) {
            self.last_line = Instant::now();
            eprintln!(
                "[{:>6.1}s] {done} done: {}",
                elapsed.as_secs_f64(),
                self.message()
            );
        }
    }

    fn finish(&self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.message());
            bar.finish();
        } else if self.log_lines {
            eprintln!("{done} done: {}", self.message());
        }
    }
}

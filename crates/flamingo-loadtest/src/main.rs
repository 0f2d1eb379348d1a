//! flamingo-loadtest: a bounded, mixed workload against a flamingo-serve URL (see `cli.rs` for
//! the flags and `outcome.rs` for how each answer counts).

mod cli;
mod client;
mod outcome;
mod plot;
mod report;
mod runner;
mod sse;
mod stats;
mod workload;

use anyhow::{Context, Result};
use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cli::Args;
use report::Report;
use runner::{Mode, Plan};
use workload::{Mix, Workload};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the load and writes the outputs; `Ok(passed)`.
async fn run(args: Args) -> Result<bool> {
    let mix = Mix::parse(&args.mix)?;
    // The default images dir is relative to the repo root; from elsewhere fall back to the
    // fixture next to this crate's source (the usual case when run via an absolute path).
    let mut images_dir = args.images_dir.clone();
    if !images_dir.exists() && images_dir.is_relative() {
        let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(&images_dir);
        if beside.exists() {
            images_dir = beside;
        }
    }
    let workload = Arc::new(Workload::new(
        mix.clone(),
        args.seed,
        &images_dir,
        args.min_tokens,
        args.max_tokens,
    )?);
    let mode = match args.rate {
        Some(rate) => Mode::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        None => Mode::Closed {
            concurrency: args.concurrency,
        },
    };
    let pool = match mode {
        Mode::Closed { concurrency } => concurrency,
        Mode::Open { max_in_flight, .. } => max_in_flight,
    };
    let plan = Plan {
        mode,
        budget: args.request_budget(),
        duration: args.duration.map(Duration::from_secs_f64),
        timeout: Duration::from_secs_f64(args.timeout),
        progress: !args.no_progress,
    };
    let client = client::build_client(pool, args.api_key.as_deref());
    let result = runner::run(workload.clone(), client, args.url.clone(), plan).await;

    let report = Report::build(
        &args,
        &mix,
        workload.image_count(),
        &result.records,
        result.wall.as_secs_f64(),
        result.interrupted,
    );
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.samples_out {
        let lines: String = result
            .records
            .iter()
            .map(|r| report::sample_line(r) + "\n")
            .collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&report, &result.records))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.quiet {
        print!("{}", report.table());
    }
    Ok(report.passed)
}

use std::process::ExitCode;

use clap::Parser;
use flamingo_eval::cli::{self, Args};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let out_dir = args.out_dir.clone();
    match cli::run(args).await {
        Ok(summary) => {
            // One machine-readable line on stdout; the human-readable table is in results.md.
            println!(
                "{}",
                serde_json::json!({"requests_sent": summary.requests_sent, "answered": summary.answered,
                    "skipped": summary.skipped, "failed": summary.failed,
                    "without_v1_stop": summary.without_v1_stop,
                    "results": out_dir.join("results.json")})
            );
            if summary.failed > 0 {
                eprintln!(
                    "{} item(s) failed; re-run the same command to retry them",
                    summary.failed
                );
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

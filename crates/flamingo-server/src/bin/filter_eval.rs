//! Scores the output content filter on the labelled set of model-like outputs.
//!
//! `cargo run --release -p flamingo-server --bin filter_eval [-- PATH.jsonl]` prints, per mode,
//! threshold and allowlist setting, how many benign outputs it acted on (false positives) and
//! how many offensive ones it let through (false negatives), then the default's mistakes.

use flamingo_server::filter::{ContentFilter, FilterConfig, FilterMode, Severity};

struct Sample {
    text: String,
    offensive: bool,
    note: String,
}

fn load(path: &str) -> Result<Vec<Sample>, String> {
    let data = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut samples = Vec::new();
    for (n, line) in data
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{path}:{}: {e}", n + 1))?;
        let bad = |k: &str| format!("{path}:{}: {k:?} missing or of the wrong type", n + 1);
        samples.push(Sample {
            text: v["text"].as_str().ok_or_else(|| bad("text"))?.to_owned(),
            offensive: v["offensive"].as_bool().ok_or_else(|| bad("offensive"))?,
            note: v["note"].as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok(samples)
}

/// Whether the filter acted: changed the text (censor) or withheld it (block).
fn flags(filter: &ContentFilter, text: &str) -> bool {
    let outcome = filter.check(text);
    match filter.config().mode {
        FilterMode::Block => outcome.blocked,
        _ => outcome.acted,
    }
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/filter_labelled.jsonl").to_owned()
    });
    let samples = load(&path).unwrap_or_else(|e| {
        eprintln!("filter_eval: {e}");
        std::process::exit(1);
    });
    let offensive = samples.iter().filter(|s| s.offensive).count();
    println!(
        "{} samples: {} benign, {offensive} offensive ({path})\n",
        samples.len(),
        samples.len() - offensive
    );
    println!("mode    threshold  allowlist  FP  FN");
    for mode in [FilterMode::Censor, FilterMode::Block] {
        for threshold in [Severity::Mild, Severity::Moderate, Severity::Severe] {
            for allowlist in [false, true] {
                let filter = ContentFilter::new(FilterConfig {
                    mode,
                    threshold,
                    allowlist,
                });
                let (mut fp, mut fn_) = (0, 0);
                for s in &samples {
                    match (s.offensive, flags(&filter, &s.text)) {
                        (false, true) => fp += 1,
                        (true, false) => fn_ += 1,
                        _ => {}
                    }
                }
                // The names the server's config uses.
                let mode_name = serde_json::to_value(mode).expect("enum serialises");
                let threshold_name = serde_json::to_value(threshold).expect("enum serialises");
                println!(
                    "{:<7} {:<10} {:<9} {fp:>3} {fn_:>3}",
                    mode_name.as_str().unwrap_or_default(),
                    threshold_name.as_str().unwrap_or_default(),
                    if allowlist { "on" } else { "off" },
                );
            }
        }
    }

    let default = ContentFilter::new(FilterConfig::default());
    println!("\nmistakes of the default {:?}:", default.config());
    for s in &samples {
        let outcome = default.check(&s.text);
        if outcome.acted != s.offensive {
            let kind = if s.offensive { "FN" } else { "FP" };
            println!("  {kind} [{}] {:?} -> {:?}", s.note, s.text, outcome.text);
        }
    }
}

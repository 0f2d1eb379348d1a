//! Scores the recorded predictions and writes the results table (shots x task) as JSON and
//! Markdown, plus the predictions in the formats the official evaluators read.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::runner::PredictionRecord;
use crate::tasks::{Task, TaskData};

/// The score of one (task, shots, seed) unit.
#[derive(Clone, Debug, Serialize)]
pub struct UnitScore {
    pub task: Task,
    pub shots: usize,
    pub seed: u64,
    pub metric: &'static str,
    /// None when nothing has been answered yet.
    pub score: Option<f64>,
    pub answered: usize,
    pub expected: usize,
}

/// Scores `preds` against the references of the items `item_idx` of `data`. Items without a
/// prediction are left out (and counted in `expected - answered`).
pub fn score_unit(
    data: &TaskData,
    item_idx: &[usize],
    preds: &HashMap<String, PredictionRecord>,
    shots: usize,
    seed: u64,
) -> UnitScore {
    let mut refs = Vec::new();
    let mut hyps = Vec::new();
    for &i in item_idx {
        let item = &data.items[i];
        if let Some(p) = preds.get(&item.id) {
            refs.push(item.refs.clone());
            hyps.push(p.prediction.clone());
        }
    }
    let score = (!hyps.is_empty()).then(|| data.task.score(&refs, &hyps).0);
    UnitScore {
        task: data.task,
        shots,
        seed,
        metric: data.task.metric_name(),
        score,
        answered: hyps.len(),
        expected: item_idx.len(),
    }
}

/// Writes `<task>_<shots>shot_seed<seed>_results.json` in the official result format
/// (COCO: `[{image_id, caption}]`, VQA: `[{question_id, answer}]`).
pub fn write_official_predictions(
    dir: &Path,
    data: &TaskData,
    item_idx: &[usize],
    preds: &HashMap<String, PredictionRecord>,
    shots: usize,
    seed: u64,
) -> Result<()> {
    let rows: Vec<serde_json::Value> = item_idx
        .iter()
        .filter_map(|&i| {
            let id = &data.items[i].id;
            let p = preds.get(id)?;
            // Ids are numeric in the official files; keep them numeric when they are.
            let idv = id.parse::<u64>().map_or_else(|_| json!(id), |n| json!(n));
            Some(match data.task {
                Task::Coco => json!({"image_id": idv, "caption": p.prediction}),
                Task::Vqav2 => json!({"question_id": idv, "answer": p.prediction}),
            })
        })
        .collect();
    let path = dir.join(format!(
        "{}_{shots}shot_seed{seed}_results.json",
        data.task.name()
    ));
    std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Counters of this invocation, reported next to the table.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RunSummary {
    /// HTTP requests sent by this invocation, retries included (0 when fully resumed).
    pub requests_sent: u64,
    pub answered: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Answered without v1's stop rule (see `PredictionRecord::v1_stop`).
    pub without_v1_stop: usize,
}

/// One table cell: a (task, shots) score averaged over seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub task: Task,
    pub shots: usize,
    pub metric: &'static str,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub seeds: Vec<u64>,
    pub complete: bool,
}

pub fn cells(units: &[UnitScore]) -> Vec<Cell> {
    let mut keys: Vec<(Task, usize)> = Vec::new();
    for u in units {
        if !keys.contains(&(u.task, u.shots)) {
            keys.push((u.task, u.shots));
        }
    }
    keys.into_iter()
        .map(|(task, shots)| {
            let group: Vec<&UnitScore> = units
                .iter()
                .filter(|u| u.task == task && u.shots == shots)
                .collect();
            let scores: Vec<f64> = group.iter().filter_map(|u| u.score).collect();
            let complete = group
                .iter()
                .all(|u| u.answered == u.expected && u.score.is_some());
            let mean =
                (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
            let std = mean.filter(|_| scores.len() > 1).map(|m| {
                (scores.iter().map(|s| (s - m).powi(2)).sum::<f64>() / scores.len() as f64).sqrt()
            });
            Cell {
                task,
                shots,
                metric: task.metric_name(),
                mean,
                std,
                seeds: group.iter().map(|u| u.seed).collect(),
                complete,
            }
        })
        .collect()
}

/// Renders the Markdown table: one row per shot count, one column per task.
pub fn markdown(cells: &[Cell], units: &[UnitScore], run: &RunSummary) -> String {
    let mut tasks: Vec<Task> = Vec::new();
    let mut shots: Vec<usize> = Vec::new();
    for c in cells {
        if !tasks.contains(&c.task) {
            tasks.push(c.task);
        }
        if !shots.contains(&c.shots) {
            shots.push(c.shots);
        }
    }
    shots.sort_unstable();
    let mut md = String::from("# flamingo-eval results\n\n| shots |");
    for t in &tasks {
        let _ = write!(md, " {} {} |", t.name(), t.metric_name());
    }
    md.push_str("\n|---:|");
    md.push_str(&"---:|".repeat(tasks.len()));
    md.push('\n');
    for s in &shots {
        let _ = write!(md, "| {s} |");
        for t in &tasks {
            let cell = cells.iter().find(|c| c.task == *t && c.shots == *s);
            let text = match cell {
                None => "-".to_string(),
                Some(c) => format_cell(c),
            };
            let _ = write!(md, " {text} |");
        }
        md.push('\n');
    }
    md.push_str(
        "\n## Units\n\n| task | shots | seed | score | answered |\n|---|---:|---:|---:|---:|\n",
    );
    for u in units {
        let score = u.score.map_or("-".to_string(), |s| format!("{s:.2}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {score} | {}/{} |",
            u.task.name(),
            u.shots,
            u.seed,
            u.answered,
            u.expected
        );
    }
    let _ = write!(
        md,
        "\nThis run: {} requests sent, {} answered, {} already recorded (skipped), {} failed.\n",
        run.requests_sent, run.answered, run.skipped, run.failed
    );
    if run.without_v1_stop > 0 {
        let _ = write!(
            md,
            "\n**{} answers were generated without v1's stop rule** (the server refused \
             `stop_token_ids`, or `--server-stop-rule`): they also stopped at `</s>`, where v1 \
             goes on to `<|endofchunk|>`.\n",
            run.without_v1_stop
        );
    }
    md
}

fn format_cell(c: &Cell) -> String {
    let mut s = match (c.mean, c.std) {
        (None, _) => "-".to_string(),
        (Some(m), None) => format!("{m:.2}"),
        (Some(m), Some(sd)) => format!("{m:.2} ± {sd:.2}"),
    };
    if !c.complete {
        s.push_str(" (incomplete)");
    }
    s
}

/// Writes `results.json` and `results.md` into `dir`.
pub fn write_results(
    dir: &Path,
    config: &serde_json::Value,
    units: &[UnitScore],
    run: &RunSummary,
) -> Result<()> {
    let cells = cells(units);
    let results = json!({ "config": config, "table": cells, "units": units, "run": run });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )
    .with_context(|| format!("writing {}", dir.join("results.json").display()))?;
    std::fs::write(dir.join("results.md"), markdown(&cells, units, run))
        .with_context(|| format!("writing {}", dir.join("results.md").display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(task: Task, shots: usize, seed: u64, score: f64) -> UnitScore {
        UnitScore {
            task,
            shots,
            seed,
            metric: task.metric_name(),
            score: Some(score),
            answered: 2,
            expected: 2,
        }
    }

    #[test]
    fn table_has_every_shot_and_task() {
        let units = vec![
            unit(Task::Coco, 0, 1, 10.0),
            unit(Task::Coco, 0, 2, 20.0),
            unit(Task::Vqav2, 0, 1, 30.0),
            unit(Task::Coco, 4, 1, 40.0),
        ];
        let c = cells(&units);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].mean, Some(15.0));
        assert_eq!(c[0].std, Some(5.0));
        let md = markdown(&c, &units, &RunSummary::default());
        assert!(md.contains("| 0 | 15.00 ± 5.00 | 30.00 |"), "{md}");
        assert!(md.contains("| 4 | 40.00 | - |"), "{md}");
    }
}

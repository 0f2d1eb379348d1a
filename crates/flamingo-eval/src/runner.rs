//! Runs the requests of one (task, shots, seed) unit concurrently and appends each answer to
//! its jsonl file as soon as it arrives, so an interrupted run resumes where it stopped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{self, Client, GenParams};
use crate::tasks::{Job, Task};

/// One line of a predictions jsonl file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PredictionRecord {
    pub id: String,
    /// Post-processed answer (what the metric scores).
    pub prediction: String,
    /// `generated_text` as the server returned it.
    pub raw: String,
    pub prompt: String,
    pub demo_ids: Vec<String>,
    /// Generated under v1's stop rule (`stop_token_ids` = `<|endofchunk|>` accepted by the
    /// server). False: the server's default end tokens, which also stop at `</s>`.
    #[serde(default)]
    pub v1_stop: bool,
}

/// Reads the predictions recorded so far (later lines win). A torn last line from an
/// interrupted write is ignored; that item is simply asked again.
pub fn read_predictions(path: &Path) -> Result<HashMap<String, PredictionRecord>> {
    let mut out = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if let Ok(rec) = serde_json::from_str::<PredictionRecord>(&line) {
            out.insert(rec.id.clone(), rec);
        }
    }
    Ok(out)
}

/// Opens `path` for appending, first terminating a torn last line so new records start clean.
fn open_append(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    Ok(f)
}

/// What to run and where to record it.
pub struct Unit {
    pub task: Task,
    pub label: String,
    pub jsonl: PathBuf,
    pub params: GenParams,
    pub jobs: Vec<Job>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct UnitStats {
    /// Items already in the jsonl before this run.
    pub skipped: usize,
    pub answered: usize,
    pub failed: usize,
    /// Answered in this run without v1's stop rule (the server refused it, or it was not asked).
    pub without_v1_stop: usize,
}

/// Sends every job not yet in `unit.jsonl`, at most `concurrency` at a time.
pub async fn run_unit(client: Arc<Client>, unit: Unit, concurrency: usize) -> Result<UnitStats> {
    let done = read_predictions(&unit.jsonl)?;
    let pending: Vec<Job> = unit
        .jobs
        .iter()
        .filter(|j| !done.contains_key(&j.id))
        .cloned()
        .collect();
    let mut stats = UnitStats {
        skipped: unit.jobs.len() - pending.len(),
        ..Default::default()
    };
    if pending.is_empty() {
        return Ok(stats);
    }
    let writer = Arc::new(Mutex::new(open_append(&unit.jsonl)?));
    let bar = progress_bar(&unit.label, unit.jobs.len() as u64, stats.skipped as u64);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for job in pending {
        // Acquire before spawning so at most `concurrency` jobs (and their images) are in memory.
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (client, writer, params, task) = (
            client.clone(),
            writer.clone(),
            unit.params.clone(),
            unit.task,
        );
        set.spawn(async move {
            let _permit = permit;
            let result = answer(&client, &job, &params, task).await;
            if let Ok(rec) = &result {
                append(&writer, rec)?;
            }
            anyhow::Ok((job.id, result))
        });
        while let Some(res) = set.try_join_next() {
            tally(res, &mut stats, &bar)?;
        }
    }
    while let Some(res) = set.join_next().await {
        tally(res, &mut stats, &bar)?;
    }
    bar.finish_and_clear();
    Ok(stats)
}

type JobOutcome = Result<(String, Result<PredictionRecord>)>;

fn tally(
    res: std::result::Result<JobOutcome, tokio::task::JoinError>,
    stats: &mut UnitStats,
    bar: &ProgressBar,
) -> Result<()> {
    // A write failure (disk full...) aborts the run: continuing would lose answers.
    let (id, result) = res.context("request task panicked")??;
    match result {
        Ok(rec) => {
            stats.answered += 1;
            stats.without_v1_stop += usize::from(!rec.v1_stop);
        }
        Err(e) => {
            stats.failed += 1;
            bar.suspend(|| eprintln!("item {id}: {e:#}"));
        }
    }
    bar.inc(1);
    Ok(())
}

async fn answer(
    client: &Client,
    job: &Job,
    params: &GenParams,
    task: Task,
) -> Result<PredictionRecord> {
    let mut images = Vec::with_capacity(job.prompt.images.len());
    for p in &job.prompt.images {
        images.push(client::image_base64(p).await?);
    }
    let generated = client.generate(&job.prompt.text, &images, params).await?;
    Ok(PredictionRecord {
        id: job.id.clone(),
        prediction: task.postprocess(&generated.text),
        raw: generated.text,
        prompt: job.prompt.text.clone(),
        demo_ids: job.demo_ids.clone(),
        v1_stop: generated.v1_stop,
    })
}

fn append(writer: &Mutex<File>, rec: &PredictionRecord) -> Result<()> {
    let mut line = serde_json::to_string(rec)?;
    line.push('\n');
    // One write_all per record under the lock: lines never interleave.
    let mut f = writer
        .lock()
        .map_err(|_| anyhow::anyhow!("writer lock poisoned"))?;
    f.write_all(line.as_bytes())?;
    f.flush()?;
    Ok(())
}

fn progress_bar(label: &str, total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar.set_position(done);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> PredictionRecord {
        PredictionRecord {
            id: id.into(),
            prediction: "p".into(),
            raw: "r".into(),
            prompt: String::new(),
            demo_ids: vec![],
            v1_stop: true,
        }
    }

    #[test]
    fn torn_lines_are_skipped_and_repaired() {
        let dir = std::env::temp_dir().join(format!("flamingo-eval-runner-{}", std::process::id()));
        let path = dir.join("p.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = serde_json::to_string(&rec("1")).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"id\":\"2\",\"pre")).unwrap();
        assert_eq!(read_predictions(&path).unwrap().len(), 1);
        let f = open_append(&path).unwrap();
        append(&Mutex::new(f), &rec("3")).unwrap();
        let got = read_predictions(&path).unwrap();
        assert!(got.contains_key("1") && got.contains_key("3") && !got.contains_key("2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Command line: load the datasets, run every (task, shots, seed) unit against the server,
//! score, write the reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

use crate::client::{Client, GenParams, StopRule};
use crate::datasets;
use crate::prompts::Templates;
use crate::report::{self, RunSummary, UnitScore};
use crate::runner::{self, Unit};
use crate::tasks::{self, Selection, Task, TaskData};

/// Few-shot COCO captioning (CIDEr) and VQAv2 (VQA accuracy) through a flamingo-serve
/// `/generate` endpoint, with the OpenFlamingo v1 eval prompts and settings.
#[derive(Parser, Debug, Clone)]
#[command(name = "flamingo-eval", version)]
pub struct Args {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token, if the server has API keys configured.
    #[arg(long, env = "FLAMINGO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Tasks to run.
    #[arg(long, value_delimiter = ',', default_value = "coco,vqav2")]
    pub tasks: Vec<Task>,
    /// Shot counts (0 = two text-only demos, as the v1 eval).
    #[arg(long, value_delimiter = ',', default_value = "0,4,8,16,32")]
    pub shots: Vec<usize>,
    /// Trial seeds (demo pool, demo draws, evaluation subset); the table averages over them.
    #[arg(long, value_delimiter = ',', default_value = "42")]
    pub seeds: Vec<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Output directory: predictions/*.jsonl (resumable), results.json, results.md.
    #[arg(long, default_value = "eval-out")]
    pub out_dir: PathBuf,
    /// Evaluate a seeded random subset of this many items per task (default: all).
    #[arg(long)]
    pub num_samples: Option<usize>,
    /// Size of the seeded demo pool drawn from the train split, like the reference's query set
    /// (0 = the whole train split).
    #[arg(long, default_value_t = 2048)]
    pub query_set_size: usize,
    /// Only score what is already recorded; send nothing.
    #[arg(long)]
    pub score_only: bool,

    /// Karpathy-split captions file (dataset_coco.json).
    #[arg(long)]
    pub coco_karpathy_json: Option<PathBuf>,
    /// Folder the Karpathy `filepath/filename` paths are relative to.
    #[arg(long)]
    pub coco_images: Option<PathBuf>,
    /// Splits demos are drawn from.
    #[arg(long, value_delimiter = ',', default_value = "train")]
    pub coco_demo_splits: Vec<String>,
    /// Split that is evaluated.
    #[arg(long, default_value = "test")]
    pub coco_eval_split: String,

    /// VQAv2 questions of the demo split (v2_OpenEnded_mscoco_train2014_questions.json).
    #[arg(long)]
    pub vqa_train_questions: Option<PathBuf>,
    /// VQAv2 annotations of the demo split (v2_mscoco_train2014_annotations.json).
    #[arg(long)]
    pub vqa_train_annotations: Option<PathBuf>,
    /// Image folder of the demo split (train2014/).
    #[arg(long)]
    pub vqa_train_images: Option<PathBuf>,
    /// VQAv2 questions that are evaluated (v2_OpenEnded_mscoco_val2014_questions.json).
    #[arg(long)]
    pub vqa_questions: Option<PathBuf>,
    /// VQAv2 annotations that are evaluated (v2_mscoco_val2014_annotations.json).
    #[arg(long)]
    pub vqa_annotations: Option<PathBuf>,
    /// Image folder of the evaluated split (val2014/).
    #[arg(long)]
    pub vqa_images: Option<PathBuf>,
    /// Image file name inside the VQA image folders; `{subtype}` = the questions file's
    /// data_subtype, `{image_id}` / `{image_id:012}` = the image id.
    #[arg(long, default_value = "COCO_{subtype}_{image_id:012}.jpg")]
    pub vqa_image_template: String,

    /// Caption demo template (`{caption}`).
    #[arg(long, default_value = "<image>Output:{caption}<|endofchunk|>")]
    pub caption_demo_template: String,
    /// Caption query template.
    #[arg(long, default_value = "<image>Output:")]
    pub caption_query_template: String,
    /// VQA demo template (`{question}`, `{answer}`).
    #[arg(
        long,
        default_value = "<image>Question:{question} Short Answer:{answer}<|endofchunk|>"
    )]
    pub vqa_demo_template: String,
    /// VQA query template (`{question}`).
    #[arg(long, default_value = "<image>Question:{question} Short Answer:")]
    pub vqa_query_template: String,

    /// Beam count (the v1 eval uses 3).
    #[arg(long, default_value_t = 3)]
    pub num_beams: u32,
    /// Beam length penalty (the v1 eval uses -2.0).
    #[arg(long, default_value_t = -2.0, allow_negative_numbers = true)]
    pub length_penalty: f64,
    #[arg(long, default_value_t = 20)]
    pub caption_max_new_tokens: u32,
    #[arg(long, default_value_t = 5)]
    pub vqa_max_new_tokens: u32,

    /// Tokens that end generation, sent as `stop_token_ids` (their ids are read from the
    /// server's tokenizer). v1 generates with `eos_token_id = <|endofchunk|>` only: `</s>` does
    /// not stop it. A server that refuses the parameter is used with its default end tokens
    /// (predictions marked `v1_stop: false`, counted in the summary).
    #[arg(long, value_delimiter = ',', default_value = "<|endofchunk|>")]
    pub stop_tokens: Vec<String>,
    /// The ids of `--stop-tokens`, given directly (no lookup on the server).
    #[arg(long, value_delimiter = ',')]
    pub stop_token_ids: Option<Vec<u32>>,
    /// Send no stop tokens: the server's default end tokens (`</s>` and `<|endofchunk|>`).
    #[arg(long)]
    pub server_stop_rule: bool,

    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Retries per request on 429/503 (honouring Retry-After), 5xx and connection errors.
    #[arg(long, default_value_t = 50)]
    pub max_retries: u32,
    /// How long to wait for `GET /ready` == 200 before starting.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout_secs: u64,
}

impl Args {
    fn templates(&self) -> Templates {
        Templates {
            caption_demo: self.caption_demo_template.clone(),
            caption_query: self.caption_query_template.clone(),
            vqa_demo: self.vqa_demo_template.clone(),
            vqa_query: self.vqa_query_template.clone(),
        }
    }

    fn params(&self, task: Task) -> GenParams {
        let max_new_tokens = match task {
            Task::Coco => self.caption_max_new_tokens,
            Task::Vqav2 => self.vqa_max_new_tokens,
        };
        GenParams {
            max_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
        }
    }

    /// Everything that changes what a recorded prediction means. A resumed run must match it.
    fn fingerprint(&self) -> serde_json::Value {
        json!({
            "templates": self.templates(),
            "num_samples": self.num_samples,
            "query_set_size": self.query_set_size,
            "coco": {"params": self.params(Task::Coco), "demo_splits": self.coco_demo_splits, "eval_split": self.coco_eval_split},
            "vqav2": {"params": self.params(Task::Vqav2)},
            "stop_tokens": if self.server_stop_rule { None } else { Some(&self.stop_tokens) },
        })
    }
}

fn required<'a>(v: &'a Option<PathBuf>, flag: &str, task: Task) -> Result<&'a Path> {
    v.as_deref()
        .with_context(|| format!("--{flag} is required for task {}", task.name()))
}

fn load_task(args: &Args, task: Task, t: &Templates) -> Result<TaskData> {
    match task {
        Task::Coco => {
            let json = required(&args.coco_karpathy_json, "coco-karpathy-json", task)?;
            let images = required(&args.coco_images, "coco-images", task)?;
            let train = datasets::load_karpathy(json, images, &args.coco_demo_splits)?;
            let test =
                datasets::load_karpathy(json, images, std::slice::from_ref(&args.coco_eval_split))?;
            Ok(tasks::coco_data(train, test, t))
        }
        Task::Vqav2 => {
            let train = datasets::load_vqa(
                required(&args.vqa_train_questions, "vqa-train-questions", task)?,
                required(&args.vqa_train_annotations, "vqa-train-annotations", task)?,
                required(&args.vqa_train_images, "vqa-train-images", task)?,
                &args.vqa_image_template,
            )?;
            let val = datasets::load_vqa(
                required(&args.vqa_questions, "vqa-questions", task)?,
                required(&args.vqa_annotations, "vqa-annotations", task)?,
                required(&args.vqa_images, "vqa-images", task)?,
                &args.vqa_image_template,
            )?;
            Ok(tasks::vqa_data(train, val, t))
        }
    }
}

/// Refuses to mix predictions made with different settings in one output directory.
fn check_manifest(out_dir: &Path, fingerprint: &serde_json::Value) -> Result<()> {
    let path = out_dir.join("run_config.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let old: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?;
            if &old != fingerprint {
                bail!(
                    "{} holds predictions made with other settings:\n  recorded: {old}\n  now:      {fingerprint}\n\
                     use another --out-dir (or delete it to start over)",
                    out_dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, serde_json::to_vec_pretty(fingerprint)?)
                .with_context(|| format!("writing {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn jsonl_path(out_dir: &Path, task: Task, shots: usize, seed: u64) -> PathBuf {
    out_dir
        .join("predictions")
        .join(format!("{}_{shots}shot_seed{seed}.jsonl", task.name()))
}

/// Runs the whole evaluation; returns the summary (also written to results.json).
pub async fn run(args: Args) -> Result<RunSummary> {
    if args.tasks.is_empty() || args.shots.is_empty() || args.seeds.is_empty() {
        bail!("--tasks, --shots and --seeds must not be empty");
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let fingerprint = args.fingerprint();
    check_manifest(&args.out_dir, &fingerprint)?;
    let templates = args.templates();
    let mut client = Client::new(
        &args.url,
        args.api_key.clone(),
        Duration::from_secs(args.timeout_secs),
        args.max_retries,
    )?;

    if !args.score_only {
        client
            .wait_ready(Duration::from_secs(args.ready_timeout_secs))
            .await?;
        client = client.with_stop_rule(match (&args.stop_token_ids, args.server_stop_rule) {
            (_, true) => StopRule::ServerDefault,
            (Some(ids), false) => StopRule::Ids(ids.clone()),
            (None, false) => StopRule::Tokens(args.stop_tokens.clone()),
        });
    }
    let client = Arc::new(client);

    let mut summary = RunSummary::default();
    let mut scores: Vec<UnitScore> = Vec::new();
    for &task in &args.tasks {
        let data = load_task(&args, task, &templates)?;
        eprintln!(
            "{}: {} demo candidates, {} evaluation items",
            task.name(),
            data.demos.len(),
            data.items.len()
        );
        for &seed in &args.seeds {
            let sel = Selection {
                seed,
                num_samples: args.num_samples,
                query_set_size: args.query_set_size,
            };
            let items = tasks::eval_items(&data, sel);
            for &shots in &args.shots {
                let jsonl = jsonl_path(&args.out_dir, task, shots, seed);
                if !args.score_only {
                    let unit = Unit {
                        task,
                        label: format!("{} {shots}-shot s{seed}", task.name()),
                        jsonl: jsonl.clone(),
                        params: args.params(task),
                        jobs: tasks::build_jobs(&data, shots, sel)?,
                    };
                    let stats = runner::run_unit(client.clone(), unit, args.concurrency).await?;
                    summary.answered += stats.answered;
                    summary.skipped += stats.skipped;
                    summary.failed += stats.failed;
                    summary.without_v1_stop += stats.without_v1_stop;
                }
                let preds = runner::read_predictions(&jsonl)?;
                report::write_official_predictions(
                    &args.out_dir,
                    &data,
                    &items,
                    &preds,
                    shots,
                    seed,
                )?;
                let s = report::score_unit(&data, &items, &preds, shots, seed);
                eprintln!(
                    "{} {shots}-shot seed {seed}: {} = {} ({}/{} answered)",
                    task.name(),
                    s.metric,
                    s.score.map_or("-".into(), |v| format!("{v:.2}")),
                    s.answered,
                    s.expected
                );
                scores.push(s);
            }
        }
    }
    summary.requests_sent = client.requests_sent();
    let config = json!({"settings": fingerprint, "url": args.url, "tasks": args.tasks, "shots": args.shots, "seeds": args.seeds});
    report::write_results(&args.out_dir, &config, &scores, &summary)?;
    Ok(summary)
}

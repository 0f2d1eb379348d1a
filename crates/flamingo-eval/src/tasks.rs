//! The two benchmarks in one shape: demo candidates with rendered text, evaluation items with
//! their query text and references, and per-task post-processing and metric.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::datasets::{CaptionItem, VqaItem};
use crate::metrics;
use crate::prompts::{self, Demo, Prompt, Templates};
use crate::sampling;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// COCO Karpathy-split captioning, CIDEr.
    Coco,
    /// VQAv2 open-ended, VQA accuracy.
    Vqav2,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Coco => "coco",
            Task::Vqav2 => "vqav2",
        }
    }
    pub fn metric_name(self) -> &'static str {
        match self {
            Task::Coco => "CIDEr",
            Task::Vqav2 => "VQA accuracy",
        }
    }
    pub fn postprocess(self, generated: &str) -> String {
        match self {
            Task::Coco => prompts::postprocess_caption(generated),
            Task::Vqav2 => prompts::postprocess_vqa(generated),
        }
    }
    /// Corpus score and per-item scores (both on the card's 0-100 scale).
    pub fn score(self, refs: &[Vec<String>], preds: &[String]) -> (f64, Vec<f64>) {
        match self {
            Task::Coco => metrics::coco_cider(refs, preds),
            Task::Vqav2 => metrics::vqa_accuracy_percent(refs, preds),
        }
    }
}

/// A candidate in-context example, already rendered with its template.
#[derive(Clone, Debug)]
pub struct DemoItem {
    pub id: String,
    pub image: PathBuf,
    pub text: String,
}

/// An evaluation item: the query text, its image and the references it is scored against.
#[derive(Clone, Debug)]
pub struct EvalItem {
    pub id: String,
    pub image: PathBuf,
    pub query_text: String,
    pub refs: Vec<String>,
}

pub struct TaskData {
    pub task: Task,
    pub demos: Vec<DemoItem>,
    pub items: Vec<EvalItem>,
}

pub fn coco_data(train: Vec<CaptionItem>, test: Vec<CaptionItem>, t: &Templates) -> TaskData {
    let demos = train
        .into_iter()
        .filter(|c| !c.captions.is_empty())
        .map(|c| DemoItem {
            text: t.caption_demo(&c.captions[0]),
            id: c.id,
            image: c.image,
        })
        .collect();
    let items = test
        .into_iter()
        .map(|c| EvalItem {
            query_text: t.caption_query(),
            id: c.id,
            image: c.image,
            refs: c.captions,
        })
        .collect();
    TaskData {
        task: Task::Coco,
        demos,
        items,
    }
}

pub fn vqa_data(train: Vec<VqaItem>, val: Vec<VqaItem>, t: &Templates) -> TaskData {
    let demos = train
        .into_iter()
        .filter(|q| !q.answers.is_empty())
        .map(|q| DemoItem {
            // v1 uses the first human answer (`sample['answers'][0]`).
            text: t.vqa_demo(&q.question, &q.answers[0]),
            id: q.question_id.to_string(),
            image: q.image,
        })
        .collect();
    let items = val
        .into_iter()
        .map(|q| EvalItem {
            query_text: t.vqa_query(&q.question),
            id: q.question_id.to_string(),
            image: q.image,
            refs: q.answers,
        })
        .collect();
    TaskData {
        task: Task::Vqav2,
        demos,
        items,
    }
}

/// One request to make.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub prompt: Prompt,
    pub demo_ids: Vec<String>,
}

/// Selection knobs shared by every (task, shots, seed) unit.
#[derive(Clone, Copy, Debug)]
pub struct Selection {
    pub seed: u64,
    pub num_samples: Option<usize>,
    pub query_set_size: usize,
}

/// The evaluation items of a seed (indices into `data.items`).
pub fn eval_items(data: &TaskData, sel: Selection) -> Vec<usize> {
    sampling::eval_subset(
        sel.seed,
        data.task.name(),
        data.items.len(),
        sel.num_samples,
    )
}

/// Builds the requests for one (shots, seed) unit.
pub fn build_jobs(data: &TaskData, shots: usize, sel: Selection) -> Result<Vec<Job>> {
    let name = data.task.name();
    let pool = sampling::demo_pool(sel.seed, name, data.demos.len(), sel.query_set_size);
    let k = prompts::effective_shots(shots);
    if pool.len() < k {
        bail!(
            "{name}: {k} demos needed but the demo pool has only {}",
            pool.len()
        );
    }
    Ok(eval_items(data, sel)
        .into_iter()
        .map(|i| {
            let item = &data.items[i];
            let picks = sampling::demos_for_query(sel.seed, name, shots, &item.id, pool.len(), k);
            let demos: Vec<&DemoItem> = picks.iter().map(|&p| &data.demos[pool[p]]).collect();
            let rendered: Vec<Demo> = demos
                .iter()
                .map(|d| Demo {
                    text: d.text.clone(),
                    image: d.image.clone(),
                })
                .collect();
            Job {
                id: item.id.clone(),
                prompt: prompts::assemble(&rendered, &item.query_text, item.image.clone(), shots),
                demo_ids: demos.iter().map(|d| d.id.clone()).collect(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caption(id: &str, caps: &[&str]) -> CaptionItem {
        CaptionItem {
            id: id.into(),
            image: PathBuf::from(format!("{id}.png")),
            captions: caps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn jobs_use_train_demos_and_test_queries() {
        let train = (0..10)
            .map(|i| caption(&format!("t{i}"), &["A thing."]))
            .collect();
        let test = vec![caption("q1", &["ref"]), caption("q2", &["ref"])];
        let data = coco_data(train, test, &Templates::default());
        let sel = Selection {
            seed: 1,
            num_samples: None,
            query_set_size: 0,
        };
        let jobs = build_jobs(&data, 4, sel).unwrap();
        assert_eq!(jobs.len(), 2);
        for j in &jobs {
            assert_eq!(j.demo_ids.len(), 4);
            assert!(j.demo_ids.iter().all(|d| d.starts_with('t')));
            assert_eq!(j.prompt.images.len(), 5);
            assert_eq!(j.prompt.text.matches("<image>").count(), 5);
        }
        let zero = build_jobs(&data, 0, sel).unwrap();
        assert_eq!(zero[0].prompt.images.len(), 1);
        assert_eq!(zero[0].prompt.text.matches("<image>").count(), 1);
        assert!(build_jobs(&data, 16, sel).is_err());
    }
}

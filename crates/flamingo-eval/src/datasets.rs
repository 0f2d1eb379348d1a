//! Loaders for the standard annotation files: COCO Karpathy split (`dataset_coco.json`) and
//! VQAv2 questions + annotations (`v2_OpenEnded_mscoco_*_questions.json`,
//! `v2_mscoco_*_annotations.json`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One COCO image with its reference captions.
#[derive(Clone, Debug)]
pub struct CaptionItem {
    /// `cocoid` as a string (the prediction key).
    pub id: String,
    pub image: PathBuf,
    /// `sentences[].raw`, in file order.
    pub captions: Vec<String>,
}

/// One VQA question with its image and the human answers.
#[derive(Clone, Debug)]
pub struct VqaItem {
    pub question_id: u64,
    pub image_id: u64,
    pub question: String,
    /// `answers[].answer`, in file order (normally 10).
    pub answers: Vec<String>,
    pub image: PathBuf,
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    #[serde(default)]
    filepath: Option<String>,
    filename: String,
    split: String,
    sentences: Vec<KarpathySentence>,
    cocoid: serde_json::Value,
}

#[derive(Deserialize)]
struct KarpathySentence {
    raw: String,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Loads a Karpathy-format captions file, keeping the images whose split is in `splits`.
/// Image paths are `image_dir/filepath/filename` (`filepath` may be absent).
pub fn load_karpathy(json: &Path, image_dir: &Path, splits: &[String]) -> Result<Vec<CaptionItem>> {
    let file: KarpathyFile = read_json(json)?;
    let items: Vec<CaptionItem> = file
        .images
        .into_iter()
        .filter(|im| splits.contains(&im.split))
        .map(|im| {
            let dir = match &im.filepath {
                Some(fp) if !fp.is_empty() => image_dir.join(fp),
                _ => image_dir.to_path_buf(),
            };
            // cocoid is a number in dataset_coco.json; accept strings for hand-made files.
            let id = match im.cocoid {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            };
            CaptionItem {
                id,
                image: dir.join(&im.filename),
                captions: im.sentences.into_iter().map(|s| s.raw).collect(),
            }
        })
        .collect();
    if items.is_empty() {
        bail!("{}: no images in split(s) {:?}", json.display(), splits);
    }
    Ok(items)
}

#[derive(Deserialize)]
struct QuestionsFile {
    questions: Vec<Question>,
    #[serde(default)]
    data_subtype: Option<String>,
}

#[derive(Deserialize)]
struct Question {
    image_id: u64,
    question: String,
    question_id: u64,
}

#[derive(Deserialize)]
struct AnnotationsFile {
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct Annotation {
    question_id: u64,
    answers: Vec<Answer>,
}

#[derive(Deserialize)]
struct Answer {
    answer: String,
}

/// Loads VQAv2 questions joined with their annotations. `image_template` names the image file
/// inside `image_dir`: `{subtype}` is the questions file's `data_subtype` (e.g. `val2014`),
/// `{image_id}` the id, `{image_id:012}` the id zero-padded to 12 digits.
pub fn load_vqa(
    questions: &Path,
    annotations: &Path,
    image_dir: &Path,
    image_template: &str,
) -> Result<Vec<VqaItem>> {
    let q: QuestionsFile = read_json(questions)?;
    let a: AnnotationsFile = read_json(annotations)?;
    let subtype = q.data_subtype.unwrap_or_default();
    let mut answers: HashMap<u64, Vec<String>> = a
        .annotations
        .into_iter()
        .map(|ann| {
            (
                ann.question_id,
                ann.answers.into_iter().map(|x| x.answer).collect(),
            )
        })
        .collect();
    let mut items = Vec::with_capacity(q.questions.len());
    for qu in q.questions {
        let Some(ans) = answers.remove(&qu.question_id) else {
            bail!(
                "{}: question {} has no annotation",
                annotations.display(),
                qu.question_id
            );
        };
        let file = render_image_name(image_template, &subtype, qu.image_id);
        items.push(VqaItem {
            question_id: qu.question_id,
            image_id: qu.image_id,
            question: qu.question,
            answers: ans,
            image: image_dir.join(file),
        });
    }
    if items.is_empty() {
        bail!("{}: no questions", questions.display());
    }
    Ok(items)
}

fn render_image_name(template: &str, subtype: &str, image_id: u64) -> String {
    template
        .replace("{subtype}", subtype)
        .replace("{image_id:012}", &format!("{image_id:012}"))
        .replace("{image_id}", &image_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(
            render_image_name("COCO_{subtype}_{image_id:012}.jpg", "val2014", 42),
            "COCO_val2014_000000000042.jpg"
        );
        assert_eq!(
            render_image_name("{subtype}/{image_id}.png", "train", 7),
            "train/7.png"
        );
    }
}

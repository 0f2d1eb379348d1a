//! Prompt construction and output post-processing of the OpenFlamingo v1 eval
//! (`open_flamingo/eval/evaluate.py` at 68d51df).

use std::path::PathBuf;

pub const IMAGE_TOKEN: &str = "<image>";
pub const END_OF_CHUNK: &str = "<|endofchunk|>";

/// Prompt templates. `{caption}`, `{question}` and `{answer}` are substituted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Templates {
    pub caption_demo: String,
    pub caption_query: String,
    pub vqa_demo: String,
    pub vqa_query: String,
}

impl Default for Templates {
    /// The v1 eval prompts (capital "A" in "Short Answer", as in v1).
    fn default() -> Self {
        Self {
            caption_demo: "<image>Output:{caption}<|endofchunk|>".into(),
            caption_query: "<image>Output:".into(),
            vqa_demo: "<image>Question:{question} Short Answer:{answer}<|endofchunk|>".into(),
            vqa_query: "<image>Question:{question} Short Answer:".into(),
        }
    }
}

impl Templates {
    pub fn caption_demo(&self, caption: &str) -> String {
        // v1 strips the demo caption (`sample['caption'].strip()`).
        self.caption_demo.replace("{caption}", caption.trim())
    }
    pub fn caption_query(&self) -> String {
        self.caption_query.clone()
    }
    pub fn vqa_demo(&self, question: &str, answer: &str) -> String {
        self.vqa_demo
            .replace("{question}", question.trim())
            .replace("{answer}", answer.trim())
    }
    pub fn vqa_query(&self, question: &str) -> String {
        self.vqa_query.replace("{question}", question.trim())
    }
}

/// A rendered in-context example.
#[derive(Clone, Debug)]
pub struct Demo {
    pub text: String,
    pub image: PathBuf,
}

/// Text plus the images its `<image>` markers refer to, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub images: Vec<PathBuf>,
}

/// Concatenates demos and the query. With `shots == 0` the v1 eval still puts (two) demos in
/// the context but removes their `<image>` markers and sends only the query image
/// (`get_context_text`, `effective_num_shots = num_shots if num_shots > 0 else 2`).
pub fn assemble(demos: &[Demo], query_text: &str, query_image: PathBuf, shots: usize) -> Prompt {
    let context: String = demos.iter().map(|d| d.text.as_str()).collect();
    if shots == 0 {
        Prompt {
            text: context.replace(IMAGE_TOKEN, "") + query_text,
            images: vec![query_image],
        }
    } else {
        let mut images: Vec<PathBuf> = demos.iter().map(|d| d.image.clone()).collect();
        images.push(query_image);
        Prompt {
            text: context + query_text,
            images,
        }
    }
}

/// Demos to draw for a shot count (`effective_num_shots`).
pub fn effective_shots(shots: usize) -> usize {
    if shots == 0 {
        2
    } else {
        shots
    }
}

/// Drops anything from an `<|endofchunk|>` on: the reference decodes with
/// `skip_special_tokens=True` and generation stops at that token, so it can only be last.
fn cut_end_of_chunk(s: &str) -> &str {
    s.split(END_OF_CHUNK).next().unwrap_or("")
}

/// `postprocess_captioning_generation(out).replace('"', "")`: cut at the first "Output".
pub fn postprocess_caption(generated: &str) -> String {
    let s = cut_end_of_chunk(generated);
    s.split("Output").next().unwrap_or("").replace('"', "")
}

/// `postprocess_vqa_generation`: `re.split("Question|Answer", s, 1)[0]`. The official VQA
/// normalisation is applied by the metric (it only normalises when the humans disagree).
pub fn postprocess_vqa(generated: &str) -> String {
    let s = cut_end_of_chunk(generated);
    let cut = [s.find("Question"), s.find("Answer")]
        .into_iter()
        .flatten()
        .min();
    match cut {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(text: &str, img: &str) -> Demo {
        Demo {
            text: text.into(),
            image: PathBuf::from(img),
        }
    }

    #[test]
    fn few_shot_caption_prompt() {
        let t = Templates::default();
        let demos = vec![
            demo(&t.caption_demo(" A cat. "), "a.png"),
            demo(&t.caption_demo("A dog."), "b.png"),
        ];
        let p = assemble(&demos, &t.caption_query(), "q.png".into(), 2);
        assert_eq!(
            p.text,
            "<image>Output:A cat.<|endofchunk|><image>Output:A dog.<|endofchunk|><image>Output:"
        );
        assert_eq!(
            p.images,
            vec![PathBuf::from("a.png"), "b.png".into(), "q.png".into()]
        );
    }

    #[test]
    fn zero_shot_removes_demo_images() {
        let t = Templates::default();
        let demos = vec![
            demo(&t.vqa_demo("What color?", "red"), "a.png"),
            demo(&t.vqa_demo("How many?", "2"), "b.png"),
        ];
        let p = assemble(&demos, &t.vqa_query("Is it day?"), "q.png".into(), 0);
        assert_eq!(
            p.text,
            "Question:What color? Short Answer:red<|endofchunk|>Question:How many? Short Answer:2<|endofchunk|><image>Question:Is it day? Short Answer:"
        );
        assert_eq!(p.images, vec![PathBuf::from("q.png")]);
        assert_eq!(effective_shots(0), 2);
        assert_eq!(effective_shots(8), 8);
    }

    #[test]
    fn postprocessing() {
        assert_eq!(
            postprocess_caption("A \"big\" dog. Output: more"),
            "A big dog. "
        );
        assert_eq!(postprocess_caption("A cat<|endofchunk|>junk"), "A cat");
        assert_eq!(postprocess_vqa("yes Question: why"), "yes ");
        assert_eq!(postprocess_vqa("two Short Answer: 3"), "two Short ");
        assert_eq!(postprocess_vqa("red"), "red");
    }
}

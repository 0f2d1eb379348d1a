//! Prompt construction and output post-processing of the OpenFlamingo v1 eval
//! (`open_flamingo/eval/evaluate.py` at 68d51df).

use std::path::PathBuf;

use crate::pytext::py_strip;

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
        // v1 strips the demo caption (`sample['caption'].strip()`, Python's whitespace).
        self.caption_demo.replace("{caption}", py_strip(caption))
    }
    pub fn caption_query(&self) -> String {
        self.caption_query.clone()
    }
    pub fn vqa_demo(&self, question: &str, answer: &str) -> String {
        self.vqa_demo
            .replace("{question}", py_strip(question))
            .replace("{answer}", py_strip(answer))
    }
    pub fn vqa_query(&self, question: &str) -> String {
        self.vqa_query.replace("{question}", py_strip(question))
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

/// Every special token of the OpenFlamingo-9B tokenizer: LLaMA's `<s>`, `</s>`, `<unk>` and the
/// three OpenFlamingo adds (`<|endofchunk|>`, `<image>` as additional special tokens, `<PAD>` as
/// the pad token). `tokenizer.batch_decode(outputs, skip_special_tokens=True)` drops all of them.
pub const SPECIAL_TOKENS: &[&str] = &["<s>", "</s>", "<unk>", END_OF_CHUNK, IMAGE_TOKEN, "<PAD>"];

/// The text v1 would have decoded from the server's `generated_text`:
/// - v1 generates with `eos_token_id = <|endofchunk|>`, so nothing follows the first one (a
///   server without the v1 stop rule may go on): everything from it on is dropped;
/// - v1 decodes with `skip_special_tokens=True`: every special token is removed wherever it is
///   (`</s>` does not end v1's generation, and the server may show it in the text).
pub fn v1_decode(generated: &str) -> String {
    let mut s = generated
        .split(END_OF_CHUNK)
        .next()
        .unwrap_or("")
        .to_string();
    for special in SPECIAL_TOKENS {
        s = s.replace(special, "");
    }
    s
}

/// `postprocess_captioning_generation(out).replace('"', "")`: cut at the first "Output".
pub fn postprocess_caption(generated: &str) -> String {
    let s = v1_decode(generated);
    s.split("Output").next().unwrap_or("").replace('"', "")
}

/// `postprocess_vqa_generation`: `re.split("Question|Answer", s, 1)[0]`. The official VQA
/// normalisation is applied by the metric (it only normalises when the humans disagree).
pub fn postprocess_vqa(generated: &str) -> String {
    let s = v1_decode(generated);
    let cut = [s.find("Question"), s.find("Answer")]
        .into_iter()
        .flatten()
        .min();
    match cut {
        Some(i) => s[..i].to_string(),
        None => s,
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
        // Python's strip(): the information separators go too.
        assert_eq!(
            t.caption_demo("\u{1f}A cat.\u{1c}\u{a0}"),
            "<image>Output:A cat.<|endofchunk|>"
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

    #[test]
    fn special_tokens_are_skipped_as_v1_decodes() {
        // `</s>` does not stop v1: the text after it is kept, the token itself is not.
        assert_eq!(
            postprocess_caption("A cat</s> on a mat</s>"),
            "A cat on a mat"
        );
        assert_eq!(postprocess_vqa("yes</s>"), "yes");
        assert_eq!(postprocess_vqa("<s>two</s><PAD><PAD>"), "two");
        assert_eq!(postprocess_vqa("<unk>red<image>"), "red");
        // Generation ends at the first <|endofchunk|>: nothing after it counts.
        assert_eq!(
            postprocess_caption("A dog<|endofchunk|><image>Output:B"),
            "A dog"
        );
        // The cut words are searched after the specials are gone, as in v1.
        assert_eq!(postprocess_vqa("blue Ques</s>tion"), "blue ");
        assert_eq!(postprocess_caption("Out</s>put"), "");
    }
}

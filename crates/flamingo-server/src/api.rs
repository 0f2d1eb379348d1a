//! Request bodies of every route and how each renders into an OpenFlamingo interleaved prompt
//! (`<image>` where an image goes, `<|endofchunk|>` closing each example).

use serde::Deserialize;

use crate::error::ApiError;

pub const IMAGE: &str = "<image>";
pub const END_OF_CHUNK: &str = "<|endofchunk|>";

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Parameters {
    pub max_new_tokens: Option<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
    pub num_beams: Option<u32>,
    pub length_penalty: Option<f64>,
    pub details: Option<bool>,
    pub decoder_input_details: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Caption,
    Vqa,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Example {
    pub image: String,
    pub text: Option<String>,
    pub question: Option<String>,
    pub answer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Query {
    pub image: String,
    pub text: Option<String>,
    pub question: Option<String>,
}

/// `/generate` and `/generate_stream`: TGI's `inputs` form or the few-shot form.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerateRequest {
    pub inputs: Option<String>,
    pub images: Option<Vec<String>>,
    pub parameters: Option<Parameters>,
    pub task: Option<Task>,
    pub examples: Option<Vec<Example>>,
    pub query: Option<Query>,
}

/// A prompt with its image payloads in `<image>` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub prompt: String,
    pub images: Vec<String>,
}

impl GenerateRequest {
    pub fn render(&self) -> Result<Rendered, ApiError> {
        if let Some(query) = &self.query {
            if self.inputs.is_some() || self.images.is_some() {
                return Err(ApiError::validation("use either `inputs`/`images` or the few-shot `query`/`examples` form"));
            }
            return render_few_shot(self.task, self.examples.as_deref().unwrap_or(&[]), query);
        }
        if self.examples.is_some() || self.task.is_some() {
            return Err(ApiError::validation("the few-shot form needs a `query`"));
        }
        let inputs = self.inputs.as_deref().ok_or_else(|| ApiError::validation("`inputs` is required"))?;
        let (prompt, mut inline) = extract_markdown_images(inputs);
        let mut images = self.images.clone().unwrap_or_default();
        if !inline.is_empty() && !images.is_empty() {
            return Err(ApiError::validation("give images either inline as ![](data:...) or in `images`, not both"));
        }
        images.append(&mut inline);
        Ok(Rendered { prompt, images })
    }
}

fn render_few_shot(task: Option<Task>, examples: &[Example], query: &Query) -> Result<Rendered, ApiError> {
    let mut prompt = String::new();
    let mut images = Vec::new();
    let need = |v: &Option<String>, what: &str, i: usize| {
        v.clone().ok_or_else(|| ApiError::validation(format!("examples[{i}] needs `{what}`")))
    };
    for (i, ex) in examples.iter().enumerate() {
        let body = match task {
            Some(Task::Caption) => format!("Output:{}", need(&ex.text, "text", i)?),
            Some(Task::Vqa) => format!("Question:{} Short Answer:{}", need(&ex.question, "question", i)?, need(&ex.answer, "answer", i)?),
            None => need(&ex.text, "text", i)?,
        };
        prompt.push_str(IMAGE);
        prompt.push_str(&body);
        prompt.push_str(END_OF_CHUNK);
        images.push(ex.image.clone());
    }
    let tail = match task {
        Some(Task::Caption) => "Output:".to_string(),
        Some(Task::Vqa) => {
            let q = query.question.clone().or_else(|| query.text.clone());
            format!("Question:{} Short Answer:", q.ok_or_else(|| ApiError::validation("a vqa query needs `question`"))?)
        }
        None => query.text.clone().unwrap_or_default(),
    };
    prompt.push_str(IMAGE);
    prompt.push_str(&tail);
    images.push(query.image.clone());
    Ok(Rendered { prompt, images })
}

/// TGI's inline form: each `![alt](data:...)` becomes `<image>` and its URL an image.
pub fn extract_markdown_images(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut images = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("![") {
        let after = &rest[start + 2..];
        let parsed = after.find("](").and_then(|close| {
            let url_part = &after[close + 2..];
            url_part.find(')').map(|end| (close, &url_part[..end], close + 2 + end + 1))
        });
        match parsed {
            Some((_, url, consumed)) if url.starts_with("data:") || url.starts_with("http") => {
                out.push_str(&rest[..start]);
                out.push_str(IMAGE);
                images.push(url.to_string());
                rest = &after[consumed..];
            }
            _ => {
                out.push_str(&rest[..start + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, images)
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<StopField>,
    pub stream: Option<bool>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub n: Option<u32>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<ChatContent>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChatContent {
    Text(String),
    Parts(Vec<ChatPart>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// Messages in order; an `image_url` part becomes `<image>`, text parts their text; every
/// `assistant` message is closed with `<|endofchunk|>` (it completed an example); `system` text is
/// prepended as it is. The prompt ends with the last user message, which the model continues.
pub fn render_chat(messages: &[ChatMessage]) -> Result<Rendered, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::validation("`messages` must not be empty"));
    }
    let mut prompt = String::new();
    let mut images = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if !["system", "user", "assistant"].contains(&m.role.as_str()) {
            return Err(ApiError::validation(format!("messages[{i}].role `{}` is not system, user or assistant", m.role)));
        }
        match &m.content {
            None => {}
            Some(ChatContent::Text(t)) => prompt.push_str(t),
            Some(ChatContent::Parts(parts)) => {
                for p in parts {
                    match p {
                        ChatPart::Text { text } => prompt.push_str(text),
                        ChatPart::ImageUrl { image_url } => {
                            prompt.push_str(IMAGE);
                            images.push(image_url.url.clone());
                        }
                    }
                }
            }
        }
        if m.role == "assistant" {
            prompt.push_str(END_OF_CHUNK);
        }
    }
    Ok(Rendered { prompt, images })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_images_become_markers() {
        let (p, imgs) = extract_markdown_images("a ![](data:image/png;base64,AAA)Output: ![x](data:image/png;base64,BBB) b ![no](link");
        assert_eq!(p, "a <image>Output: <image> b ![no](link");
        assert_eq!(imgs, vec!["data:image/png;base64,AAA", "data:image/png;base64,BBB"]);
    }

    #[test]
    fn few_shot_caption_and_vqa_use_the_eval_formats() {
        let ex = |t: &str| Example { image: "I".into(), text: Some(t.into()), question: Some("Q?".into()), answer: Some("A".into()) };
        let q = Query { image: "J".into(), text: None, question: Some("What?".into()) };
        let r = render_few_shot(Some(Task::Caption), &[ex("A cat.")], &q).unwrap();
        assert_eq!(r.prompt, "<image>Output:A cat.<|endofchunk|><image>Output:");
        assert_eq!(r.images, vec!["I", "J"]);
        let r = render_few_shot(Some(Task::Vqa), &[ex("")], &q).unwrap();
        assert_eq!(r.prompt, "<image>Question:Q? Short Answer:A<|endofchunk|><image>Question:What? Short Answer:");
        let r = render_few_shot(None, &[], &Query { image: "J".into(), text: Some("An image of".into()), question: None }).unwrap();
        assert_eq!(r.prompt, "<image>An image of");
    }

    #[test]
    fn chat_renders_interleaved() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:a"}}, {"type": "text", "text": "Output:"}]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:b"}}, {"type": "text", "text": "Output:"}]}
        ])).unwrap();
        let r = render_chat(&msgs).unwrap();
        assert_eq!(r.prompt, "<image>Output:A cat.<|endofchunk|><image>Output:");
        assert_eq!(r.images, vec!["data:a", "data:b"]);
    }

    #[test]
    fn mixed_forms_are_refused() {
        let r = GenerateRequest { inputs: Some("x".into()), query: Some(Query { image: "i".into(), text: None, question: None }), ..Default::default() };
        assert!(r.render().is_err());
    }
}

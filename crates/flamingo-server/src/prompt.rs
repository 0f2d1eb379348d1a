//! How each request form renders into an OpenFlamingo interleaved prompt: `<image>` where an
//! image goes (images are taken in order) and `<|endofchunk|>` closing each in-context example.
//!
//! * `/generate` `inputs`: as given; TGI's inline markdown images `![](data:...)` become `<image>`
//!   in place.
//! * few-shot (`task`, `examples`, `query`), with the v1 eval's prompt formats (fields trimmed, as
//!   the eval does): caption `<image>Output:{text}<|endofchunk|>` ... `<image>Output:`; vqa
//!   `<image>Question:{question} Short Answer:{answer}<|endofchunk|>` ...
//!   `<image>Question:{question} Short Answer:`; free form (`task` null)
//!   `<image>{text}<|endofchunk|>` ... `<image>{text}`.
//! * chat: messages in order; an `image_url` part becomes `<image>`, a text part (or string
//!   content) its text; every `assistant` message is followed by `<|endofchunk|>` (it completed an
//!   example); `system` (and `developer`) text is put in as it is. Nothing else is added, so
//!   `[user: image + "Output:"]` renders to `<image>Output:`.
//!
//! In the few-shot and chat forms the texts may not contain the markers themselves: images go in
//! image fields, so a stray `<image>` cannot silently shift which image the model looks at.

use crate::api::{ChatContent, ChatMessage, ChatPart, Example, GenerateRequest, Query, Task};
use crate::error::ApiError;

pub const IMAGE: &str = "<image>";
pub const END_OF_CHUNK: &str = "<|endofchunk|>";

/// A prompt with its image payloads in `<image>` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub prompt: String,
    pub images: Vec<String>,
}

pub fn render_generate(req: &GenerateRequest) -> Result<Rendered, ApiError> {
    if let Some(query) = &req.query {
        if req.inputs.is_some() || req.images.is_some() {
            return Err(ApiError::validation(
                "use either `inputs`/`images` or the few-shot `query`/`examples` form, not both",
            ));
        }
        return render_few_shot(req.task, req.examples.as_deref().unwrap_or(&[]), query);
    }
    if req.examples.is_some() || req.task.is_some() {
        return Err(ApiError::validation(
            "the few-shot form needs a `query` ({\"image\": ..., \"text\" or \"question\": ...})",
        )
        .param("query"));
    }
    let inputs = req
        .inputs
        .as_deref()
        .ok_or_else(|| ApiError::validation("`inputs` is required").param("inputs"))?;
    let (prompt, inline) = extract_markdown_images(inputs);
    let given = req.images.clone().unwrap_or_default();
    if !inline.is_empty() && !given.is_empty() {
        return Err(ApiError::validation(
            "give images either inline as ![](data:...) or in `images`, not both",
        ));
    }
    let images = if inline.is_empty() { given } else { inline };
    Ok(Rendered { prompt, images })
}

fn no_markers(text: &str, field: &str) -> Result<(), ApiError> {
    if text.contains(IMAGE) || text.contains(END_OF_CHUNK) {
        return Err(ApiError::validation(format!(
            "`{field}` contains `{IMAGE}` or `{END_OF_CHUNK}`; put images in image fields, the server adds the markers"
        ))
        .param(field));
    }
    Ok(())
}

pub fn render_few_shot(
    task: Option<Task>,
    examples: &[Example],
    query: &Query,
) -> Result<Rendered, ApiError> {
    let mut prompt = String::new();
    let mut images = Vec::with_capacity(examples.len() + 1);
    for (i, ex) in examples.iter().enumerate() {
        let field = |v: &Option<String>, name: &str| -> Result<String, ApiError> {
            let path = format!("examples[{i}].{name}");
            let v = v.as_deref().ok_or_else(|| {
                ApiError::validation(format!("`{path}` is required")).param(&path)
            })?;
            no_markers(v, &path)?;
            Ok(v.trim().to_string())
        };
        let body = match task {
            Some(Task::Caption) => format!("Output:{}", field(&ex.text, "text")?),
            Some(Task::Vqa) => format!(
                "Question:{} Short Answer:{}",
                field(&ex.question, "question")?,
                field(&ex.answer, "answer")?
            ),
            None => field(&ex.text, "text")?,
        };
        prompt.push_str(IMAGE);
        prompt.push_str(&body);
        prompt.push_str(END_OF_CHUNK);
        images.push(ex.image.clone());
    }
    let tail = match task {
        Some(Task::Caption) => "Output:".to_string(),
        Some(Task::Vqa) => {
            let q = query.question.as_deref().or(query.text.as_deref());
            let q = q.ok_or_else(|| {
                ApiError::validation("a vqa query needs `query.question`").param("query.question")
            })?;
            no_markers(q, "query.question")?;
            format!("Question:{} Short Answer:", q.trim())
        }
        None => {
            let t = query.text.as_deref().unwrap_or_default();
            no_markers(t, "query.text")?;
            t.to_string()
        }
    };
    prompt.push_str(IMAGE);
    prompt.push_str(&tail);
    images.push(query.image.clone());
    Ok(Rendered { prompt, images })
}

/// TGI's inline form: each `![alt](data:...)` (or an http(s) URL, refused later with a clear
/// message) becomes `<image>` and its URL an image; other markdown is left alone.
///
/// Linear in the text: a hostile `![![![...` must not cost a scan of the rest per `![`. Each
/// search below starts at or after the previous one of its kind, so a found position stays valid
/// until the cursor passes it ([`NextFrom`]), and every byte is looked at a bounded number of times.
pub fn extract_markdown_images(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut images = Vec::new();
    let mut open = NextFrom::new(text, "![");
    let mut close = NextFrom::new(text, "](");
    let mut newline = NextFrom::new(text, "\n");
    let mut paren = NextFrom::new(text, ")");
    let mut copied = 0;
    let mut cursor = 0;
    while let Some(start) = open.at_or_after(cursor) {
        let alt = start + 2;
        // `![alt](url)` with the alt text on one line.
        let parsed = close
            .at_or_after(alt)
            .filter(|&c| newline.at_or_after(alt).is_none_or(|n| n > c))
            .and_then(|c| paren.at_or_after(c + 2).map(|end| (c + 2, end)));
        match parsed {
            Some((url_start, end)) => {
                let url = &text[url_start..end];
                if url.starts_with("data:")
                    || url.starts_with("http://")
                    || url.starts_with("https://")
                {
                    out.push_str(&text[copied..start]);
                    out.push_str(IMAGE);
                    images.push(url.trim().to_string());
                    copied = end + 1;
                    cursor = end + 1;
                    continue;
                }
                cursor = alt;
            }
            None => cursor = alt,
        }
    }
    out.push_str(&text[copied..]);
    (out, images)
}

/// The next occurrence of a pattern at or after a position, for positions that never decrease:
/// the last answer is reused while it is still ahead, so all calls together scan the text once.
struct NextFrom<'a> {
    text: &'a str,
    pattern: &'static str,
    /// The last answer (None: no occurrence at or after `searched_from`).
    found: Option<usize>,
    searched_from: usize,
    searched: bool,
}

impl<'a> NextFrom<'a> {
    fn new(text: &'a str, pattern: &'static str) -> Self {
        Self {
            text,
            pattern,
            found: None,
            searched_from: 0,
            searched: false,
        }
    }

    fn at_or_after(&mut self, from: usize) -> Option<usize> {
        debug_assert!(!self.searched || from >= self.searched_from);
        let still_valid = self.searched
            && match self.found {
                Some(p) => p >= from,
                None => true,
            };
        if !still_valid {
            self.found = self
                .text
                .get(from..)
                .and_then(|rest| rest.find(self.pattern))
                .map(|p| from + p);
            self.searched_from = from;
            self.searched = true;
        }
        self.found
    }
}

pub fn render_chat(messages: &[ChatMessage]) -> Result<Rendered, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::validation("`messages` must not be empty").param("messages"));
    }
    let mut prompt = String::new();
    let mut images = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.role.as_str();
        if !["system", "developer", "user", "assistant"].contains(&role) {
            return Err(ApiError::validation(format!(
                "messages[{i}].role `{role}` is not supported (system, developer, user or assistant)"
            ))
            .param(format!("messages[{i}].role")));
        }
        let field = format!("messages[{i}].content");
        match &m.content {
            None => {}
            Some(ChatContent::Text(t)) => {
                no_markers(t, &field)?;
                prompt.push_str(t);
            }
            Some(ChatContent::Parts(parts)) => {
                for p in parts {
                    match p {
                        ChatPart::Text { text } => {
                            no_markers(text, &field)?;
                            prompt.push_str(text);
                        }
                        ChatPart::ImageUrl { image_url } => {
                            if role != "user" {
                                return Err(ApiError::validation(format!(
                                    "messages[{i}]: only user messages may carry images"
                                ))
                                .param(field));
                            }
                            prompt.push_str(IMAGE);
                            images.push(image_url.url.clone());
                        }
                    }
                }
            }
        }
        if role == "assistant" {
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
        let (p, imgs) = extract_markdown_images(
            "a ![](data:image/png;base64,AAA)Output: ![x](data:image/png;base64,BBB) b ![no](link",
        );
        assert_eq!(p, "a <image>Output: <image> b ![no](link");
        assert_eq!(
            imgs,
            vec!["data:image/png;base64,AAA", "data:image/png;base64,BBB"]
        );
        let (p, imgs) = extract_markdown_images("![](https://x.example/cat.png)Output:");
        assert_eq!((p.as_str(), imgs.len()), ("<image>Output:", 1));
        assert_eq!(extract_markdown_images("plain ![ text").0, "plain ![ text");
    }

    fn ex(text: &str) -> Example {
        Example {
            image: "I".into(),
            text: Some(text.into()),
            question: Some(" Q? ".into()),
            answer: Some("A".into()),
        }
    }

    #[test]
    fn few_shot_uses_the_v1_eval_formats() {
        let q = Query {
            image: "J".into(),
            text: None,
            question: Some("What?".into()),
        };
        let r = render_few_shot(Some(Task::Caption), &[ex(" A cat. ")], &q).unwrap();
        assert_eq!(r.prompt, "<image>Output:A cat.<|endofchunk|><image>Output:");
        assert_eq!(r.images, vec!["I", "J"]);
        let r = render_few_shot(Some(Task::Vqa), &[ex("")], &q).unwrap();
        assert_eq!(
            r.prompt,
            "<image>Question:Q? Short Answer:A<|endofchunk|><image>Question:What? Short Answer:"
        );
        let free = Query {
            image: "J".into(),
            text: Some("An image of".into()),
            question: None,
        };
        let r = render_few_shot(None, &[ex("Stripes.")], &free).unwrap();
        assert_eq!(r.prompt, "<image>Stripes.<|endofchunk|><image>An image of");
    }

    #[test]
    fn few_shot_is_validated() {
        let q = Query {
            image: "J".into(),
            text: None,
            question: None,
        };
        let e = render_few_shot(Some(Task::Vqa), &[], &q).unwrap_err();
        assert!(e.message.contains("query.question"));
        let mut missing = ex("x");
        missing.answer = None;
        let e = render_few_shot(
            Some(Task::Vqa),
            &[missing],
            &Query {
                question: Some("q".into()),
                ..q.clone()
            },
        )
        .unwrap_err();
        assert!(e.message.contains("examples[0].answer"), "{}", e.message);
        let e = render_few_shot(Some(Task::Caption), &[ex("a <image> b")], &q).unwrap_err();
        assert!(e.message.contains("examples[0].text"));
    }

    #[test]
    fn chat_renders_interleaved() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(serde_json::json!([
            {"role": "system", "content": ""},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:a", "detail": null}}, {"type": "text", "text": "Output:"}]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "name": null, "content": [{"type": "image_url", "image_url": {"url": "data:b"}}, {"type": "text", "text": "Output:"}]}
        ]))
        .unwrap();
        let r = render_chat(&msgs).unwrap();
        assert_eq!(r.prompt, "<image>Output:A cat.<|endofchunk|><image>Output:");
        assert_eq!(r.images, vec!["data:a", "data:b"]);
    }

    #[test]
    fn chat_refuses_bad_roles_and_markers() {
        let bad: Vec<ChatMessage> =
            serde_json::from_value(serde_json::json!([{"role": "tool", "content": "x"}])).unwrap();
        assert!(render_chat(&bad).is_err());
        let bad: Vec<ChatMessage> =
            serde_json::from_value(serde_json::json!([{"role": "user", "content": "<image>hi"}]))
                .unwrap();
        assert!(render_chat(&bad)
            .unwrap_err()
            .message
            .contains("messages[0].content"));
        assert!(render_chat(&[]).is_err());
    }

    #[test]
    fn generate_forms() {
        let r = GenerateRequest {
            inputs: Some("x".into()),
            query: Some(Query {
                image: "i".into(),
                text: None,
                question: None,
            }),
            ..Default::default()
        };
        assert!(render_generate(&r).is_err());
        let r = GenerateRequest {
            inputs: Some("![](data:image/png;base64,QQ)Output:".into()),
            ..Default::default()
        };
        assert_eq!(
            render_generate(&r).unwrap(),
            Rendered {
                prompt: "<image>Output:".into(),
                images: vec!["data:image/png;base64,QQ".into()]
            }
        );
        let r = GenerateRequest {
            inputs: Some("![](data:image/png;base64,QQ)".into()),
            images: Some(vec!["QQ".into()]),
            ..Default::default()
        };
        assert!(render_generate(&r).is_err());
        assert!(render_generate(&GenerateRequest::default()).is_err());
    }
}

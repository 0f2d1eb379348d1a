//! Request bodies. Every optional field accepts `null`. Generation parameters refuse unknown keys
//! (a misspelt `max_tokens` silently ignored would surprise), but accept every field the TGI and
//! huggingface_hub clients send, refusing only values this server cannot honour.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use super::schemas as s;
use crate::error::ApiError;

/// Base64 image (PNG, JPEG, WebP, GIF first frame, BMP), a `data:image/...;base64,` URL, or an
/// http(s) URL when the server fetches image URLs (`server.allow_image_urls`; otherwise 422).
pub struct Image;

impl utoipa::PartialSchema for Image {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        s::image().into()
    }
}

impl ToSchema for Image {}

/// All fields optional and nullable; unknown fields are refused (422). The TGI fields this
/// server does not implement are accepted with their neutral values only (`best_of` 1,
/// `typical_p` 1, `watermark` false, `truncate` null, `frequency_penalty` 0, `grammar` null,
/// `adapter_id` null).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    /// Default `limits.default_max_new_tokens` (20), clamped to the context the prompt leaves.
    #[schema(minimum = 1, maximum = 512)]
    pub max_new_tokens: Option<u32>,
    #[schema(default = false)]
    pub do_sample: Option<bool>,
    /// Below 1e-5 decodes greedily.
    #[schema(exclusive_minimum = 0, maximum = 100)]
    pub temperature: Option<f64>,
    #[schema(minimum = 1)]
    pub top_k: Option<i64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(schema_with = s::repetition_penalty)]
    pub repetition_penalty: Option<f64>,
    #[schema(schema_with = s::stop_list)]
    pub stop: Option<Vec<String>>,
    #[schema(schema_with = s::stop_token_ids)]
    pub stop_token_ids: Option<Vec<u32>>,
    /// Sampling seed; a random one is drawn and reported when sampling without one.
    #[schema(schema_with = s::seed)]
    pub seed: Option<u64>,
    /// > 1: beam search (not with sampling, not on the stream route).
    #[schema(minimum = 1, maximum = 8, default = 1)]
    pub num_beams: Option<u32>,
    #[schema(default = 1.0)]
    pub length_penalty: Option<f64>,
    #[schema(default = false)]
    pub details: Option<bool>,
    /// Prompt tokens in `details.prefill` (logprob null).
    #[schema(default = false)]
    pub decoder_input_details: Option<bool>,
    /// Prepend the prompt (as rendered, with `<image>` markers) to `generated_text`.
    #[schema(default = false)]
    pub return_full_text: Option<bool>,
    // Sent by TGI clients; only their neutral values are accepted.
    #[schema(schema_with = s::one_or_null)]
    pub best_of: Option<u32>,
    /// Only 1 (off) is accepted.
    #[schema(minimum = 1, maximum = 1)]
    pub typical_p: Option<f64>,
    #[schema(schema_with = s::false_or_null)]
    pub watermark: Option<bool>,
    #[schema(schema_with = s::null_integer)]
    pub truncate: Option<u64>,
    /// Report this many most likely tokens per generated token (`details.top_tokens`, each
    /// stream event's `top_tokens`), best first. Log-probabilities are of the distribution the
    /// token was drawn from: after `repetition_penalty`, `temperature`, `top_k` and `top_p` (as
    /// TGI), i.e. the model's own distribution for plain greedy decoding; tokens those removed
    /// are not listed. Not with beam search (422). A token the content filter redacted has an
    /// empty list; an alternative whose own text the filter would change is redacted (id of
    /// `<unk>`, logprob 0, masked text).
    #[schema(minimum = 0, maximum = 20)]
    pub top_n_tokens: Option<u32>,
    #[schema(schema_with = s::zero_or_null)]
    pub frequency_penalty: Option<f64>,
    #[schema(schema_with = s::null_grammar)]
    pub grammar: Option<serde_json::Value>,
    #[schema(schema_with = s::null_adapter)]
    pub adapter_id: Option<String>,
}

impl Parameters {
    /// Refuses the TGI options this server does not implement, naming them.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        let refuse = |name: &str, why: &str| {
            Err(ApiError::validation(format!("`{name}` {why}")).param(name))
        };
        if self.best_of == Some(0) {
            return refuse("best_of", "must be >= 1");
        }
        if self.typical_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return refuse("typical_p", "must be > 0 and <= 1");
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return refuse(
                "best_of",
                "> 1 is not supported; use num_beams for beam search",
            );
        }
        if self.typical_p.is_some_and(|p| p < 1.0) {
            return refuse("typical_p", "is not supported");
        }
        if self.watermark == Some(true) {
            return refuse("watermark", "is not supported");
        }
        if self.truncate.is_some() {
            return refuse(
                "truncate",
                "is not supported: cutting a prompt would drop its images",
            );
        }
        if self.frequency_penalty.is_some_and(|p| p != 0.0) {
            return refuse(
                "frequency_penalty",
                "is not supported; use repetition_penalty",
            );
        }
        if self.grammar.as_ref().is_some_and(|g| !g.is_null()) {
            return refuse("grammar", "is not supported");
        }
        if self.adapter_id.is_some() {
            return refuse("adapter_id", "is not supported");
        }
        Ok(())
    }
}

/// The few-shot form's prompt template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Caption,
    Vqa,
}

/// One in-context example of the few-shot form.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Example {
    #[schema(value_type = Image)]
    pub image: String,
    /// Caption (task caption) or free-form text (task null).
    pub text: Option<String>,
    /// Task vqa.
    pub question: Option<String>,
    /// Task vqa.
    pub answer: Option<String>,
}

/// The few-shot form's query: the image to caption or ask about.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Query {
    #[schema(value_type = Image)]
    pub image: String,
    pub text: Option<String>,
    pub question: Option<String>,
}

/// `/generate`, `/generate_stream` and `POST /`: either `inputs` (+ `images`, or inline
/// `![](data:...)` markdown images, not both) or the few-shot form (`task`, `examples`, `query`),
/// rendered server-side. Few-shot rendering (the v1 eval's prompts; fields are trimmed and may
/// not contain `<image>` or `<|endofchunk|>`): caption `<image>Output:{text}<|endofchunk|>` ...
/// query `<image>Output:`; vqa `<image>Question:{question} Short Answer:{answer}<|endofchunk|>`
/// ... query `<image>Question:{question} Short Answer:`; free form `<image>{text}<|endofchunk|>`
/// ... `<image>{text}`. Unknown fields are refused (422).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub inputs: Option<String>,
    #[schema(schema_with = s::images)]
    pub images: Option<Vec<String>>,
    #[serde(default, deserialize_with = "object")]
    pub parameters: Option<Parameters>,
    /// `POST /`: true answers as `/generate_stream`; ignored by `/generate` and
    /// `/generate_stream` (the route decides).
    pub stream: Option<bool>,
    pub task: Option<Task>,
    pub examples: Option<Vec<Example>>,
    #[serde(default, deserialize_with = "object")]
    pub query: Option<Query>,
}

/// OpenAI's chat request. Every field of OpenAI's API is known; an unknown field is refused
/// (422, `param` names it), as OpenAI's API does. Fields this server cannot honour are accepted
/// with their neutral values only (null or the values listed) and refused otherwise, naming the
/// field.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// Ignored.
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    #[schema(minimum = 1, maximum = 512)]
    pub max_tokens: Option<u32>,
    /// Wins over `max_tokens`.
    #[schema(minimum = 1, maximum = 512)]
    pub max_completion_tokens: Option<u32>,
    /// 0 = greedy; set (> 0) turns sampling on.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// < 1 turns sampling on.
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Not OpenAI (as in vLLM).
    #[schema(minimum = 1)]
    pub top_k: Option<i64>,
    /// Not OpenAI (as in vLLM).
    #[schema(schema_with = s::repetition_penalty)]
    pub repetition_penalty: Option<f64>,
    /// Choice i samples with seed + i.
    #[schema(schema_with = s::seed)]
    pub seed: Option<u64>,
    #[schema(schema_with = s::stop_field)]
    pub stop: Option<StopField>,
    pub stream: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    #[schema(schema_with = s::zero_or_null)]
    pub frequency_penalty: Option<f64>,
    #[schema(schema_with = s::zero_or_null)]
    pub presence_penalty: Option<f64>,
    /// Independent generations of the same prompt (choices indexed 0..n-1; usage sums their
    /// completion tokens, the prompt counts once). With `seed`, choice i samples with `seed + i`;
    /// without, each draws its own seed. Greedy decoding (the default here) gives n identical
    /// choices, as OpenAI's API does with temperature 0. In a stream, the choices' chunks
    /// interleave, each with its `index`.
    #[schema(minimum = 1, maximum = 16)]
    pub n: Option<u32>,
    /// `choices[].logprobs.content`: one entry per text token (special tokens such as `</s>` are
    /// left out).
    pub logprobs: Option<bool>,
    /// Alternatives per token; needs `logprobs: true`. Log-probabilities of the distribution the
    /// token was drawn from (after temperature, top_k, top_p), as `parameters.top_n_tokens`.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u32>,
    /// Ignored.
    pub user: Option<String>,
    #[schema(schema_with = s::text_format_or_null)]
    pub response_format: Option<serde_json::Value>,
    #[schema(schema_with = s::empty_list_or_null)]
    pub tools: Option<serde_json::Value>,
    #[schema(schema_with = s::none_or_null)]
    pub tool_choice: Option<serde_json::Value>,
    /// Not OpenAI (as in vLLM): ids that end generation instead of `</s>` and `<|endofchunk|>`.
    #[schema(schema_with = s::stop_token_ids)]
    pub stop_token_ids: Option<Vec<u32>>,
    // OpenAI fields with only a neutral value here (checked in `routes::chat`).
    #[schema(schema_with = s::null_object)]
    pub audio: Option<serde_json::Value>,
    #[schema(schema_with = s::text_modality_or_null)]
    pub modalities: Option<serde_json::Value>,
    #[schema(schema_with = s::null_object)]
    pub prediction: Option<serde_json::Value>,
    /// Ignored (no tools).
    pub parallel_tool_calls: Option<bool>,
    #[schema(schema_with = s::empty_list_or_null)]
    pub functions: Option<serde_json::Value>,
    #[schema(schema_with = s::none_or_null)]
    pub function_call: Option<serde_json::Value>,
    #[schema(schema_with = s::empty_object_or_null)]
    pub logit_bias: Option<serde_json::Value>,
    #[schema(schema_with = s::service_tier)]
    pub service_tier: Option<String>,
    #[schema(schema_with = s::false_or_null)]
    pub store: Option<bool>,
    /// Ignored.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    #[schema(schema_with = s::null_reasoning_effort)]
    pub reasoning_effort: Option<String>,
    #[schema(schema_with = s::null_object)]
    pub web_search_options: Option<serde_json::Value>,
    #[schema(schema_with = s::verbosity)]
    pub verbosity: Option<String>,
    /// Ignored.
    pub prompt_cache_key: Option<String>,
    /// Ignored.
    pub safety_identifier: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// A last chunk (before `[DONE]`) with `choices: []` and `usage` summed over the choices;
    /// every other chunk has `usage: null`.
    pub include_usage: Option<bool>,
    /// OpenAI's stream padding; nothing is padded here, so it is ignored.
    pub include_obfuscation: Option<bool>,
}

/// OpenAI's legacy `POST /v1/completions`. `prompt` is one text in this server's prompt format,
/// images inline as TGI markdown `![](data:image/png;base64,...)` (each becomes `<image>` in
/// place), exactly like `/generate`'s `inputs`. Sampling, `n`, `seed`, `stop` and streaming as on
/// `/v1/chat/completions`. Unknown fields are refused (422).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// Ignored.
    pub model: Option<String>,
    #[schema(schema_with = s::prompt_field)]
    pub prompt: PromptField,
    #[schema(minimum = 1, maximum = 512)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(minimum = 1)]
    pub top_k: Option<i64>,
    #[schema(schema_with = s::repetition_penalty)]
    pub repetition_penalty: Option<f64>,
    #[schema(minimum = 1, maximum = 16)]
    pub n: Option<u32>,
    #[schema(schema_with = s::stop_field)]
    pub stop: Option<StopField>,
    #[schema(schema_with = s::stop_token_ids)]
    pub stop_token_ids: Option<Vec<u32>>,
    #[schema(schema_with = s::seed)]
    pub seed: Option<u64>,
    /// Legacy log-probabilities: this many alternatives per token (0..=5, OpenAI's range):
    /// `tokens`, `token_logprobs`, `top_logprobs` (`{text: logprob}`), `text_offset`.
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<u32>,
    /// Prepend the prompt to each choice's text; not with `logprobs` (prompt log-probabilities
    /// are not computed).
    pub echo: Option<bool>,
    pub stream: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    #[schema(schema_with = s::suffix)]
    pub suffix: Option<String>,
    /// Only equal to `n`.
    #[schema(minimum = 1, maximum = 16)]
    pub best_of: Option<u32>,
    #[schema(schema_with = s::zero_or_null)]
    pub frequency_penalty: Option<f64>,
    #[schema(schema_with = s::zero_or_null)]
    pub presence_penalty: Option<f64>,
    #[schema(schema_with = s::empty_object_or_null)]
    pub logit_bias: Option<serde_json::Value>,
    /// Ignored.
    pub user: Option<String>,
}

/// A completion prompt: one text, or a list holding exactly one text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    One(String),
    Many(Vec<String>),
}

/// TGI's `POST /tokenize`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub inputs: String,
    /// Generation parameters (TGI clients send them): checked like `/generate`'s, then ignored.
    #[serde(default, deserialize_with = "object")]
    pub parameters: Option<Parameters>,
    /// Whether `<s>` is added at the start (as generation does).
    #[schema(default = true)]
    pub add_special_tokens: Option<bool>,
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

/// A chat message. Only user messages may carry images (422 otherwise).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    #[schema(schema_with = s::chat_role)]
    pub role: String,
    pub content: Option<ChatContent>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ChatContent {
    Text(String),
    Parts(Vec<ChatPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "TaggedPart")]
pub enum ChatPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

/// A content part as sent. serde's tagged enums also take a variant's index as its tag
/// (`"type": 0` would be a text part); the tag here must be the name.
#[derive(Deserialize)]
struct TaggedPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    image_url: Option<ImageUrl>,
}

impl TryFrom<TaggedPart> for ChatPart {
    type Error = String;

    fn try_from(part: TaggedPart) -> Result<Self, String> {
        match (part.kind.as_str(), part.text, part.image_url) {
            ("text", Some(text), _) => Ok(ChatPart::Text { text }),
            ("image_url", _, Some(image_url)) => Ok(ChatPart::ImageUrl { image_url }),
            ("text", None, _) => Err("a text part needs `text`".into()),
            ("image_url", _, None) => Err("an image_url part needs `image_url`".into()),
            (other, _, _) => Err(format!(
                "unknown content part type `{}`, expected `text` or `image_url`",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageUrl {
    /// `data:image/...;base64,...` (or http(s):// when the server fetches image URLs).
    pub url: String,
    /// OpenAI's `low`/`high`/`auto`; every image is 224x224 for this model, so it is ignored.
    pub detail: Option<Detail>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    Low,
    High,
    Auto,
}

/// An optional nested object, refusing every other JSON shape. serde's derived structs also
/// accept an array of their fields in order (`"stream_options": [null]`), which the API does not
/// document and no client means.
fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => {
            T::deserialize(v).map(Some).map_err(D::Error::custom)
        }
        Some(other) => Err(D::Error::custom(format!(
            "invalid type: expected an object, got {}",
            match other {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                _ => "a boolean",
            }
        ))),
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    #[test]
    fn content_part_tags_are_names_not_indices() {
        let part = |json: &str| serde_json::from_str::<ChatPart>(json);
        assert!(matches!(
            part(r#"{"type": "text", "text": "a"}"#),
            Ok(ChatPart::Text { .. })
        ));
        assert!(matches!(
            part(r#"{"type": "image_url", "image_url": {"url": "x"}}"#),
            Ok(ChatPart::ImageUrl { .. })
        ));
        for bad in [
            r#"{"type": 0, "text": "a"}"#,
            r#"{"type": 1, "image_url": {"url": "x"}}"#,
            r#"{"type": "text"}"#,
            r#"{"type": "image_url", "text": "a"}"#,
            r#"{"type": "audio", "text": "a"}"#,
            r#"{"text": "a"}"#,
        ] {
            assert!(part(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nested_objects_refuse_the_array_form() {
        let ok: ChatStreamProbe =
            serde_json::from_str(r#"{"stream_options": {"include_usage": true}}"#).unwrap();
        assert_eq!(ok.stream_options.unwrap().include_usage, Some(true));
        let none: ChatStreamProbe = serde_json::from_str(r#"{"stream_options": null}"#).unwrap();
        assert!(none.stream_options.is_none());
        let absent: ChatStreamProbe = serde_json::from_str("{}").unwrap();
        assert!(absent.stream_options.is_none());
        let e = serde_json::from_str::<ChatStreamProbe>(r#"{"stream_options": [null, null]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected an object, got an array"), "{e}");
        assert!(
            serde_json::from_str::<GenerateRequest>(r#"{"inputs": "x", "parameters": [5]}"#)
                .is_err()
        );
    }

    #[derive(Debug, Deserialize)]
    struct ChatStreamProbe {
        #[serde(default, deserialize_with = "object")]
        stream_options: Option<StreamOptions>,
    }
}

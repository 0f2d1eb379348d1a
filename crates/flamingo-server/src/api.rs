//! Request bodies. Every optional field accepts `null`. Generation parameters refuse unknown keys
//! (a misspelt `max_tokens` silently ignored would surprise), but accept every field the TGI and
//! huggingface_hub clients send, refusing only values this server cannot honour.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::error::ApiError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    pub max_new_tokens: Option<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<Vec<String>>,
    /// Token ids that end generation, replacing the default (`</s>` and `<|endofchunk|>`);
    /// the v1 eval ends at `<|endofchunk|>` only.
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<u64>,
    pub num_beams: Option<u32>,
    pub length_penalty: Option<f64>,
    pub details: Option<bool>,
    pub decoder_input_details: Option<bool>,
    /// Prepend the prompt (as rendered, with `<image>` markers) to `generated_text`.
    pub return_full_text: Option<bool>,
    // Sent by TGI clients; only their neutral values are accepted.
    pub best_of: Option<u32>,
    pub typical_p: Option<f64>,
    pub watermark: Option<bool>,
    pub truncate: Option<u64>,
    /// Report this many most likely tokens per generated token (0..=`MAX_TOP_N_TOKENS`).
    pub top_n_tokens: Option<u32>,
    pub frequency_penalty: Option<f64>,
    pub grammar: Option<serde_json::Value>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Caption,
    Vqa,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub image: String,
    pub text: Option<String>,
    pub question: Option<String>,
    pub answer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub image: String,
    pub text: Option<String>,
    pub question: Option<String>,
}

/// `/generate` and `/generate_stream`: TGI's `inputs` form or the few-shot form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub inputs: Option<String>,
    pub images: Option<Vec<String>>,
    #[serde(default, deserialize_with = "object")]
    pub parameters: Option<Parameters>,
    /// Sent by some TGI clients; the route decides whether the answer streams.
    pub stream: Option<bool>,
    pub task: Option<Task>,
    pub examples: Option<Vec<Example>>,
    #[serde(default, deserialize_with = "object")]
    pub query: Option<Query>,
}

/// OpenAI's chat request: every field of OpenAI's API is known (the ones this server cannot
/// honour are accepted with their neutral values only, see `routes::chat`); an unknown field is
/// refused (422 naming it), as OpenAI's API does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Not OpenAI; vLLM accepts it too.
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<StopField>,
    pub stream: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub n: Option<u32>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub user: Option<String>,
    pub response_format: Option<serde_json::Value>,
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
    /// vLLM's: ids that end generation instead of the defaults.
    pub stop_token_ids: Option<Vec<u32>>,
    // OpenAI fields with only a neutral value here (checked in `routes::chat`).
    pub audio: Option<serde_json::Value>,
    pub modalities: Option<serde_json::Value>,
    pub prediction: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    pub functions: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
    pub logit_bias: Option<serde_json::Value>,
    pub service_tier: Option<String>,
    pub store: Option<bool>,
    pub metadata: Option<serde_json::Value>,
    pub reasoning_effort: Option<String>,
    pub web_search_options: Option<serde_json::Value>,
    pub verbosity: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub safety_identifier: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// OpenAI's stream padding; nothing is padded here, so it is ignored.
    pub include_obfuscation: Option<bool>,
}

/// OpenAI's legacy `POST /v1/completions`. `prompt` is one text (images inline as TGI markdown
/// `![](data:...)`); unknown fields are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptField,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub n: Option<u32>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<u64>,
    /// Legacy log-probabilities: this many alternatives per token (0..=5, OpenAI's range).
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    pub stream: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    pub suffix: Option<String>,
    pub best_of: Option<u32>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<serde_json::Value>,
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub inputs: String,
    /// Sent by TGI clients (`parameters` of a generate request): checked for shape, then ignored.
    #[serde(default, deserialize_with = "object")]
    pub parameters: Option<Parameters>,
    /// Whether `<s>` is added at the start (default true, as generation does).
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

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<ChatContent>,
    pub name: Option<String>,
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
#[serde(deny_unknown_fields)]
pub struct ImageUrl {
    pub url: String,
    /// OpenAI's `low`/`high`/`auto`; every image is 224x224 for this model, so it is ignored.
    pub detail: Option<Detail>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

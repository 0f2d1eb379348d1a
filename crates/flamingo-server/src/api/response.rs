//! Response bodies. Every JSON a route sends is one of these types: the routes fill them, serde
//! writes them, and `openapi.yaml` is generated from them (`api::openapi`). Generated content in
//! them (texts, tokens, log-probabilities) comes only from the output gate (`output.rs`).

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::FilterSection;
use crate::config::{DTypeName, MediaRuleName, QuantizationName};
use crate::error::ErrorKind;
use crate::output::{TokenOut, TopToken};

/// `{"error": "...", "error_type": "..."}` (TGI's shape, every route outside `/v1`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: String,
    pub error_type: ErrorKind,
}

/// OpenAI's error shape (`/v1/*` routes).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = OpenAIError)]
pub struct OpenAIErrorBody {
    pub error: OpenAIErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpenAIErrorDetail {
    pub message: String,
    /// The same values as `Error.error_type`.
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    /// The offending field, when known.
    pub param: Option<String>,
    pub code: Option<String>,
}

/// A prompt token in `details.prefill`: the client's own input, so no log-probability (it
/// would cost a second forward pass).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PrefillToken {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
    pub special: bool,
}

/// How a generation ended, and (outside streams) its tokens.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Details {
    /// TGI's names: `length`, `eos_token`, `stop_sequence`, `content_filter`.
    #[schema(value_type = String, example = "eos_token")]
    pub finish_reason: &'static str,
    pub generated_tokens: usize,
    pub seed: Option<u64>,
    /// Not in stream events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenOut>>,
    /// The prompt's tokens with `decoder_input_details` (empty otherwise); not in stream events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill: Option<Vec<PrefillToken>>,
    /// With `parameters.top_n_tokens` > 0: one list per entry of `tokens`; not in stream events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_tokens: Option<Vec<Vec<TopToken>>>,
}

/// `POST /generate`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GenerateResponse {
    /// Filtered; empty when the filter blocked the output.
    pub generated_text: String,
    /// The output content filter changed or stopped the text.
    pub filtered: bool,
    /// With `parameters.details`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

/// One `data:` event of `POST /generate_stream`. `generated_text`, `details` and `filtered` are
/// set on the final event only.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamEvent {
    pub index: usize,
    /// Null only on a final event that releases no token.
    pub token: Option<TokenOut>,
    pub generated_text: Option<String>,
    pub details: Option<Details>,
    /// On the final event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filtered: Option<bool>,
    /// With `parameters.top_n_tokens` > 0: this event's token's alternatives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_tokens: Option<Vec<TopToken>>,
}

/// One token of `POST /tokenize`: its id and the byte range of `inputs` it covers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenSpan {
    pub id: u32,
    pub text: String,
    pub start: usize,
    pub stop: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    /// Usage over all choices: the prompt counts once (as OpenAI counts it), completions add up.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// A token's log-probability in chat's `logprobs.content`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatLogprobs {
    /// One entry per text token (special tokens such as `</s>` are left out).
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AssistantMessage {
    #[schema(value_type = String, example = "assistant")]
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    /// `stop`, `length` or `content_filter`.
    #[schema(value_type = String, example = "stop")]
    pub finish_reason: &'static str,
    pub logprobs: Option<ChatLogprobs>,
}

/// What a chat stream chunk adds to its choice: the role first, then content.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "assistant")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    /// Set on the choice's last chunk: `stop`, `length` or `content_filter`.
    #[schema(value_type = Option<String>)]
    pub finish_reason: Option<&'static str>,
    pub logprobs: Option<ChatLogprobs>,
}

/// Legacy completions' `logprobs`: per text token its text, log-probability, its `k` best
/// alternatives (`{text: logprob}`) and where its text starts in the choice's text.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    /// `stop`, `length` or `content_filter`; null on a stream's chunks before the last.
    #[schema(value_type = Option<String>)]
    pub finish_reason: Option<&'static str>,
    pub logprobs: Option<LegacyLogprobs>,
}

/// The envelope both OpenAI routes send, whole or as stream chunks.
pub trait Envelope: Serialize + Send + 'static {
    type Choice: Serialize + Send + 'static;
    fn new(frame: &Frame, choices: Vec<Self::Choice>) -> Self;
    /// Chunks carry `usage` only when asked (`stream_options.include_usage`): null on every
    /// chunk but the last.
    fn set_usage(&mut self, usage: Option<Usage>);
    fn set_filtered(&mut self, filtered: bool);
}

/// What identifies a response of either OpenAI route.
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
}

/// Declares an OpenAI envelope type: the same fields around each route's choice type.
macro_rules! envelope {
    ($(#[$doc:meta])* $name:ident, $choice:ty, $object:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, ToSchema)]
        pub struct $name {
            #[schema(example = "cmpl-0123")]
            pub id: String,
            #[schema(value_type = String, example = $object)]
            pub object: &'static str,
            pub created: u64,
            pub model: String,
            pub system_fingerprint: Option<String>,
            pub choices: Vec<$choice>,
            /// In streams only with `stream_options.include_usage`: null on every chunk but the
            /// last, which has `choices: []`.
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(value_type = Option<Usage>)]
            pub usage: Option<Option<Usage>>,
            /// The output content filter changed or stopped the text (in streams: on each
            /// choice's last chunk and the usage chunk).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub filtered: Option<bool>,
        }

        impl Envelope for $name {
            type Choice = $choice;
            fn new(frame: &Frame, choices: Vec<$choice>) -> Self {
                Self {
                    id: frame.id.clone(),
                    object: frame.object,
                    created: frame.created,
                    model: frame.model.clone(),
                    system_fingerprint: None,
                    choices,
                    usage: None,
                    filtered: None,
                }
            }
            fn set_usage(&mut self, usage: Option<Usage>) {
                self.usage = Some(usage);
            }
            fn set_filtered(&mut self, filtered: bool) {
                self.filtered = Some(filtered);
            }
        }
    };
}

envelope!(
    /// `POST /v1/chat/completions` without `stream`.
    ChatCompletion, ChatChoice, "chat.completion"
);
envelope!(
    /// One event of `POST /v1/chat/completions` with `stream: true`.
    ChatCompletionChunk, ChatChunkChoice, "chat.completion.chunk"
);
envelope!(
    /// `POST /v1/completions`, whole or (with `stream: true`) one event of the stream.
    Completion, CompletionChoice, "text_completion"
);

/// `{"status": "ok"}` (`/health`) or `{"status": "ready"}` (`/ready`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Status {
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    #[schema(example = "openflamingo-9b")]
    pub id: String,
    #[schema(value_type = String, example = "model")]
    pub object: &'static str,
    pub created: u64,
    #[schema(value_type = String, example = "flamingo-serve")]
    pub owned_by: &'static str,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// The model's shape, reported by `/info`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Architecture {
    pub vision_width: usize,
    pub vision_layers: usize,
    pub image_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub cross_attn_every_n_layers: usize,
}

/// What `/info` knows once the model is loaded.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub quantization: QuantizationName,
    pub media_rule: MediaRuleName,
    pub max_positions: usize,
    pub vocab_size: usize,
    pub architecture: Architecture,
}

/// The configured limits, as `/info` reports them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InfoLimits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_queue: usize,
    pub max_input_tokens: usize,
    pub max_new_tokens: usize,
    pub default_max_new_tokens: usize,
    pub max_images: usize,
    pub max_image_bytes: usize,
    pub max_image_side: u32,
    pub max_image_pixels: u64,
    pub max_beams: usize,
    pub max_stop_sequences: usize,
    pub max_body_bytes: usize,
    pub request_timeout_s: u64,
}

/// `GET /info`: the model, limits, version and queue state, then TGI's fields under TGI's names
/// for its clients (`text-generation`, `huggingface_hub`, routers and dashboards).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Info {
    pub model_id: String,
    pub dtype: DTypeName,
    #[schema(example = "cpu")]
    pub device: String,
    // The model's own fields are there once it is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_rule: Option<MediaRuleName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_positions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    pub version: String,
    pub ready: bool,
    /// `ready`, or why not.
    pub status: String,
    pub uptime_s: u64,
    pub limits: InfoLimits,
    pub filter: FilterSection,
    /// API keys are required on the API routes.
    pub auth: bool,
    /// `FLAMINGO_TEST_*` hooks are set: only in a binary built with the `test-hooks` feature, for
    /// the test suites (never in production).
    pub test_hooks: bool,
    /// Requests waiting for a batch slot.
    pub queued: usize,
    /// Sequences in the running batch.
    pub active_sequences: usize,
    /// Model steps so far.
    pub steps: u64,
    /// TGI's fields from here on.
    pub model_sha: Option<String>,
    /// `= dtype`.
    pub model_dtype: DTypeName,
    /// `= device`.
    pub model_device_type: String,
    #[schema(value_type = String, example = "image-text-to-text")]
    pub model_pipeline_tag: &'static str,
    /// `= limits.max_queue`.
    pub max_concurrent_requests: usize,
    #[schema(minimum = 1, maximum = 1)]
    pub max_best_of: u32,
    pub max_stop_sequences: usize,
    pub max_input_tokens: usize,
    /// TGI 1.x's name of `max_input_tokens`.
    pub max_input_length: usize,
    /// The model's context (prompt + generated).
    pub max_total_tokens: usize,
    pub max_batch_total_tokens: usize,
    pub max_batch_size: usize,
    #[schema(minimum = 1, maximum = 1)]
    pub max_client_batch_size: u32,
    pub max_top_n_tokens: u32,
    pub waiting_served_ratio: f32,
    pub max_waiting_tokens: usize,
    /// Preprocessing slots.
    pub validation_workers: usize,
    #[schema(value_type = String, example = "flamingo-serve")]
    pub router: &'static str,
    pub sha: Option<String>,
    pub docker_label: Option<String>,
}

//! Field schemas a Rust type cannot say by itself: fields accepted with their neutral values only
//! (TGI's and OpenAI's options this server does not implement), and string lists whose items are
//! bounded, used through `#[schema(schema_with = ...)]` on the request types (the bounds are the
//! default limits, `config/default.toml`); and the rules between `GenerateRequest`'s fields.

use serde_json::{json, Value};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::config::Limits;
use crate::validation::{MAX_STOP_BYTES, MAX_STOP_TOKEN_IDS};

fn nullable(ty: Type) -> SchemaType {
    SchemaType::Array(vec![ty, Type::Null])
}

/// A nullable field that accepts only `values` (and null).
fn only(ty: Type, values: &[Value], description: &str) -> Schema {
    let mut values = values.to_vec();
    values.push(Value::Null);
    ObjectBuilder::new()
        .schema_type(nullable(ty))
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

pub fn zero_or_null() -> Schema {
    only(Type::Number, &[json!(0)], "0 or null only")
}

pub fn one_or_null() -> Schema {
    only(Type::Integer, &[json!(1)], "1 or null only")
}

pub fn false_or_null() -> Schema {
    only(Type::Boolean, &[json!(false)], "false or null only")
}

pub fn null_integer() -> Schema {
    only(
        Type::Integer,
        &[],
        "null only (cutting a prompt would drop its images)",
    )
}

pub fn null_grammar() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .enum_values(Some([Value::Null]))
        .description(Some("null only (no constrained decoding)"))
        .into()
}

pub fn null_adapter() -> Schema {
    only(Type::String, &[], "null only (no adapters)")
}

pub fn null_reasoning_effort() -> Schema {
    only(Type::String, &[], "null only (not a reasoning model)")
}

pub fn null_object() -> Schema {
    only(Type::Object, &[], "null only")
}

pub fn none_or_null() -> Schema {
    only(Type::String, &[json!("none")], "\"none\" or null only")
}

pub fn empty_list_or_null() -> Schema {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .max_items(Some(0))
        .description(Some(
            "not supported: null or empty only (tools need a model trained for them)",
        ))
        .into()
}

pub fn empty_object_or_null() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Object))
        .max_properties(Some(0))
        .description(Some("{} or null only"))
        .into()
}

pub fn text_format_or_null() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Object))
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["text"])),
        )
        .required("type")
        .description(Some("{\"type\": \"text\"} or null only"))
        .into()
}

pub fn text_modality_or_null() -> Schema {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["text"])),
        )
        .min_items(Some(1))
        .max_items(Some(1))
        .description(Some("[\"text\"] or null only"))
        .into()
}

pub fn service_tier() -> Schema {
    only(Type::String, &[json!("auto"), json!("default")], "")
}

pub fn verbosity() -> Schema {
    only(
        Type::String,
        &[json!("medium")],
        "\"medium\" (the only level this model has) or null",
    )
}

pub fn suffix() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .max_length(Some(0))
        .description(Some("refused unless empty (no fill-in-the-middle)"))
        .into()
}

fn stop_sequence() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_STOP_BYTES))
}

fn stop_sequences() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(stop_sequence())
        .max_items(Some(Limits::default().max_stop_sequences))
}

/// TGI's `stop`: a list.
pub fn stop_list() -> Schema {
    stop_sequences()
        .schema_type(nullable(Type::Array))
        .description(Some(
            "cut from the output, not included; matched on the filtered text",
        ))
        .into()
}

/// OpenAI's `stop`: one sequence or a list.
pub fn stop_field() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(stop_sequence())
        .item(stop_sequences())
        .description(Some(
            "cut from the output, not included; matched on the filtered text",
        ))
        .into()
}

/// The ids that end generation instead of the defaults.
pub fn stop_token_ids() -> Schema {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u32::MAX))
                .description(Some("below the model's vocab_size (/info)")),
        )
        .min_items(Some(1))
        .max_items(Some(MAX_STOP_TOKEN_IDS))
        .description(Some(
            "token ids that end generation, replacing the default (</s> and <|endofchunk|>); \
             the v1 eval uses [<|endofchunk|>]",
        ))
        .into()
}

/// A completion prompt: one text, or a list of exactly one.
pub fn prompt_field() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .min_items(Some(1))
                .max_items(Some(1)),
        )
        .into()
}

pub fn chat_role() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["system", "developer", "user", "assistant"]))
        .into()
}

/// `repetition_penalty`: a normal (not subnormal) positive 32-bit float.
pub fn repetition_penalty() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Number))
        .minimum(Some(f64::from(f32::MIN_POSITIVE)))
        .maximum(Some(f64::from(f32::MAX)))
        .description(Some(
            "a normal (not subnormal) positive 32-bit float; > 1 discourages repeating tokens",
        ))
        .into()
}

/// The `Image` component.
pub fn image() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .description(Some(
            "Base64 image (PNG, JPEG, WebP, GIF first frame, BMP), a data:image/...;base64, URL, \
             or an http(s) URL when the server fetches image URLs (server.allow_image_urls; \
             otherwise 422)",
        ))
        .into()
}

/// An `Option<Vec<Image>>` field bounded to `limits.max_images` (16 by default).
pub fn images() -> RefOr<Schema> {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Image")))
        .max_items(Some(Limits::default().max_images))
        .into()
}

/// `GenerateRequest`'s two forms, as validation has them (422 otherwise): `inputs` or `query`,
/// never both; `images` only with `inputs`; `examples` and `task` only with `query`. `fields` is
/// the derived schema of its fields. A field sent as null counts as absent, hence the types.
pub fn generate_request(fields: RefOr<Schema>) -> RefOr<Schema> {
    let has = |field: &str, ty: Type| {
        ObjectBuilder::new()
            .property(field, ObjectBuilder::new().schema_type(ty))
            .required(field)
    };
    let present =
        |field: &str, ty: &str| json!({"required": [field], "properties": {field: {"type": ty}}});
    let query = present("query", "object");
    // utoipa has no `not`; an extension holding one key serialises as that keyword.
    let mixed = json!({"anyOf": [
        {"allOf": [query, present("inputs", "string")]},
        {"allOf": [query, present("images", "array")]},
        {"allOf": [present("examples", "array"), {"not": query}]},
        {"allOf": [present("task", "string"), {"not": query}]},
    ]});
    AllOfBuilder::new()
        .item(fields)
        .item(
            AnyOfBuilder::new()
                .item(has("inputs", Type::String))
                .item(has("query", Type::Object)),
        )
        .item(ObjectBuilder::new().extensions(Some(Extensions::from_iter([("not", mixed)]))))
        .into()
}

/// `ChatMessage`: only user messages carry images (422 otherwise). `fields` is the derived schema
/// of its fields.
pub fn chat_message(fields: RefOr<Schema>) -> RefOr<Schema> {
    let text_part = ObjectBuilder::new().property(
        "type",
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["text"])),
    );
    let without_images = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(nullable(Type::String)))
        .item(ArrayBuilder::new().items(text_part));
    AllOfBuilder::new()
        .item(fields)
        .item(
            AnyOfBuilder::new()
                .item(
                    ObjectBuilder::new().property(
                        "role",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(["user"])),
                    ),
                )
                .item(ObjectBuilder::new().property("content", without_images)),
        )
        .into()
}

/// A server-sent event whose `data` is one JSON `payload`, described as OpenAPI 3.1 describes an
/// event stream's items: an object with the event's fields, the payload's own schema under
/// `contentSchema`.
fn sse_event(payload: &str, ends_with_done: bool) -> RefOr<Schema> {
    let payload = json!({"$ref": format!("#/components/schemas/{payload}")});
    let json_body = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .extensions(Some(Extensions::from_iter([("contentSchema", payload)])))
        .description(Some(
            "one JSON body; on an `error` event the route's error body instead",
        ));
    // anyOf: `contentMediaType` only annotates, so to a plain validator `[DONE]` is both.
    let data: RefOr<Schema> = if ends_with_done {
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["[DONE]"]))
                    .description(Some("the last event")),
            )
            .item(json_body)
            .into()
    } else {
        json_body.into()
    };
    let event = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "absent on data events; `error` for a failure after the stream started",
        ));
    ObjectBuilder::new()
        .property("event", event)
        .property("data", data)
        .required("data")
        .into()
}

/// Declares the event type of a stream whose events carry `$payload` (a schema of its own,
/// registered with it) and, on the OpenAI routes, end with `data: [DONE]`.
macro_rules! sse_event_type {
    ($(#[$doc:meta])* $name:ident, $payload:ty, ends_with_done: $done:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                sse_event(&<$payload as ToSchema>::name(), $done)
            }
        }

        impl ToSchema for $name {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.push((<$payload>::name().into_owned(), <$payload>::schema()));
                <$payload>::schemas(schemas);
            }
        }
    };
}

sse_event_type!(
    /// An event of `/generate_stream` (and of `POST /` with `stream: true`).
    StreamEventSse,
    super::StreamEvent,
    ends_with_done: false
);
sse_event_type!(
    /// An event of `/v1/chat/completions` with `stream: true`.
    ChatCompletionChunkSse,
    super::ChatCompletionChunk,
    ends_with_done: true
);
sse_event_type!(
    /// An event of `/v1/completions` with `stream: true`.
    CompletionSse,
    super::Completion,
    ends_with_done: true
);

/// A sampling seed: any unsigned 64-bit integer.
pub fn seed() -> Schema {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Integer))
        .minimum(Some(0))
        .maximum(Some(u64::MAX))
        .description(Some(
            "sampling seed; when sampling without one a random seed is drawn (and reported in \
             details.seed); on the OpenAI routes choice i samples with seed + i",
        ))
        .into()
}

//! `POST /v1/chat/completions` (OpenAI shape) and `GET /v1/models`.

mod common;

use common::{data_url, image_b64, timed, Server, MODEL_ID};
use serde_json::{json, Value};

fn interleaved_messages() -> Value {
    json!([
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(&image_b64("gradient"))}}, {"type": "text", "text": "Output:"}]},
        {"role": "assistant", "content": "A gradient."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(&image_b64("checker"))}}, {"type": "text", "text": "Output:"}]}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_non_stream() {
    timed(60, async {
        let s = Server::start().await;
        let r = s.post("/v1/chat/completions", &json!({"model": MODEL_ID, "messages": interleaved_messages(), "max_tokens": 10})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = &r.json;
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap_or("").starts_with("chatcmpl-"), "{v}");
        assert_eq!(v["model"], MODEL_ID);
        assert!(v["created"].is_u64());
        let choice = &v["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        let content = choice["message"]["content"].as_str().expect("content");
        assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap_or("")), "{v}");
        let u = &v["usage"];
        let (p, c, t) = (u["prompt_tokens"].as_u64().unwrap(), u["completion_tokens"].as_u64().unwrap(), u["total_tokens"].as_u64().unwrap());
        assert!(p > 0 && (1..=10).contains(&c) && t == p + c, "usage {u}");
        if choice["finish_reason"] == "length" {
            assert_eq!(c, 10);
        }
        assert!(r.header("server-timing").is_some());

        // Rendering: the same prompt through /generate gives the same greedy text.
        let text = s
            .generate_text(&json!({"inputs": "<image>Output:A gradient.<|endofchunk|><image>Output:",
                                   "images": [image_b64("gradient"), image_b64("checker")], "parameters": {"max_new_tokens": 10}}))
            .await;
        assert_eq!(content, text);

        // temperature 0 is greedy; system text is prepended; max_completion_tokens wins.
        let r = s
            .post("/v1/chat/completions", &json!({"messages": [{"role": "system", "content": "Describe. "}, {"role": "user", "content": "A photo of"}],
                                                   "temperature": 0, "max_completion_tokens": 6, "max_tokens": 50}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let text = s.generate_text(&json!({"inputs": "Describe. A photo of", "parameters": {"max_new_tokens": 6}})).await;
        assert_eq!(r.json["choices"][0]["message"]["content"], text.as_str());
        assert!(r.json["usage"]["completion_tokens"].as_u64().unwrap() <= 6);

        // Seeded sampling is reproducible.
        let body = json!({"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.8, "seed": 11, "max_tokens": 12});
        let a = s.post("/v1/chat/completions", &body).await;
        let b = s.post("/v1/chat/completions", &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json["choices"][0]["message"]["content"], b.json["choices"][0]["message"]["content"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_sends_chunks_then_done() {
    timed(60, async {
        let s = Server::start().await;
        let body = json!({"messages": interleaved_messages(), "max_tokens": 12, "stream": true});
        let mut sse = s.stream("/v1/chat/completions", &body).await;
        assert_eq!(sse.status, 200, "stream status");
        let events = sse.all().await;
        assert!(events.len() >= 3, "{events:?}");
        assert_eq!(
            events.last().unwrap().data,
            "[DONE]",
            "the stream ends with [DONE]"
        );
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| e.json())
            .collect();
        let id = chunks[0]["id"].as_str().expect("id").to_string();
        assert!(id.starts_with("chatcmpl-"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let mut content = String::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c["object"], "chat.completion.chunk", "{c}");
            assert_eq!(c["id"], id.as_str(), "one id for all chunks");
            assert_eq!(c["model"], MODEL_ID);
            let choice = &c["choices"][0];
            if i + 1 < chunks.len() {
                assert!(
                    choice["finish_reason"].is_null(),
                    "only the last chunk finishes: {c}"
                );
            }
            if let Some(t) = choice["delta"]["content"].as_str() {
                content.push_str(t);
            }
        }
        let last = chunks.last().unwrap();
        assert!(
            ["stop", "length"]
                .contains(&last["choices"][0]["finish_reason"].as_str().unwrap_or("")),
            "{last}"
        );
        assert_eq!(last["filtered"], false);

        let mut non_stream = body.clone();
        non_stream["stream"] = json!(false);
        let r = s.post("/v1/chat/completions", &non_stream).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.json["choices"][0]["message"]["content"],
            content.as_str(),
            "stream and non-stream agree"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_accepts_null_optional_fields() {
    timed(60, async {
        let s = Server::start().await;
        let body = json!({"model": null, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": null}, {"role": "user", "content": "there"}],
            "max_tokens": 8, "max_completion_tokens": null, "temperature": null, "top_p": null, "seed": null, "stop": null,
            "stream": null, "n": null, "user": null, "frequency_penalty": null, "presence_penalty": null});
        let r = s.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.json["choices"][0]["message"]["content"].is_string());
        // stop as a single string and as a list.
        for stop in [json!("zzz"), json!(["zzz", "yyy"])] {
            let r = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stop": stop})).await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
    })
    .await
}

/// OpenAI clients usually leave `max_tokens` out (or null): the completion should then be bounded
/// by what is left of the context, not fail because a fixed default does not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_max_tokens_fits_the_context() {
    timed(60, async {
        let s = Server::start().await;
        for body in [
            json!({"messages": [{"role": "user", "content": "Hi"}]}),
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": null, "temperature": null}),
        ] {
            let r = s.post("/v1/chat/completions", &body).await;
            assert_eq!(r.status, 200, "chat without max_tokens on a 128-token model: {}", r.text);
            let u = &r.json["usage"];
            assert!(u["total_tokens"].as_u64().unwrap() <= 128, "{u}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_errors_use_the_openai_shape() {
    timed(60, async {
        let s = Server::start().await;
        let http_image = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}, {"type": "text", "text": "Output:"}]}], "max_tokens": 4});
        let r = s.post("/v1/chat/completions", &http_image).await;
        r.assert_openai_error(422, "validation");
        assert!(r.json["error"].as_object().unwrap().contains_key("param"));
        assert!(r.json["error"].as_object().unwrap().contains_key("code"));

        let r = s.post_with(s.client.post(s.url("/v1/chat/completions")).header("content-type", "application/json").body("{\"messages\": [")).await;
        r.assert_openai_error(400, "invalid_request");
        let r = s.post("/v1/chat/completions", &json!({"messages": []})).await;
        r.assert_openai_error(422, "validation");
        let r = s.post("/v1/chat/completions", &json!({"messages": [{"role": "tool", "content": "x"}], "max_tokens": 4})).await;
        r.assert_openai_error(422, "validation");
        let r = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "n": 17})).await;
        r.assert_openai_error(422, "validation");
        assert_eq!(r.json["error"]["param"], "n");
        let r = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "top_p": 3})).await;
        r.assert_openai_error(422, "validation");
        // Streaming requests fail before the stream starts, as JSON.
        let mut streamed = http_image.clone();
        streamed["stream"] = json!(true);
        s.post("/v1/chat/completions", &streamed).await.assert_openai_error(422, "validation");
        // Still serving.
        let r = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_served_model() {
    timed(60, async {
        let s = Server::start().await;
        let r = s.get("/v1/models").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json["object"], "list");
        let data = r.json["data"].as_array().expect("data");
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], MODEL_ID);
        assert_eq!(data[0]["object"], "model");
        assert_eq!(data[0]["owned_by"], "flamingo-serve");
        let s2 = Server::start_with(&[("FLAMINGO_MODEL_ID", "my-flamingo")]).await;
        assert_eq!(
            s2.get("/v1/models").await.json["data"][0]["id"],
            "my-flamingo"
        );
        assert_eq!(s2.get("/info").await.json["model_id"], "my-flamingo");
    })
    .await
}

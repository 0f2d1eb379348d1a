//! The output content filter through the real HTTP path, driven by the scripted-output test hook
//! (`FLAMINGO_TEST_SCRIPTED_OUTPUT`: the model generates exactly the token ids of that text, so
//! every path out of the server — text, ids, stop sequences — is exercised with real ids).

mod common;

use common::{timed, Server, SseEvent};
use serde_json::{json, Value};

const SCRIPT: &str = "FLAMINGO_TEST_SCRIPTED_OUTPUT";
const PROFANE: &str = "a fucking great bird ";

fn req() -> Value {
    json!({"inputs": "<image>Output:", "images": [common::image_b64("gradient")], "parameters": {"max_new_tokens": 60, "details": true}})
}

fn chat_req(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "Describe:"}], "max_tokens": 60, "stream": stream})
}

/// Token texts of a TGI stream (final event's included) and the final event.
fn tgi_stream_text(events: &[SseEvent]) -> (String, Value) {
    assert!(
        events.iter().all(|e| e.event.is_none()),
        "no error events: {events:?}"
    );
    let joined = events
        .iter()
        .map(|e| e.json()["token"]["text"].as_str().unwrap_or("").to_string())
        .collect();
    (joined, events.last().expect("events").json())
}

/// Content of a chat stream, the last chunk before `[DONE]`.
fn chat_stream_text(events: &[SseEvent]) -> (String, Value) {
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(SseEvent::json)
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, chunks.last().unwrap().clone())
}

/// What the public tokenizer makes of the ids a response carries.
fn decode_ids(ids: impl IntoIterator<Item = u64>) -> String {
    let tok = flamingo_model::tokenizer::FlamingoTokenizer::from_file(std::path::Path::new(
        &format!("{}/llama/tokenizer.json", common::FIXTURE),
    ))
    .unwrap();
    let ids: Vec<u32> = ids.into_iter().map(|i| i as u32).collect();
    tok.decode(&ids, true).unwrap()
}

fn ids_of(tokens: &Value) -> Vec<u64> {
    tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.to_ascii_lowercase().contains("fuck"),
        "{what} leaks the word: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn censor_masks_the_word_everywhere() {
    timed(60, async {
        let s = Server::start_with(&[(SCRIPT, PROFANE)]).await;
        let r = s.post("/generate", &req()).await;
        let text = r.generated_text().to_string();
        assert_clean("/generate", &text);
        assert!(
            text.starts_with("a f") && text.contains("great bird"),
            "only the word is masked: {text:?}"
        );
        assert_eq!(
            text.len(),
            PROFANE.len(),
            "masking keeps the length: {text:?}"
        );
        assert_eq!(r.json["filtered"], true);
        assert_eq!(r.json["details"]["finish_reason"], "eos_token");
        let tokens: String = r.json["details"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["text"].as_str().unwrap().to_string())
            .collect();
        assert_clean("/generate details.tokens", &tokens);
        assert_clean(
            "/generate details.tokens[].id decoded",
            &decode_ids(ids_of(&r.json["details"]["tokens"])),
        );
        // A stop sequence equal to the hidden word must not fire (it would confirm the word).
        let mut probe = req();
        probe["parameters"]["stop"] = json!(["fucking"]);
        let p = s.post("/generate", &probe).await;
        assert_eq!(
            p.json["details"]["finish_reason"], "eos_token",
            "{}",
            p.text
        );

        let mut sse = s.stream("/generate_stream", &req()).await;
        assert_eq!(sse.status, 200, "stream status");
        let events = sse.all().await;
        assert_clean("the raw event stream", &sse.raw_text());
        for e in &events {
            assert_clean("an event", &e.data);
        }
        let (joined, last) = tgi_stream_text(&events);
        assert_clean("the joined stream", &joined);
        let stream_ids = events
            .iter()
            .filter_map(|e| e.json()["token"]["id"].as_u64());
        assert_clean("the stream's token ids decoded", &decode_ids(stream_ids));
        assert_eq!(joined, text, "stream and /generate mask the same way");
        assert_eq!(last["generated_text"], text.as_str());
        assert_eq!(last["filtered"], true);

        let r = s.post("/v1/chat/completions", &chat_req(false)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["choices"][0]["message"]["content"], text.as_str());
        assert_eq!(r.json["filtered"], true);
        let mut sse = s.stream("/v1/chat/completions", &chat_req(true)).await;
        assert_eq!(sse.status, 200, "stream status");
        let events = sse.all().await;
        assert_clean("the raw chat stream", &sse.raw_text());
        let (content, last) = chat_stream_text(&events);
        assert_eq!(content, text);
        assert_eq!(last["filtered"], true);
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn block_mode_withholds_the_output() {
    timed(60, async {
        let s = Server::start_with(&[(SCRIPT, PROFANE), ("FLAMINGO_FILTER_MODE", "block")]).await;
        let r = s.post("/generate", &req()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_clean("/generate", &r.text);
        assert_clean(
            "blocked details.tokens[].id decoded",
            &decode_ids(ids_of(&r.json["details"]["tokens"])),
        );
        assert_eq!(r.json["details"]["finish_reason"], "content_filter");
        assert_eq!(r.json["filtered"], true);
        assert!(
            !r.generated_text().contains("great bird"),
            "nothing after the block: {}",
            r.text
        );

        let mut sse = s.stream("/generate_stream", &req()).await;
        assert_eq!(sse.status, 200, "stream status");
        let events = sse.all().await;
        assert_clean("the raw event stream", &sse.raw_text());
        let (joined, last) = tgi_stream_text(&events);
        assert_clean("the joined stream", &joined);
        assert_eq!(last["details"]["finish_reason"], "content_filter");
        assert_eq!(last["filtered"], true);
        assert_clean(
            "generated_text",
            last["generated_text"].as_str().unwrap_or(""),
        );

        let r = s.post("/v1/chat/completions", &chat_req(false)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_clean("chat", &r.text);
        assert_eq!(r.json["choices"][0]["finish_reason"], "content_filter");
        let mut sse = s.stream("/v1/chat/completions", &chat_req(true)).await;
        assert_eq!(sse.status, 200, "stream status");
        let events = sse.all().await;
        assert_clean("the raw chat stream", &sse.raw_text());
        let (_, last) = chat_stream_text(&events);
        assert_eq!(last["choices"][0]["finish_reason"], "content_filter");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn off_mode_lets_the_word_through() {
    timed(60, async {
        let s = Server::start_with(&[(SCRIPT, PROFANE), ("FLAMINGO_FILTER_MODE", "off")]).await;
        let r = s.post("/generate", &req()).await;
        assert_eq!(r.generated_text(), PROFANE);
        assert_eq!(r.json["filtered"], false);
        assert_eq!(r.json["details"]["finish_reason"], "eos_token");
        let events = s.stream("/generate_stream", &req()).await.all().await;
        let (joined, last) = tgi_stream_text(&events);
        assert_eq!(joined, PROFANE);
        assert_eq!(last["filtered"], false);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn benign_phrase_passes_the_default_filter() {
    timed(60, async {
        let benign = "a great tit bird ";
        let s = Server::start_with(&[(SCRIPT, benign)]).await;
        let r = s.post("/generate", &req()).await;
        assert_eq!(r.generated_text(), benign);
        assert_eq!(r.json["filtered"], false);
        let events = s.stream("/generate_stream", &req()).await.all().await;
        let (joined, last) = tgi_stream_text(&events);
        assert_eq!(joined, benign);
        assert_eq!(last["filtered"], false);
        let r = s.post("/v1/chat/completions", &chat_req(false)).await;
        assert_eq!(r.json["choices"][0]["message"]["content"], benign);
    })
    .await
}

//! `POST /generate_stream`: TGI server-sent events.

mod common;

use common::{image_b64, timed, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_events_then_a_final_event_that_adds_up() {
    timed(60, async {
        let s = Server::start().await;
        let body = json!({"inputs": "<image>Output:", "images": [image_b64("rings")], "parameters": {"max_new_tokens": 24}});
        let mut sse = s.stream("/generate_stream", &body).await;
        assert_eq!(sse.status, 200, "stream status");
        let events = sse.all().await;
        assert!(events.len() >= 3, "several token events and a final one: {events:?}");
        assert!(events.iter().all(|e| e.event.is_none()), "no error events: {events:?}");
        let (last, tokens) = events.split_last().unwrap();
        let mut joined = String::new();
        for (i, e) in tokens.iter().enumerate() {
            let v = e.json();
            assert_eq!(v["index"], i as u64 + 1, "{v}");
            assert!(v["generated_text"].is_null(), "{v}");
            assert!(v["details"].is_null(), "{v}");
            let t = &v["token"];
            assert!(t["id"].is_u64() && t["logprob"].is_number() && t["special"].is_boolean(), "{v}");
            joined.push_str(t["text"].as_str().expect("token text"));
        }
        let f = last.json();
        assert_eq!(f["index"], tokens.len() as u64 + 1);
        let text = f["generated_text"].as_str().expect("final generated_text");
        joined.push_str(f["token"]["text"].as_str().expect("final token text"));
        assert_eq!(joined, text, "token texts + final token text == generated_text");
        // The final event is either the last generated token itself (TGI) or an extra event
        // without a token id: count the events that carry a generated token.
        let generated = tokens.len() as u64 + u64::from(f["token"]["id"].is_u64());
        let d = &f["details"];
        assert!(["length", "eos_token"].contains(&d["finish_reason"].as_str().unwrap_or("")), "{f}");
        assert_eq!(d["generated_tokens"], generated);
        if d["finish_reason"] == "length" {
            assert_eq!(generated, 24);
        }
        assert!(d["seed"].is_null());
        assert_eq!(f["filtered"], false);
        assert!(sse.next().await.is_none(), "nothing after the final event");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_stream_equals_generate() {
    timed(60, async {
        let s = Server::start().await;
        for body in [
            json!({"inputs": "<image>Output:A gradient.<|endofchunk|><image>Output:", "images": [image_b64("gradient"), image_b64("checker")], "parameters": {"max_new_tokens": 30, "details": true}}),
            json!({"inputs": "Hello there", "parameters": {"max_new_tokens": 17, "details": true}}),
            json!({"task": "caption", "query": {"image": image_b64("stripes")}, "parameters": {"max_new_tokens": 9, "repetition_penalty": 1.3, "details": true}}),
        ] {
            let r = s.post("/generate", &body).await;
            let text = r.generated_text().to_string();
            let events = s.stream("/generate_stream", &body).await.all().await;
            let f = events.last().unwrap().json();
            assert_eq!(f["generated_text"], text.as_str(), "stream and /generate agree for {body}");
            assert_eq!(f["details"]["finish_reason"], r.json["details"]["finish_reason"]);
            assert_eq!(f["details"]["generated_tokens"], r.json["details"]["generated_tokens"]);
        }
        // Seeded sampling agrees too.
        let body = json!({"inputs": "A", "parameters": {"max_new_tokens": 12, "do_sample": true, "top_p": 0.9, "seed": 7}});
        let text = s.generate_text(&body).await;
        let f = s.stream("/generate_stream", &body).await.all().await.pop().unwrap().json();
        assert_eq!(f["generated_text"], text.as_str());
        assert_eq!(f["details"]["seed"], 7);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refuses_beam_search_and_bad_input_before_streaming() {
    timed(60, async {
        let s = Server::start().await;
        let r = s
            .post(
                "/generate_stream",
                &json!({"inputs": "Hi", "parameters": {"num_beams": 2}}),
            )
            .await;
        r.assert_error(422, "validation");
        let r = s
            .post(
                "/generate_stream",
                &json!({"inputs": "<image>", "images": []}),
            )
            .await;
        r.assert_error(422, "validation");
        let r = s
            .post(
                "/generate_stream",
                &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 0}}),
            )
            .await;
        r.assert_error(422, "validation");
        // Still serving.
        let events = s
            .stream(
                "/generate_stream",
                &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}),
            )
            .await
            .all()
            .await;
        assert!(events.last().unwrap().json()["generated_text"].is_string());
    })
    .await
}

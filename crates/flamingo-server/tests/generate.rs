//! `POST /generate`: TGI response shape, the input forms, decoding modes, stop sequences, headers.

mod common;

use common::{data_url, image_b64, timed, Server};
use serde_json::{json, Value};

const FINISH_REASONS: [&str; 4] = ["length", "eos_token", "stop_sequence", "content_filter"];

fn assert_token(t: &Value) {
    assert!(t["id"].is_u64(), "token id in {t}");
    assert!(t["text"].is_string(), "token text in {t}");
    assert!(t["logprob"].is_number(), "token logprob in {t}");
    assert!(t["special"].is_boolean(), "token special in {t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tgi_response_shape_and_headers() {
    timed(60, async {
        let s = Server::start().await;
        let body = json!({"inputs": "<image>Output:", "images": [image_b64("gradient")],
                          "parameters": {"max_new_tokens": 12, "details": true, "decoder_input_details": true}});
        let r = s.post("/generate", &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.header("content-type").unwrap_or("").starts_with("application/json"));
        assert!(r.json["generated_text"].is_string());
        assert_eq!(r.json["filtered"], false);
        let d = &r.json["details"];
        let reason = d["finish_reason"].as_str().expect("finish_reason");
        assert!(["length", "eos_token"].contains(&reason), "finish_reason {reason}");
        let n = d["generated_tokens"].as_u64().expect("generated_tokens");
        assert!((1..=12).contains(&n), "generated_tokens {n}");
        if reason == "length" {
            assert_eq!(n, 12);
        }
        assert!(d["seed"].is_null(), "greedy reports no seed: {}", r.text);
        let tokens = d["tokens"].as_array().expect("details.tokens");
        assert_eq!(tokens.len() as u64, n);
        tokens.iter().for_each(assert_token);
        let prefill = d["prefill"].as_array().expect("details.prefill");
        assert!(!prefill.is_empty(), "decoder_input_details gives the prompt tokens");
        assert!(prefill.iter().any(|t| t["text"] == "<image>"), "prefill {prefill:?}");

        // Timing and request id headers.
        let timing = r.header("server-timing").expect("server-timing header");
        for part in ["prepare;dur=", "queue;dur=", "total;dur="] {
            assert!(timing.contains(part), "server-timing `{timing}` lacks {part}");
        }
        assert!(!r.header("x-request-id").unwrap_or("").is_empty(), "x-request-id header");

        // Without details=true: no per-token list (`details` itself is optional then).
        let r = s.post("/generate", &json!({"inputs": "A photo of", "parameters": {"max_new_tokens": 5}})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.json["generated_text"].is_string());
        assert!(r.json["details"]["tokens"].is_null(), "tokens only with details=true: {}", r.text);
        if !r.json["details"].is_null() {
            assert!(FINISH_REASONS.contains(&r.json["details"]["finish_reason"].as_str().unwrap_or("")));
        }

        // An incoming request id is echoed; each answer gets a distinct generated one otherwise.
        let r = s
            .post_with(s.client.post(s.url("/generate")).header("x-request-id", "test-req-42").json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}})))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), Some("test-req-42"));
        let a = s.get("/health").await;
        let b = s.get("/health").await;
        assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
        assert!(a.header("x-request-id").is_some());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_markdown_images_equal_the_images_field() {
    timed(60, async {
        let s = Server::start().await;
        let p = json!({"max_new_tokens": 10});
        let explicit = s
            .generate_text(&json!({"inputs": "<image>Output:A gradient.<|endofchunk|><image>Output:",
                                   "images": [image_b64("gradient"), image_b64("checker")], "parameters": p}))
            .await;
        let inline = format!("![]({})Output:A gradient.<|endofchunk|>![an image]({})Output:", data_url(&image_b64("gradient")), data_url(&image_b64("checker")));
        let md = s.generate_text(&json!({"inputs": inline, "parameters": p})).await;
        assert_eq!(md, explicit);
        // Images are used: swapping them changes the prompt (and, for a random model, the output
        // is still well-formed).
        let r = s.post("/generate", &json!({"inputs": format!("![]({})Output:", data_url(&image_b64("stripes"))), "parameters": p})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        // Inline and `images` together are refused.
        let r = s.post("/generate", &json!({"inputs": format!("![]({})Output:", data_url(&image_b64("stripes"))), "images": [image_b64("rings")]})).await;
        r.assert_error(422, "validation");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn few_shot_forms_render_the_eval_prompts() {
    timed(60, async {
        let s = Server::start().await;
        let (g, c, st) = (image_b64("gradient"), image_b64("checker"), image_b64("stripes"));
        let p = json!({"max_new_tokens": 8});

        // Caption, two examples.
        let few = json!({"task": "caption",
            "examples": [{"image": g, "text": "A gradient."}, {"image": c, "text": "A checkerboard."}],
            "query": {"image": st}, "parameters": {"max_new_tokens": 8, "details": true, "decoder_input_details": true}});
        let r = s.post("/generate", &few).await;
        let caption = r.generated_text().to_string();
        let prefill: Vec<&str> = r.json["details"]["prefill"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
        assert_eq!(prefill.iter().filter(|t| **t == "<image>").count(), 3, "prefill {prefill:?}");
        assert_eq!(prefill.iter().filter(|t| **t == "<|endofchunk|>").count(), 2, "prefill {prefill:?}");
        let explicit = s
            .generate_text(&json!({"inputs": "<image>Output:A gradient.<|endofchunk|><image>Output:A checkerboard.<|endofchunk|><image>Output:",
                                   "images": [g, c, st], "parameters": p}))
            .await;
        assert_eq!(caption, explicit, "caption few-shot renders as the eval prompt");

        // VQA.
        let vqa = s
            .generate_text(&json!({"task": "vqa",
                "examples": [{"image": g, "question": "What is it?", "answer": "a gradient"}],
                "query": {"image": c, "question": "What pattern?"}, "parameters": p}))
            .await;
        let explicit = s
            .generate_text(&json!({"inputs": "<image>Question:What is it? Short Answer:a gradient<|endofchunk|><image>Question:What pattern? Short Answer:",
                                   "images": [g, c], "parameters": p}))
            .await;
        assert_eq!(vqa, explicit, "vqa few-shot renders as the eval prompt");

        // Free form (no task).
        let free = s
            .generate_text(&json!({"examples": [{"image": g, "text": "An image of a gradient."}],
                                   "query": {"image": st, "text": "An image of"}, "parameters": p}))
            .await;
        let explicit = s
            .generate_text(&json!({"inputs": "<image>An image of a gradient.<|endofchunk|><image>An image of",
                                   "images": [g, st], "parameters": p}))
            .await;
        assert_eq!(free, explicit, "free-form few-shot renders as interleaved text");

        // Zero-shot query only.
        let r = s.post("/generate", &json!({"task": "caption", "query": {"image": st}, "parameters": p})).await;
        assert_eq!(r.status, 200, "{}", r.text);

        // Mixing forms and missing fields are 422.
        s.post("/generate", &json!({"inputs": "x", "query": {"image": st}})).await.assert_error(422, "validation");
        s.post("/generate", &json!({"task": "vqa", "query": {"image": st}})).await.assert_error(422, "validation");
        s.post("/generate", &json!({"task": "caption", "examples": [{"image": g}], "query": {"image": st}}))
            .await
            .assert_error(422, "validation");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beam_search_and_seeded_sampling() {
    timed(60, async {
        let s = Server::start().await;
        let beam = json!({"inputs": "<image>Output:", "images": [image_b64("checker")],
                          "parameters": {"max_new_tokens": 10, "num_beams": 3, "details": true}});
        let a = s.post("/generate", &beam).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let d = &a.json["details"];
        assert!(["length", "eos_token"].contains(&d["finish_reason"].as_str().unwrap_or("")), "{}", a.text);
        let n = d["generated_tokens"].as_u64().unwrap();
        assert!((1..=10).contains(&n));
        assert_eq!(d["tokens"].as_array().map(Vec::len), Some(n as usize));
        let b = s.post("/generate", &beam).await;
        assert_eq!(a.generated_text(), b.generated_text(), "beam search is deterministic");

        // Sampling: the same seed gives the same text and is reported back.
        let sample = |seed: u64| json!({"inputs": "A photo of", "parameters": {"max_new_tokens": 16, "do_sample": true, "temperature": 0.9, "top_k": 50, "seed": seed, "details": true}});
        let x = s.post("/generate", &sample(1234)).await;
        let y = s.post("/generate", &sample(1234)).await;
        assert_eq!(x.generated_text(), y.generated_text());
        assert_eq!(x.json["details"]["seed"], 1234);
        assert_eq!(x.json["details"]["tokens"], y.json["details"]["tokens"]);
        let mut texts = Vec::new();
        for seed in [1, 2, 3, 4] {
            texts.push(s.post("/generate", &sample(seed)).await.generated_text().to_string());
        }
        assert!(texts.iter().any(|t| *t != texts[0]), "different seeds give different samples: {texts:?}");
        // Without a seed the server picks one and reports it.
        let r = s.post("/generate", &json!({"inputs": "A", "parameters": {"do_sample": true, "max_new_tokens": 3, "details": true}})).await;
        assert_eq!(r.status, 200);
        assert!(r.json["details"]["seed"].is_u64(), "{}", r.text);
    })
    .await
}

/// A stop string that occurs in `text`: two ASCII alphanumerics if there are any (past the
/// start), else two characters from the middle.
fn pick_stop(text: &str) -> String {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    assert!(
        chars.len() >= 4,
        "greedy output too short to pick a stop sequence from: {text:?}"
    );
    for w in chars.windows(2).skip(2) {
        if w.iter().all(|(_, c)| c.is_ascii_alphanumeric()) {
            return text[w[0].0..w[1].0 + w[1].1.len_utf8()].to_string();
        }
    }
    let mid = chars.len() / 2;
    text[chars[mid].0..chars[mid + 1].0 + chars[mid + 1].1.len_utf8()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_cut_the_text() {
    timed(60, async {
        let s = Server::start().await;
        let base = json!({"inputs": "<image>Output:", "images": [image_b64("stripes")], "parameters": {"max_new_tokens": 40}});
        let r = s.post("/generate", &base).await;
        let full = r.generated_text().to_string();
        assert_eq!(r.json["filtered"], false);
        let stop = pick_stop(&full);
        let cut = &full[..full.find(&stop).unwrap()];

        let mut with_stop = base.clone();
        with_stop["parameters"]["stop"] = json!([stop, "never-in-the-output-zzz"]);
        with_stop["parameters"]["details"] = json!(true);
        let r = s.post("/generate", &with_stop).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["details"]["finish_reason"], "stop_sequence", "stop {stop:?} in {full:?}: {}", r.text);
        assert_eq!(r.generated_text(), cut, "text is cut before the stop sequence {stop:?} (full: {full:?})");
        assert!(!r.generated_text().contains(&stop));

        // The same on the stream route: nothing of the stop sequence is sent.
        let mut sse = s.stream("/generate_stream", &with_stop).await;
        assert_eq!(sse.status, 200, "stream status");
        let events = sse.all().await;
        let last = events.last().expect("events").json();
        assert_eq!(last["details"]["finish_reason"], "stop_sequence");
        assert_eq!(last["generated_text"], cut);
        let joined: String = events.iter().map(|e| e.json()["token"]["text"].as_str().unwrap_or("").to_string()).collect();
        assert_eq!(joined, cut);

        // A stop sequence that never occurs changes nothing.
        let mut never = base.clone();
        never["parameters"]["stop"] = json!(["never-in-the-output-zzz"]);
        assert_eq!(s.generate_text(&never).await, full);
    })
    .await
}

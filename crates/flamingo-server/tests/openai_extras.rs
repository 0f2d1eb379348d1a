//! OpenAI surface through the real binary: chat `logprobs`/`top_logprobs`, `n` choices with
//! distinct seeds (plain and interleaved in a stream), `stream_options.include_usage`, refusals
//! naming the field, `/v1/completions` (legacy shape, inline markdown images, echo, logprobs),
//! TGI's `/tokenize` and the `/info` fields TGI clients read.

mod common;

use common::{data_url, image_b64, timed, Server, SseEvent, MODEL_ID};
use serde_json::{json, Value};

const FILTER_OFF: (&str, &str) = ("FLAMINGO_FILTER_MODE", "off");

fn user_image() -> Value {
    json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(&image_b64("gradient")), "detail": "low"}},
        {"type": "text", "text": "Output:"}]}])
}

fn chunks(events: &[SseEvent]) -> Vec<Value> {
    assert!(
        events.iter().all(|e| e.event.is_none()),
        "no error events: {events:?}"
    );
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(SseEvent::json)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_and_n_choices() {
    timed(120, async {
        let s = Server::start_with(&[FILTER_OFF]).await;
        // logprobs + top_logprobs agree with /generate's tokens and top_tokens.
        let r = s
            .post("/v1/chat/completions", &json!({"model": MODEL_ID, "messages": user_image(), "max_tokens": 6,
                "logprobs": true, "top_logprobs": 3}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let choice = &r.json["choices"][0];
        let content = choice["logprobs"]["content"].as_array().expect("logprobs.content");
        assert!(!content.is_empty());
        let joined: String = content.iter().map(|c| c["token"].as_str().unwrap()).collect();
        assert_eq!(joined, choice["message"]["content"].as_str().unwrap(), "tokens spell the content");
        for c in content {
            let top = c["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3, "{c}");
            assert!((top[0]["logprob"].as_f64().unwrap() - c["logprob"].as_f64().unwrap()).abs() < 1e-5, "greedy: {c}");
            assert!(top.iter().all(|t| t["bytes"].is_array() && t["token"].is_string()));
        }
        let g = s
            .post("/generate", &json!({"inputs": "<image>Output:", "images": [image_b64("gradient")],
                "parameters": {"max_new_tokens": 6, "details": true, "top_n_tokens": 3}}))
            .await;
        let first = &g.json["details"]["top_tokens"][0];
        let top0 = &content[0]["top_logprobs"];
        for i in 0..3 {
            assert_eq!(first[i]["logprob"], top0[i]["logprob"], "same alternatives as /generate");
        }

        // Refusals name the field.
        for (body, field) in [
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
            (json!({"n": 0}), "n"),
            (json!({"n": 17}), "n"),
            (json!({"audio": {"voice": "alloy", "format": "wav"}}), "audio"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"prediction": {"type": "content", "content": "x"}}), "prediction"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "auto"}), "function_call"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"service_tier": "flex"}), "service_tier"),
            (json!({"store": true}), "store"),
            (json!({"reasoning_effort": "low"}), "reasoning_effort"),
            (json!({"web_search_options": {}}), "web_search_options"),
            (json!({"not_a_field": 1}), "not_a_field"),
        ] {
            let mut b = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
            b.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            let r = s.post("/v1/chat/completions", &b).await;
            assert!(r.status.is_client_error(), "{b}: {}", r.text);
            assert!(r.text.contains(field), "{b}: {}", r.text);
            assert_eq!(r.json["error"]["param"], field, "{b}: {}", r.text);
        }
        // Neutral values pass.
        let r = s
            .post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                "audio": null, "modalities": ["text"], "parallel_tool_calls": true, "functions": [], "function_call": "none",
                "logit_bias": {}, "service_tier": "auto", "store": false, "metadata": {"k": "v"}, "n": 1,
                "stream_options": null, "user": "u", "top_logprobs": 0}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // image_url.detail is an enum.
        let bad = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(&image_b64("gradient")), "detail": {"x": 1}}}]}]);
        let r = s.post("/v1/chat/completions", &json!({"messages": bad})).await;
        assert_eq!(r.status, 422, "{}", r.text);

        // n choices: seeded sampling uses seed, seed + 1, ...: choice i equals a single request
        // with seed + i.
        let body = |n: u32, seed: u64| json!({"messages": [{"role": "user", "content": "A photo of"}], "max_tokens": 8,
            "temperature": 1.0, "seed": seed, "n": n});
        let r = s.post("/v1/chat/completions", &body(3, 40)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let choices = r.json["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        let mut completion = 0;
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            let one = s.post("/v1/chat/completions", &body(1, 40 + i as u64)).await;
            assert_eq!(c["message"]["content"], one.json["choices"][0]["message"]["content"], "choice {i}");
            completion += one.json["usage"]["completion_tokens"].as_u64().unwrap();
        }
        let u = &r.json["usage"];
        assert_eq!(u["completion_tokens"].as_u64().unwrap(), completion, "usage sums the choices: {u}");
        assert_eq!(u["total_tokens"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() + completion);
        // Greedy n > 1: identical choices.
        let r = s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "A photo of"}], "max_tokens": 5, "n": 2})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["choices"][0]["message"], r.json["choices"][1]["message"]);

        // Streaming n = 2 with usage: chunks carry their index, each choice's text matches the
        // non-stream answer, usage is the last chunk before [DONE] and the others carry null.
        let mut st = s
            .stream("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "A photo of"}], "max_tokens": 8,
                "temperature": 1.0, "seed": 40, "n": 2, "stream": true, "stream_options": {"include_usage": true},
                "logprobs": true, "top_logprobs": 2}))
            .await;
        let cs = chunks(&st.all().await);
        let usage = cs.last().unwrap();
        assert_eq!(usage["choices"], json!([]), "{usage}");
        let two = s.post("/v1/chat/completions", &body(2, 40)).await;
        assert_eq!(usage["usage"], two.json["usage"], "stream usage equals the plain answer's");
        assert!(cs[..cs.len() - 1].iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()));
        for (i, choice) in choices.iter().enumerate().take(2) {
            let text: String = cs[..cs.len() - 1]
                .iter()
                .filter(|c| c["choices"][0]["index"] == i)
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            assert_eq!(text, choice["message"]["content"].as_str().unwrap(), "choice {i} streamed");
            let finals = cs.iter().filter(|c| c["choices"][0]["index"] == i && c["choices"][0]["finish_reason"].is_string()).count();
            assert_eq!(finals, 1);
            let lps: usize = cs
                .iter()
                .filter(|c| c["choices"][0]["index"] == i)
                .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
                .map(|a| {
                    assert!(a.iter().all(|t| t["top_logprobs"].as_array().unwrap().len() <= 2));
                    a.len()
                })
                .sum();
            assert!(lps > 0, "logprobs streamed for choice {i}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_completions_tokenize_and_info() {
    timed(120, async {
        let s = Server::start_with(&[FILTER_OFF]).await;
        let img = image_b64("gradient");
        let prompt = format!("![](data:image/png;base64,{img})Output:");
        let r = s.post("/v1/completions", &json!({"model": MODEL_ID, "prompt": prompt, "max_tokens": 6})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["object"], "text_completion");
        assert!(r.json["id"].as_str().unwrap().starts_with("cmpl-"));
        let text = r.json["choices"][0]["text"].as_str().unwrap().to_string();
        let g = s.generate_text(&json!({"inputs": "<image>Output:", "images": [img], "parameters": {"max_new_tokens": 6}})).await;
        assert_eq!(text, g, "same prompt, same greedy text as /generate");
        assert!(r.json["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

        // logprobs: k alternatives per token, legacy shape; offsets count into the text.
        let r = s.post("/v1/completions", &json!({"prompt": "A photo of", "max_tokens": 5, "logprobs": 2})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let c = &r.json["choices"][0];
        let lp = &c["logprobs"];
        let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(tokens.concat(), c["text"].as_str().unwrap());
        let n = tokens.len();
        assert!(n > 0);
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), n);
        assert!(lp["top_logprobs"].as_array().unwrap().iter().all(|m| { let k = m.as_object().unwrap().len(); (1..=2).contains(&k) }));
        let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
        assert_eq!(offsets[0], 0);
        // echo prepends the prompt; n with a seed; stop.
        let r = s.post("/v1/completions", &json!({"prompt": "A photo of", "max_tokens": 3, "echo": true})).await;
        assert!(r.json["choices"][0]["text"].as_str().unwrap().starts_with("A photo of"), "{}", r.text);
        let r = s.post("/v1/completions", &json!({"prompt": "A photo of", "max_tokens": 6, "n": 2, "temperature": 0.9, "seed": 3})).await;
        assert_eq!(r.json["choices"].as_array().unwrap().len(), 2, "{}", r.text);
        let one = s.post("/v1/completions", &json!({"prompt": "A photo of", "max_tokens": 6, "temperature": 0.9, "seed": 4})).await;
        assert_eq!(r.json["choices"][1]["text"], one.json["choices"][0]["text"], "choice 1 samples with seed + 1");
        // Refusals.
        for (body, field) in [
            (json!({"suffix": "end"}), "suffix"),
            (json!({"logprobs": 6}), "logprobs"),
            (json!({"logprobs": 1, "echo": true}), "echo"),
            (json!({"best_of": 3}), "best_of"),
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"presence_penalty": 0.5}), "presence_penalty"),
            (json!({"bogus": true}), "bogus"),
        ] {
            let mut b = json!({"prompt": "Hi", "max_tokens": 2});
            b.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
            let r = s.post("/v1/completions", &b).await;
            assert!(r.status.is_client_error(), "{b}: {}", r.text);
            assert_eq!(r.json["error"]["param"], field, "{b}: {}", r.text);
        }
        // Stream with usage.
        let mut st = s
            .stream("/v1/completions", &json!({"prompt": "A photo of", "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}}))
            .await;
        let cs = chunks(&st.all().await);
        let usage = cs.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
        let streamed: String = cs.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
        let plain = s.post("/v1/completions", &json!({"prompt": "A photo of", "max_tokens": 5})).await;
        assert_eq!(streamed, plain.json["choices"][0]["text"].as_str().unwrap());
        assert!(cs.iter().all(|c| c["object"] == "text_completion"));

        // /tokenize: TGI's shape; the texts are the input's byte ranges.
        let input = "<image>Output: a cat<|endofchunk|>";
        let r = s.post("/tokenize", &json!({"inputs": input})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let toks = r.json.as_array().unwrap();
        assert_eq!(toks[0]["id"], 1, "<s> first");
        for t in toks {
            let (a, b) = (t["start"].as_u64().unwrap() as usize, t["stop"].as_u64().unwrap() as usize);
            assert_eq!(t["text"], input[a..b], "{t}");
        }
        assert!(toks.iter().any(|t| t["text"] == "<image>"));
        let r = s.post("/tokenize", &json!({"inputs": "a cat", "add_special_tokens": false})).await;
        assert_ne!(r.json[0]["id"], 1);
        s.post("/tokenize", &json!({"input": "x"})).await.assert_error(422, "validation");

        // /info: TGI's field names.
        let info = s.get("/info").await.json;
        for f in ["model_id", "model_dtype", "model_device_type", "max_input_tokens", "max_total_tokens",
                  "max_best_of", "max_stop_sequences", "max_concurrent_requests", "max_batch_total_tokens",
                  "version", "validation_workers", "router", "max_client_batch_size"] {
            assert!(!info[f].is_null(), "/info lacks {f}: {info}");
        }
        assert_eq!(info["model_id"], MODEL_ID);
        assert_eq!(info["max_total_tokens"], info["max_positions"], "the model's context");
    })
    .await;
}

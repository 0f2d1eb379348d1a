//! TGI `top_n_tokens` through the real binary: `details.top_tokens` on `/generate`, each event's
//! `top_tokens` on `/generate_stream`, their agreement with the chosen tokens, the limits, and
//! the content filter's redaction of alternatives (they leave through the same output gate).

mod common;

use common::{image_b64, timed, Server};
use serde_json::{json, Value};

const FILTER_OFF: (&str, &str) = ("FLAMINGO_FILTER_MODE", "off");

fn req(params: Value) -> Value {
    json!({"inputs": "<image>Output:", "images": [image_b64("gradient")], "parameters": params})
}

fn check_list(list: &Value, n: usize) -> Vec<(u64, f64)> {
    let list = list.as_array().unwrap_or_else(|| panic!("a list: {list}"));
    assert!(!list.is_empty() && list.len() <= n, "{list:?}");
    let mut prev = f64::INFINITY;
    list.iter()
        .map(|t| {
            let lp = t["logprob"].as_f64().expect("logprob");
            assert!(lp <= 0.0 && lp <= prev + 1e-6, "best first: {list:?}");
            prev = lp;
            assert!(t["text"].is_string() && t["special"].is_boolean(), "{t}");
            (t["id"].as_u64().expect("id"), lp)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_reports_top_tokens_of_each_step() {
    timed(90, async {
        let s = Server::start_with(&[FILTER_OFF]).await;
        // Greedy: the chosen token heads its own list with the same log-probability.
        let plain = s.post("/generate", &req(json!({"max_new_tokens": 8, "details": true}))).await;
        let r = s
            .post("/generate", &req(json!({"max_new_tokens": 8, "details": true, "top_n_tokens": 4})))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["generated_text"], plain.json["generated_text"], "top_n_tokens changes nothing");
        assert!(plain.json["details"].get("top_tokens").is_none(), "absent unless asked for");
        let d = &r.json["details"];
        let tokens = d["tokens"].as_array().unwrap();
        let top = d["top_tokens"].as_array().expect("details.top_tokens");
        assert_eq!(top.len(), tokens.len(), "one list per generated token");
        for (t, list) in tokens.iter().zip(top) {
            let list = check_list(list, 4);
            assert_eq!(list.len(), 4, "the full vocabulary has 4 candidates");
            assert_eq!(list[0].0, t["id"].as_u64().unwrap(), "greedy picks the most likely");
            assert!((list[0].1 - t["logprob"].as_f64().unwrap()).abs() < 1e-5);
        }

        // Sampling: lists come from the sampled distribution (top_k = 3: at most 3, mass 1).
        let r = s
            .post(
                "/generate",
                &req(json!({"max_new_tokens": 6, "details": true, "top_n_tokens": 5, "top_k": 3, "temperature": 0.7, "seed": 5})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let d = &r.json["details"];
        for (t, list) in d["tokens"].as_array().unwrap().iter().zip(d["top_tokens"].as_array().unwrap()) {
            let list = check_list(list, 3);
            let mass: f64 = list.iter().map(|(_, lp)| lp.exp()).sum();
            assert!((mass - 1.0).abs() < 1e-3, "top-k's 3 tokens hold all the mass: {mass}");
            let id = t["id"].as_u64().unwrap();
            let lp = t["logprob"].as_f64().unwrap();
            assert!(list.iter().any(|&(i, l)| i == id && (l - lp).abs() < 1e-5), "the sampled token is listed");
        }

        // Stream: each event carries its token's list, the final event too.
        let mut st = s
            .stream("/generate_stream", &req(json!({"max_new_tokens": 5, "top_n_tokens": 2})))
            .await;
        let events = st.all().await;
        assert!(!events.is_empty());
        for e in &events {
            let v = e.json();
            let list = check_list(&v["top_tokens"], 2);
            assert_eq!(list[0].0, v["token"]["id"].as_u64().unwrap(), "{v}");
        }
        assert!(events.last().unwrap().json()["generated_text"].is_string());

        // Limits: at most 20; not with beam search; 0 is the neutral value.
        let r = s.post("/generate", &req(json!({"top_n_tokens": 21}))).await;
        r.assert_error(422, "validation");
        assert!(r.json["error"].as_str().unwrap().contains("top_n_tokens"), "{}", r.text);
        let r = s.post("/generate", &req(json!({"top_n_tokens": 2, "num_beams": 2}))).await;
        r.assert_error(422, "validation");
        assert!(r.json["error"].as_str().unwrap().contains("top_n_tokens"), "{}", r.text);
        let r = s.post("/generate", &req(json!({"top_n_tokens": 0, "details": true}))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.json["details"].get("top_tokens").is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn masked_tokens_leave_without_alternatives() {
    timed(90, async {
        let s =
            Server::start_with(&[("FLAMINGO_TEST_SCRIPTED_OUTPUT", "a fucking great bird ")]).await;
        let r = s
            .post(
                "/generate",
                &req(json!({"max_new_tokens": 40, "details": true, "top_n_tokens": 3})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["filtered"], true, "{}", r.text);
        let d = &r.json["details"];
        let tokens = d["tokens"].as_array().unwrap();
        let top = d["top_tokens"].as_array().unwrap();
        assert_eq!(top.len(), tokens.len());
        let unk = 0;
        let mut redacted = 0;
        for (t, list) in tokens.iter().zip(top) {
            if t["id"] == unk && t["logprob"] == 0.0 {
                redacted += 1;
                assert_eq!(list, &json!([]), "a redacted token keeps no alternatives");
            } else {
                assert_eq!(list.as_array().unwrap().len(), 3, "{t}: {list}");
            }
        }
        assert!(
            redacted > 0,
            "the masked word's tokens are redacted: {}",
            r.text
        );

        let mut st = s
            .stream(
                "/generate_stream",
                &req(json!({"max_new_tokens": 40, "top_n_tokens": 3})),
            )
            .await;
        let events: Vec<Value> = st.all().await.iter().map(|e| e.json()).collect();
        let redacted: Vec<&Value> = events
            .iter()
            .filter(|e| e["token"]["id"] == unk && e["token"]["logprob"] == 0.0)
            .collect();
        assert!(!redacted.is_empty());
        assert!(
            redacted.iter().all(|e| e["top_tokens"] == json!([])),
            "{redacted:?}"
        );
    })
    .await;
}

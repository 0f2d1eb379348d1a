//! Continuous batching must not change results, and repeated images reuse cached features.

mod common;

use std::time::Duration;

use common::{image_b64, timed, Server};
use futures::future::join_all;
use serde_json::{json, Value};

fn requests() -> Vec<Value> {
    let (g, c, st, r) = (
        image_b64("gradient"),
        image_b64("checker"),
        image_b64("stripes"),
        image_b64("rings"),
    );
    vec![
        json!({"inputs": "Hello", "parameters": {"max_new_tokens": 40}}),
        json!({"inputs": "A photo of a bird sitting on a branch near the water at sunset", "parameters": {"max_new_tokens": 7}}),
        json!({"inputs": "<image>Output:", "images": [g], "parameters": {"max_new_tokens": 25}}),
        json!({"inputs": "<image>Output:", "images": [c], "parameters": {"max_new_tokens": 3}}),
        json!({"inputs": "<image>A picture of", "images": [r], "parameters": {"max_new_tokens": 60}}),
        json!({"inputs": "<image>Output:A.<|endofchunk|><image>Output:B.<|endofchunk|><image>Output:", "images": [g, c, st], "parameters": {"max_new_tokens": 18}}),
        json!({"inputs": "<image><image><image>Compare:", "images": [r, st, g], "parameters": {"max_new_tokens": 33}}),
        json!({"inputs": "x", "parameters": {"max_new_tokens": 1}}),
        json!({"inputs": "Question: what is this? Answer:", "parameters": {"max_new_tokens": 50, "repetition_penalty": 1.2}}),
        json!({"task": "vqa", "examples": [{"image": st, "question": "Lines?", "answer": "yes"}], "query": {"image": c, "question": "Squares?"}, "parameters": {"max_new_tokens": 12}}),
        json!({"inputs": "<image>", "images": [st], "parameters": {"max_new_tokens": 80}}),
        json!({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 15, "do_sample": true, "seed": 99, "temperature": 0.7}}),
        json!({"inputs": "<image>Output:", "images": [g], "parameters": {"max_new_tokens": 9}}),
    ]
}

async fn run(s: &Server, body: &Value) -> (String, Value) {
    let r = s.post("/generate", body).await;
    let text = r.generated_text().to_string();
    (text, r.json["details"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_does_not_depend_on_the_batch() {
    timed(120, async {
        let s = Server::start().await;
        let reqs = requests();
        let mut alone = Vec::new();
        for r in &reqs {
            alone.push(run(&s, r).await);
        }
        // All at once (twice: different arrival interleavings), and through the stream route.
        for round in 0..2 {
            let together = join_all(reqs.iter().map(|r| run(&s, r))).await;
            for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
                assert_eq!(
                    a.0, t.0,
                    "round {round}, request {i} ({}) changed when batched",
                    reqs[i]
                );
                assert_eq!(a.1["finish_reason"], t.1["finish_reason"], "request {i}");
                assert_eq!(
                    a.1["generated_tokens"], t.1["generated_tokens"],
                    "request {i}"
                );
            }
        }
        let streamed = join_all(reqs.iter().map(|r| async {
            let events = s.stream("/generate_stream", r).await.all().await;
            events.last().unwrap().json()["generated_text"]
                .as_str()
                .unwrap()
                .to_string()
        }))
        .await;
        for (i, (a, t)) in alone.iter().zip(&streamed).enumerate() {
            assert_eq!(&a.0, t, "request {i} changed when streamed in a batch");
        }
        assert!(
            s.eventually(Duration::from_secs(5), || async {
                s.active_sequences().await == 0
            })
            .await
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_images_hit_the_feature_cache() {
    timed(60, async {
        let s = Server::start().await;
        let g = image_b64("gradient");
        let twice = json!({"inputs": "<image>Output:A.<|endofchunk|><image>Output:", "images": [g, g], "parameters": {"max_new_tokens": 12}});
        let cold = run(&s, &twice).await.0;
        let entries = |want: f64| {
            let s = &s;
            async move { s.metric("flamingo_image_cache_entries").await == Some(want) }
        };
        assert!(s.eventually(Duration::from_secs(3), || entries(1.0)).await, "the same image twice is one cache entry");
        // Warm (features from the cache), also as a data URL: same bytes, same result.
        let warm = run(&s, &twice).await.0;
        assert_eq!(cold, warm, "cached features give the same output");
        // Where the server counts hits, the warm request is one.
        let hits = s.metric("flamingo_image_cache_hits_total").await;
        assert!(hits.is_none_or(|h| h >= 1.0), "cache hits {hits:?}");
        let data_url = json!({"inputs": "<image>Output:A.<|endofchunk|><image>Output:",
                              "images": [format!("data:image/png;base64,{g}"), g], "parameters": {"max_new_tokens": 12}});
        assert_eq!(run(&s, &data_url).await.0, cold);
        assert!(s.eventually(Duration::from_secs(3), || entries(1.0)).await);
        run(&s, &json!({"inputs": "<image>Output:", "images": [image_b64("checker")], "parameters": {"max_new_tokens": 2}})).await;
        assert!(s.eventually(Duration::from_secs(3), || entries(2.0)).await, "a new image is a new entry");
        // Cache off: same results.
        let nocache = Server::start_with(&[("FLAMINGO_LIMITS_IMAGE_CACHE_ENTRIES", "0")]).await;
        assert_eq!(run(&nocache, &twice).await.0, cold);
    })
    .await
}

//! Prefix cache through the server: a few-shot request whose examples were seen before starts
//! from their cached history, gives the same output as a cold one, and the hit counters grow;
//! the same text with other images does not hit.

mod common;

use std::time::Duration;

use common::{image_b64, timed, Server};
use serde_json::{json, Value};

const SHOTS: &str =
    "<image>Output:A red and green gradient.<|endofchunk|><image>Output:A checker board.<|endofchunk|><image>Output:";

fn few_shot(images: [&str; 3]) -> Value {
    json!({
        "inputs": SHOTS,
        "images": images.iter().map(|n| image_b64(n)).collect::<Vec<_>>(),
        "parameters": {"max_new_tokens": 10, "details": true},
    })
}

/// Generated text and (token id, logprob) of each token.
async fn run(s: &Server, body: &Value) -> (String, Vec<(u64, f64)>) {
    let r = s.post("/generate", body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let tokens = r.json["details"]["tokens"]
        .as_array()
        .expect("details.tokens")
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["logprob"].as_f64().unwrap()))
        .collect();
    (r.generated_text().to_string(), tokens)
}

async fn metric(s: &Server, name: &str) -> f64 {
    s.metric(name).await.unwrap_or(0.0)
}

#[tokio::test]
async fn repeated_few_shot_reuses_the_prefix_with_the_same_output() {
    timed(120, async {
        let s = Server::start_with(&[("FLAMINGO_LIMITS_PREFIX_CACHE_BYTES", "67108864")]).await;
        let off = Server::start_with(&[("FLAMINGO_LIMITS_PREFIX_CACHE_BYTES", "0")]).await;
        let body = few_shot(["gradient", "checker", "stripes"]);
        let expected = run(&off, &body).await;
        let cold = run(&s, &body).await;
        assert_eq!(cold, expected, "cold request, cache on vs off");
        assert_eq!(metric(&s, "flamingo_prefix_cache_hits_total").await, 0.0);
        assert!(
            s.eventually(Duration::from_secs(3), || async {
                metric(&s, "flamingo_prefix_cache_entries").await >= 1.0
            })
            .await,
            "the examples were stored"
        );
        assert!(metric(&s, "flamingo_prefix_cache_bytes").await > 0.0);
        for round in 1..=2 {
            assert_eq!(run(&s, &body).await, expected, "warm round {round}");
            assert!(
                s.eventually(Duration::from_secs(3), || async {
                    metric(&s, "flamingo_prefix_cache_hits_total").await >= round as f64
                })
                .await,
                "hit counted in round {round}"
            );
        }
        assert!(metric(&s, "flamingo_prefix_cache_reused_tokens_total").await > 0.0);
        let misses = metric(&s, "flamingo_prefix_cache_misses_total").await;
        assert!(misses >= 1.0, "the cold request was a miss: {misses}");

        // The same text with another first image: every prefix token sees another image.
        let hits = metric(&s, "flamingo_prefix_cache_hits_total").await;
        let other = few_shot(["rings", "checker", "stripes"]);
        assert_eq!(run(&s, &other).await, run(&off, &other).await);
        assert!(
            s.eventually(Duration::from_secs(3), || async {
                metric(&s, "flamingo_prefix_cache_misses_total").await >= misses + 1.0
            })
            .await
        );
        assert_eq!(metric(&s, "flamingo_prefix_cache_hits_total").await, hits);
        assert_eq!(metric(&off, "flamingo_prefix_cache_hits_total").await, 0.0);
    })
    .await
}

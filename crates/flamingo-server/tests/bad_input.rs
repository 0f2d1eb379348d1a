//! Bad input gets a 4xx JSON error (never a 5xx) and the server keeps serving.

mod common;

use common::{
    b64, crc32, image_b64, image_bytes, png_chunk, png_signature_and_ihdr, timed, Server,
};
use serde_json::{json, Value};

/// A valid PNG signature and IHDR claiming `w` x `h` RGB pixels, then an empty IEND.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut png = png_signature_and_ihdr(w, h);
    png.extend(png_chunk(b"IEND", &[]));
    png
}

#[test]
fn crc_matches_a_real_png() {
    // The fixture's IHDR chunk carries a correct CRC: ours must agree.
    let png = image_bytes("checker");
    let len = u32::from_be_bytes(png[8..12].try_into().unwrap()) as usize;
    let body = &png[12..16 + len];
    let crc = u32::from_be_bytes(png[16 + len..20 + len].try_into().unwrap());
    assert_eq!(crc32(body), crc);
}

enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

struct Case {
    name: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    kind: &'static str,
}

fn case(name: &'static str, body: Value, status: u16, kind: &'static str) -> Case {
    Case {
        name,
        path: "/generate",
        body: Body::Json(body),
        status,
        kind,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_json_and_the_server_stays_up() {
    timed(90, async {
        let s = Server::start_with(&[("FLAMINGO_SERVER_MAX_BODY_BYTES", "200000")]).await;
        let img = image_b64("checker");
        let rings = image_bytes("rings");
        let truncated = b64(&rings[..rings.len() / 2]);
        let huge = b64(&png_header(50_000, 50_000));
        let tall = b64(&png_header(1, 9_000));
        let long_prompt = "hello world ".repeat(60);
        let cases = vec![
            Case { name: "malformed JSON", path: "/generate", body: Body::Raw("application/json", b"{\"inputs\": ".to_vec()), status: 400, kind: "invalid_request" },
            Case { name: "empty body", path: "/generate", body: Body::Raw("application/json", Vec::new()), status: 400, kind: "invalid_request" },
            Case { name: "wrong content type", path: "/generate", body: Body::Raw("text/plain", br#"{"inputs": "hi"}"#.to_vec()), status: 400, kind: "invalid_request" },
            Case { name: "form content type", path: "/generate", body: Body::Raw("application/x-www-form-urlencoded", b"inputs=hi".to_vec()), status: 400, kind: "invalid_request" },
            Case { name: "NaN literal", path: "/generate", body: Body::Raw("application/json", br#"{"inputs": "hi", "parameters": {"temperature": NaN}}"#.to_vec()), status: 400, kind: "invalid_request" },
            case("wrong field type", json!({"inputs": 5}), 422, "validation"),
            case("negative max_new_tokens", json!({"inputs": "hi", "parameters": {"max_new_tokens": -1}}), 422, "validation"),
            case("no inputs", json!({}), 422, "validation"),
            case("unknown task", json!({"task": "summarize", "query": {"image": img}}), 422, "validation"),
            case("bad base64", json!({"inputs": "<image>x", "images": ["!!!not*base64***"]}), 422, "validation"),
            case("data URL without base64", json!({"inputs": "<image>x", "images": ["data:image/png,abc"]}), 422, "validation"),
            case("not an image", json!({"inputs": "<image>x", "images": [b64(b"this is plain text, not a picture")]}), 422, "validation"),
            case("truncated PNG", json!({"inputs": "<image>x", "images": [truncated]}), 422, "validation"),
            case("PNG claiming 50000x50000", json!({"inputs": "<image>x", "images": [huge]}), 413, "payload_too_large"),
            case("PNG 9000 pixels tall", json!({"inputs": "<image>x", "images": [tall]}), 413, "payload_too_large"),
            case("zero-size PNG", json!({"inputs": "<image>x", "images": [b64(&png_header(0, 0))]}), 422, "validation"),
            case("http image URL", json!({"inputs": "<image>x", "images": ["https://example.com/a.png"]}), 422, "validation"),
            case("too many images", json!({"inputs": "<image>".repeat(17), "images": vec![img.clone(); 17]}), 422, "validation"),
            case("more markers than images", json!({"inputs": "<image><image>x", "images": [img]}), 422, "validation"),
            case("more images than markers", json!({"inputs": "<image>x", "images": [img, img]}), 422, "validation"),
            case("images without markers", json!({"inputs": "x", "images": [img]}), 422, "validation"),
            case("max_new_tokens 0", json!({"inputs": "hi", "parameters": {"max_new_tokens": 0}}), 422, "validation"),
            case("max_new_tokens too large", json!({"inputs": "hi", "parameters": {"max_new_tokens": 100000}}), 422, "validation"),
            case("max_new_tokens past the context", json!({"inputs": "hi", "parameters": {"max_new_tokens": 127}}), 422, "validation"),
            case("top_p 2", json!({"inputs": "hi", "parameters": {"top_p": 2}}), 422, "validation"),
            case("top_p 0", json!({"inputs": "hi", "parameters": {"top_p": 0}}), 422, "validation"),
            case("top_k 0", json!({"inputs": "hi", "parameters": {"top_k": 0}}), 422, "validation"),
            case("temperature 0 with do_sample", json!({"inputs": "hi", "parameters": {"temperature": 0, "do_sample": true}}), 422, "validation"),
            case("negative temperature", json!({"inputs": "hi", "parameters": {"temperature": -1}}), 422, "validation"),
            case("repetition_penalty 0", json!({"inputs": "hi", "parameters": {"repetition_penalty": 0}}), 422, "validation"),
            case("num_beams 0", json!({"inputs": "hi", "parameters": {"num_beams": 0}}), 422, "validation"),
            case("num_beams 99", json!({"inputs": "hi", "parameters": {"num_beams": 99}}), 422, "validation"),
            case("beams with sampling", json!({"inputs": "hi", "parameters": {"num_beams": 2, "do_sample": true}}), 422, "validation"),
            case("empty stop sequence", json!({"inputs": "hi", "parameters": {"stop": [""]}}), 422, "validation"),
            case("too many stop sequences", json!({"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}), 422, "validation"),
            case("prompt too long for the context", json!({"inputs": long_prompt, "parameters": {"max_new_tokens": 5}}), 422, "validation"),
            case("prompt over max_input_tokens", json!({"inputs": "hello world ".repeat(600)}), 422, "validation"),
            case("few-shot and inputs mixed", json!({"inputs": "x", "query": {"image": img}}), 422, "validation"),
            Case { name: "body over max_body_bytes", path: "/generate", body: Body::Json(json!({"inputs": "x".repeat(300_000)})), status: 413, kind: "payload_too_large" },
            Case { name: "stream: bad base64", path: "/generate_stream", body: Body::Json(json!({"inputs": "<image>", "images": ["%%%"]})), status: 422, kind: "validation" },
            Case { name: "stream: body over limit", path: "/generate_stream", body: Body::Json(json!({"inputs": "x".repeat(300_000)})), status: 413, kind: "payload_too_large" },
        ];
        for c in &cases {
            let req = s.client.post(s.url(c.path));
            let req = match &c.body {
                Body::Json(v) => req.json(v),
                Body::Raw(ct, bytes) => req.header("content-type", *ct).body(bytes.clone()),
            };
            let r = s.post_with(req).await;
            assert!(r.status.is_client_error(), "{}: expected 4xx, got {}: {}", c.name, r.status, r.text);
            assert_eq!(r.status.as_u16(), c.status, "{}: {}", c.name, r.text);
            assert!(r.json["error"].is_string(), "{}: error message in {}", c.name, r.text);
            assert_eq!(r.json["error_type"], c.kind, "{}: {}", c.name, r.text);
            assert!(r.header("content-type").unwrap_or("").starts_with("application/json"), "{}", c.name);
            assert_eq!(s.get("/health").await.status, 200, "server up after {}", c.name);
        }

        // A chunked (no content-length) body over the limit is refused as well.
        let big = serde_json::to_vec(&json!({"inputs": "y".repeat(300_000)})).unwrap();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
        let r = s
            .post_with(s.client.post(s.url("/generate")).header("content-type", "application/json").body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))))
            .await;
        r.assert_error(413, "payload_too_large");

        // Unknown routes.
        s.get("/nope").await.assert_error(404, "not_found");
        s.get("/v2/generate").await.assert_error(404, "not_found");
        s.get("/assets/does-not-exist.js").await.assert_error(404, "not_found");

        // After all of it, a good request (with an image) still succeeds and nothing was a 5xx.
        let r = s.post("/generate", &json!({"inputs": "<image>Output:", "images": [img], "parameters": {"max_new_tokens": 5}})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(s.get("/ready").await.status, 200);
        let metrics = s.get("/metrics").await.text;
        assert!(
            !metrics.lines().any(|l| l.starts_with("flamingo_requests_total") && l.contains("status=\"5") && !l.contains("route=\"/ready\"")),
            "no 5xx recorded (besides /ready while loading):\n{metrics}"
        );
    })
    .await
}

/// The contract: every non-`/v1` error is `{error, error_type}` JSON; a wrong method is no
/// exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_gets_a_json_405() {
    timed(60, async {
        let s = Server::start().await;
        let r = s.get("/generate").await;
        assert_eq!(r.status, 405);
        assert!(
            r.json["error"].is_string() && r.json["error_type"].is_string(),
            "405 body should be the JSON error shape, got {:?}",
            r.text
        );
        let r = s.post_with(s.client.delete(s.url("/health"))).await;
        assert_eq!(r.status, 405);
        assert!(
            r.json["error"].is_string(),
            "405 body should be the JSON error shape, got {:?}",
            r.text
        );
    })
    .await
}

/// A tiny but positive temperature passes validation; it must not turn into NaN logits that make
/// the sampler emit the last (special) token with a NaN (`null`) logprob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_temperature_is_refused_or_sane() {
    timed(60, async {
        let s = Server::start().await;
        for t in [1e-300, 1e-45] {
            let r = s.post("/generate", &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 4, "do_sample": true, "temperature": t, "seed": 1, "details": true}})).await;
            if r.status == 422 {
                r.assert_error(422, "validation");
                continue;
            }
            assert_eq!(r.status, 200, "{}", r.text);
            for tok in r.json["details"]["tokens"].as_array().unwrap() {
                assert!(tok["logprob"].is_number(), "temperature {t}: NaN logprob (null) in {tok}");
                assert_eq!(tok["special"], false, "temperature {t}: sampled a special token {tok}");
            }
        }
    })
    .await
}

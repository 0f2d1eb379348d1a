//! The mixed workload: which kinds of request exist, how often each is sent (the mix), and how
//! each request body is built from the payload images.
//!
//! Request `i` is a pure function of (seed, i), so two runs with the same seed send the same
//! requests in the same order regardless of concurrency or timing.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

use crate::sse::Protocol;

/// Every kind of request the tool sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Generate,
    GenerateStream,
    Chat,
    ChatStream,
    /// The few-shot request form (examples + query) on `/generate`.
    FewShot,
    /// The few-shot form on `/generate_stream`.
    FewShotStream,
    /// An image that is not base64: expect 422.
    BadBase64,
    /// Two `<image>` markers, one image: expect 422.
    WrongImageCount,
    /// A truncated JSON body: expect 400.
    MalformedJson,
    /// A stream whose client hangs up after the first token.
    Disconnect,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Generate,
        Kind::GenerateStream,
        Kind::Chat,
        Kind::ChatStream,
        Kind::FewShot,
        Kind::FewShotStream,
        Kind::BadBase64,
        Kind::WrongImageCount,
        Kind::MalformedJson,
        Kind::Disconnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Generate => "generate",
            Kind::GenerateStream => "generate_stream",
            Kind::Chat => "chat",
            Kind::ChatStream => "chat_stream",
            Kind::FewShot => "fewshot",
            Kind::FewShotStream => "fewshot_stream",
            Kind::BadBase64 => "bad_base64",
            Kind::WrongImageCount => "wrong_image_count",
            Kind::MalformedJson => "malformed_json",
            Kind::Disconnect => "disconnect",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Bad inputs must be refused with a 4xx; anything else for them is a server bug.
    pub fn is_bad_input(self) -> bool {
        matches!(
            self,
            Kind::BadBase64 | Kind::WrongImageCount | Kind::MalformedJson
        )
    }
}

/// Relative weights of each kind.
#[derive(Debug, Clone)]
pub struct Mix {
    weights: Vec<(Kind, u32)>,
    total: u32,
}

/// Default mix: mostly valid traffic across all routes, ~9% bad inputs, ~5% disconnects.
pub const DEFAULT_MIX: &str = "generate=25,generate_stream=25,chat=10,chat_stream=10,fewshot=6,\
fewshot_stream=6,bad_base64=3,wrong_image_count=3,malformed_json=3,disconnect=5";

impl Mix {
    /// `kind=weight,...`; kinds not named get weight 0.
    pub fn parse(s: &str) -> Result<Mix> {
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .with_context(|| format!("mix entry {part:?} is not kind=weight"))?;
            let kind = Kind::from_name(name.trim()).with_context(|| {
                let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown kind {name:?} (known: {})", names.join(", "))
            })?;
            let w: u32 = w
                .trim()
                .parse()
                .with_context(|| format!("weight in {part:?}"))?;
            if w > 0 {
                weights.push((kind, w));
            }
        }
        let total = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            bail!("the mix {s:?} has no kind with a positive weight");
        }
        Ok(Mix { weights, total })
    }

    /// Weighted pick from a uniform draw.
    pub fn pick(&self, rng: &mut impl Rng) -> Kind {
        let mut x = rng.random_range(0..self.total);
        for &(k, w) in &self.weights {
            if x < w {
                return k;
            }
            x -= w;
        }
        unreachable!("x < total")
    }

    pub fn describe(&self) -> String {
        self.weights
            .iter()
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A ready-to-send request.
#[derive(Debug, Clone)]
pub struct Request {
    pub index: u64,
    pub kind: Kind,
    pub path: &'static str,
    pub body: bytes::Bytes,
    /// `Some` for streaming requests.
    pub stream: Option<Protocol>,
    /// Hang up after the first token.
    pub disconnect: bool,
    /// Sent as `X-Request-ID` on half of the requests (the other half checks that the server or
    /// the proxy generates one).
    pub request_id: Option<String>,
}

/// Images (base64) and generation-length bounds shared by all requests.
#[derive(Debug)]
pub struct Workload {
    pub mix: Mix,
    seed: u64,
    images: Vec<Arc<str>>,
    min_tokens: u32,
    max_tokens: u32,
    run_tag: String,
}

const IMAGE_EXTS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

impl Workload {
    pub fn new(
        mix: Mix,
        seed: u64,
        images_dir: &Path,
        min_tokens: u32,
        max_tokens: u32,
    ) -> Result<Workload> {
        let mut paths: Vec<_> = std::fs::read_dir(images_dir)
            .with_context(|| format!("reading --images-dir {}", images_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        paths.sort(); // deterministic order for a given seed
        if paths.is_empty() {
            bail!("no images in {}", images_dir.display());
        }
        let mut images = Vec::new();
        for p in &paths {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            images.push(Arc::from(b64.as_str()));
        }
        if min_tokens == 0 || min_tokens > max_tokens {
            bail!("need 1 <= --min-tokens <= --max-tokens");
        }
        Ok(Workload {
            mix,
            seed,
            images,
            min_tokens,
            max_tokens,
            run_tag: format!("lt{:x}", seed & 0xffff),
        })
    }

    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Build request `index` (deterministic in seed and index).
    pub fn request(&self, index: u64) -> Request {
        // Mix the index into the seed so neighbouring indices get unrelated streams.
        let mut rng = StdRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let kind = self.mix.pick(&mut rng);
        self.request_of_kind(index, kind, &mut rng)
    }

    pub fn request_of_kind(&self, index: u64, kind: Kind, rng: &mut StdRng) -> Request {
        let tokens = rng.random_range(self.min_tokens..=self.max_tokens);
        // Disconnecting clients ask for long generations so that the hang-up really happens
        // mid-stream, which is what exercises the server's cancellation.
        let disconnect_tokens = self.max_tokens.max(64);
        let img = |rng: &mut StdRng| self.image(rng);
        let params = |n: u32, rng: &mut StdRng| {
            if rng.random_bool(0.5) {
                json!({"max_new_tokens": n, "do_sample": false})
            } else {
                json!({"max_new_tokens": n, "do_sample": true, "temperature": 0.8,
                       "top_p": 0.9, "seed": rng.random_range(0..1_000_000u32)})
            }
        };
        let (path, body, stream): (&'static str, Value, Option<Protocol>) = match kind {
            Kind::Generate | Kind::GenerateStream => {
                let body = if rng.random_bool(0.5) {
                    json!({"inputs": "<image>Output:", "images": [img(rng)],
                           "parameters": params(tokens, rng)})
                } else {
                    // Interleaved two-image prompt in the plain (inputs/images) form.
                    json!({"inputs": "<image>Output:A picture.<|endofchunk|><image>Output:",
                           "images": [img(rng), img(rng)], "parameters": params(tokens, rng)})
                };
                tgi_route(kind == Kind::GenerateStream, body)
            }
            Kind::FewShot | Kind::FewShotStream => {
                let body = self.few_shot(tokens, rng);
                tgi_route(kind == Kind::FewShotStream, body)
            }
            Kind::Chat | Kind::ChatStream => {
                let stream = kind == Kind::ChatStream;
                (
                    "/v1/chat/completions",
                    self.chat(tokens, stream, rng),
                    stream.then_some(Protocol::OpenAi),
                )
            }
            Kind::Disconnect => {
                if rng.random_bool(0.5) {
                    tgi_route(
                        true,
                        json!({"inputs": "<image>Output:", "images": [img(rng)],
                               "parameters": {"max_new_tokens": disconnect_tokens}}),
                    )
                } else {
                    (
                        "/v1/chat/completions",
                        self.chat(disconnect_tokens, true, rng),
                        Some(Protocol::OpenAi),
                    )
                }
            }
            Kind::BadBase64 => {
                // '!' and '*' are outside the base64 alphabet in any position.
                let bad = if rng.random_bool(0.5) {
                    "!!not*base64!!".to_string()
                } else {
                    format!("data:image/png;base64,{}*", &img(rng)[..16])
                };
                tgi_route(
                    rng.random_bool(0.5),
                    json!({"inputs": "<image>Output:", "images": [bad],
                           "parameters": {"max_new_tokens": tokens}}),
                )
            }
            Kind::WrongImageCount => {
                let body = if rng.random_bool(0.5) {
                    json!({"inputs": "<image><image>Output:", "images": [img(rng)],
                           "parameters": {"max_new_tokens": tokens}})
                } else {
                    json!({"inputs": "Output:", "images": [img(rng)],
                           "parameters": {"max_new_tokens": tokens}})
                };
                tgi_route(rng.random_bool(0.5), body)
            }
            Kind::MalformedJson => {
                let path = if rng.random_bool(0.5) {
                    "/generate"
                } else {
                    "/v1/chat/completions"
                };
                // A body cut in the middle, sent as application/json: 400 invalid_request.
                let body = format!(
                    "{{\"inputs\": \"<image>Output:\", \"images\": [\"{}",
                    &img(rng)[..32]
                );
                return self.finish(index, kind, path, body.into_bytes(), None, rng);
            }
        };
        let bytes = serde_json::to_vec(&body).expect("json serialises");
        self.finish(index, kind, path, bytes, stream, rng)
    }

    fn finish(
        &self,
        index: u64,
        kind: Kind,
        path: &'static str,
        body: Vec<u8>,
        stream: Option<Protocol>,
        rng: &mut StdRng,
    ) -> Request {
        let request_id = rng
            .random_bool(0.5)
            .then(|| format!("{}-{index}", self.run_tag));
        Request {
            index,
            kind,
            path,
            body: body.into(),
            stream,
            disconnect: kind == Kind::Disconnect,
            request_id,
        }
    }

    /// An image as raw base64 or as a data URL (both are accepted by the API).
    fn image(&self, rng: &mut StdRng) -> String {
        let b64 = &self.images[rng.random_range(0..self.images.len())];
        if rng.random_bool(0.5) {
            b64.to_string()
        } else {
            format!("data:image/png;base64,{b64}")
        }
    }

    /// The few-shot form with 2–3 in-context examples (so 3–4 images per request).
    fn few_shot(&self, tokens: u32, rng: &mut StdRng) -> Value {
        let shots = rng.random_range(2..=3);
        let parameters = json!({"max_new_tokens": tokens});
        match rng.random_range(0..3) {
            0 => {
                let examples: Vec<Value> = (0..shots)
                    .map(|i| json!({"image": self.image(rng), "text": format!("Example {i}.")}))
                    .collect();
                json!({"task": "caption", "examples": examples,
                       "query": {"image": self.image(rng)}, "parameters": parameters})
            }
            1 => {
                let examples: Vec<Value> = (0..shots)
                    .map(|i| {
                        json!({"image": self.image(rng), "question": "What is shown?",
                               "answer": format!("thing {i}")})
                    })
                    .collect();
                json!({"task": "vqa", "examples": examples,
                       "query": {"image": self.image(rng), "question": "What is shown?"},
                       "parameters": parameters})
            }
            _ => {
                let examples: Vec<Value> = (0..shots)
                    .map(|i| json!({"image": self.image(rng), "text": format!("Pattern {i}.")}))
                    .collect();
                json!({"task": null, "examples": examples,
                       "query": {"image": self.image(rng), "text": "Pattern"},
                       "parameters": parameters})
            }
        }
    }

    /// An OpenAI chat request; sometimes with a system message and an earlier assistant turn
    /// (two images: the multi-turn rendering path).
    fn chat(&self, tokens: u32, stream: bool, rng: &mut StdRng) -> Value {
        let part_img = |s: &Self, rng: &mut StdRng| {
            let b64 = &s.images[rng.random_range(0..s.images.len())];
            json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}})
        };
        let mut messages = Vec::new();
        if rng.random_bool(0.5) {
            messages.push(json!({"role": "system", "content": ""}));
            messages.push(json!({"role": "user", "content": [
                part_img(self, rng), {"type": "text", "text": "Output:"}]}));
            messages.push(json!({"role": "assistant", "content": "A pattern."}));
        }
        messages.push(json!({"role": "user", "content": [
            part_img(self, rng), {"type": "text", "text": "Output:"}]}));
        json!({"model": "openflamingo", "messages": messages, "max_tokens": tokens,
               "temperature": if rng.random_bool(0.5) { json!(0.0) } else { json!(null) },
               "stream": stream})
    }
}

fn tgi_route(stream: bool, body: Value) -> (&'static str, Value, Option<Protocol>) {
    if stream {
        ("/generate_stream", body, Some(Protocol::Tgi))
    } else {
        ("/generate", body, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(mix: &str) -> Workload {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-openflamingo/images");
        Workload::new(Mix::parse(mix).unwrap(), 7, &dir, 4, 8).unwrap()
    }

    #[test]
    fn mix_parsing_and_errors() {
        let m = Mix::parse("generate=1, chat=3,disconnect=0").unwrap();
        assert_eq!(m.describe(), "generate=1,chat=3");
        assert!(Mix::parse("generate=0").is_err());
        assert!(Mix::parse("nope=1").is_err());
        assert!(Mix::parse("generate").is_err());
        Mix::parse(DEFAULT_MIX).unwrap();
    }

    #[test]
    fn requests_are_deterministic_and_follow_the_mix() {
        let w = workload("generate=1,malformed_json=1");
        for i in 0..50 {
            let a = w.request(i);
            let b = w.request(i);
            assert_eq!(a.body, b.body);
            assert!(matches!(a.kind, Kind::Generate | Kind::MalformedJson));
            let parsed = serde_json::from_slice::<Value>(&a.body);
            assert_eq!(parsed.is_err(), a.kind == Kind::MalformedJson);
        }
    }

    #[test]
    fn image_markers_match_images_for_valid_generate_requests() {
        let w = workload("generate=1,wrong_image_count=1");
        for i in 0..50 {
            let r = w.request(i);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            let markers = v["inputs"].as_str().unwrap().matches("<image>").count();
            let images = v["images"].as_array().unwrap().len();
            assert_eq!(markers == images, r.kind == Kind::Generate, "{v}");
        }
    }

    #[test]
    fn few_shot_has_several_images_and_disconnect_streams() {
        let w = workload("fewshot=1,disconnect=1");
        for i in 0..30 {
            let r = w.request(i);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            match r.kind {
                Kind::FewShot => {
                    assert!(v["examples"].as_array().unwrap().len() >= 2);
                    assert!(v["query"]["image"].is_string());
                    assert_eq!(r.path, "/generate");
                }
                Kind::Disconnect => {
                    assert!(r.disconnect && r.stream.is_some());
                }
                k => panic!("unexpected {k:?}"),
            }
        }
    }
}

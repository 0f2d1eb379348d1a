//! The worker driven through a [`ScriptedBackend`]: admission, continuous batching, eviction,
//! deadlines and failures, with no model. Sequence ids are the backend's: 1 for the first
//! sequence added, 2 for the next, ...

use std::sync::Mutex;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::cache::FeatureCache;
use super::scripted::{ScriptedBackend, BAD_PIXEL};
use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn config(max_batch_size: usize, max_kv_bytes: usize) -> WorkerConfig {
    WorkerConfig {
        max_batch_size,
        max_batch_tokens: 1000,
        max_kv_bytes,
        max_prefill_chunk_tokens: 0,
        prefix_cache_bytes: 0,
        cache: Arc::new(Mutex::new(FeatureCache::new(16))),
        max_queue: 16,
        retry_after_s: 1,
        hooks: TestHooks::default(),
    }
}

fn start(cfg: WorkerConfig, backend: ScriptedBackend) -> WorkerHandle {
    spawn_with(cfg, move || backend).expect("spawning the worker")
}

/// A request for `max_new_tokens` greedy tokens; its prompt begins with `first`.
fn request(first: u32, max_new_tokens: usize) -> WorkItem {
    let (events, _) = unbounded_channel();
    let now = Instant::now();
    WorkItem {
        request_id: format!("r{first}"),
        tokens: vec![first, 2, 3],
        images: Vec::new(),
        params: GenerationParams {
            max_new_tokens,
            ..GenerationParams::default()
        },
        kv_bytes: 0,
        events,
        deadline: now + Duration::from_secs(60),
        enqueued: now,
    }
}

fn with_kv(item: WorkItem, kv_bytes: usize) -> WorkItem {
    WorkItem { kv_bytes, ..item }
}

fn image(hash: u8, first_value: f32) -> ImageInput {
    ImageInput {
        hash: [hash; 32],
        pixels: Arc::new(vec![first_value, 0.0]),
        features: None,
    }
}

/// Queues the request; returns its events.
fn submit(worker: &WorkerHandle, mut item: WorkItem) -> UnboundedReceiver<WorkerEvent> {
    let (tx, rx) = unbounded_channel();
    item.events = tx;
    let ticket = worker.reserve().expect("a queue place");
    worker.submit(item, ticket).expect("queued");
    rx
}

/// The next event; None once the worker dropped the request's sender.
fn next(rx: &mut UnboundedReceiver<WorkerEvent>) -> Option<WorkerEvent> {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.try_recv() {
            Ok(e) => return Some(e),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                assert!(Instant::now() < deadline, "no event within {WAIT:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// One line per event: `started`, a token id (with its finish reason on the last), `finished`,
/// `error: ...`.
fn describe(e: &WorkerEvent) -> String {
    match e {
        WorkerEvent::Started { .. } => "started".into(),
        WorkerEvent::Token {
            token,
            finish: None,
        } => token.id.to_string(),
        WorkerEvent::Token {
            token,
            finish: Some(reason),
        } => format!("{} {reason:?}", token.id),
        WorkerEvent::Finished { reason, hypotheses } => {
            format!("finished {reason:?}, {} hypotheses", hypotheses.len())
        }
        WorkerEvent::Error(e) => format!("error: {e:?}"),
    }
}

/// Every event up to the end of the request (last token, `Finished`, error or a closed channel).
fn to_end(rx: &mut UnboundedReceiver<WorkerEvent>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(e) = next(rx) {
        let end = matches!(
            e,
            WorkerEvent::Token {
                finish: Some(_),
                ..
            } | WorkerEvent::Finished { .. }
                | WorkerEvent::Error(_)
        );
        seen.push(describe(&e));
        if end {
            return seen;
        }
    }
    seen.push("closed".into());
    seen
}

/// Events as [`to_end`] lists them for a greedy request that runs to `n` tokens.
fn completed(n: usize) -> Vec<String> {
    let ids = ScriptedBackend::token_ids(n);
    let mut v = vec!["started".to_string()];
    v.extend(ids[..n - 1].iter().map(|id| id.to_string()));
    v.push(format!("{} Length", ids[n - 1]));
    v
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Nothing runs, waits or holds KV memory any more.
fn drained(worker: &WorkerHandle) {
    let s = &worker.shared;
    eventually("the worker drained", || {
        s.active.load(Ordering::SeqCst) == 0
            && s.waiting.load(Ordering::SeqCst) == 0
            && s.kv_reserved.load(Ordering::SeqCst) == 0
    });
}

#[test]
fn a_request_gets_started_then_its_tokens_the_last_with_its_finish() {
    let (backend, control) = ScriptedBackend::new();
    let worker = start(config(4, 1000), backend);
    let mut rx = submit(&worker, with_kv(request(1, 3), 100));
    assert_eq!(to_end(&mut rx), completed(3));
    assert_eq!(control.steps(), vec![vec![1], vec![1], vec![1]]);
    assert_eq!(control.added(), vec![vec![1, 2, 3]]);
    drained(&worker);
    assert!(worker.alive());
}

#[test]
fn queued_work_joins_the_running_batch_between_steps() {
    let (backend, control) = ScriptedBackend::stepped();
    let worker = start(config(4, 1000), backend);
    let mut a = submit(&worker, request(1, 4));
    control.allow_steps(1);
    assert_eq!(describe(&next(&mut a).unwrap()), "started");
    assert_eq!(describe(&next(&mut a).unwrap()), "100");
    // Step 2 has begun without it: B joins the batch after it, while A is still generating.
    control.wait_at_gate(2);
    let mut b = submit(&worker, request(2, 4));
    control.allow_steps(5);
    assert_eq!(to_end(&mut a), completed(4)[2..].to_vec());
    assert_eq!(to_end(&mut b), completed(4));
    assert_eq!(
        control.steps(),
        vec![vec![1], vec![1], vec![1, 2], vec![1, 2], vec![2], vec![2]]
    );
    drained(&worker);
}

#[test]
fn a_full_batch_holds_work_back_until_a_place_frees() {
    let (backend, control) = ScriptedBackend::new();
    let worker = start(config(1, 1000), backend);
    let mut a = submit(&worker, request(1, 3));
    let mut b = submit(&worker, request(2, 2));
    assert_eq!(to_end(&mut a), completed(3));
    assert_eq!(to_end(&mut b), completed(2));
    assert_eq!(
        control.steps(),
        vec![vec![1], vec![1], vec![1], vec![2], vec![2]]
    );
    drained(&worker);
}

/// A (60 KV bytes, 3 tokens) runs; B (60 bytes, 3 tokens) arrives during A's first step.
/// Returns the steps, and the KV bytes reserved (as published after the first step) and the
/// requests waiting when the second step begins.
fn two_requests_under_a_kv_budget(max_kv_bytes: usize) -> (Vec<Vec<SeqId>>, usize, usize) {
    let (backend, control) = ScriptedBackend::stepped();
    let worker = start(config(8, max_kv_bytes), backend);
    let mut a = submit(&worker, with_kv(request(1, 3), 60));
    control.wait_at_gate(1);
    let mut b = submit(&worker, with_kv(request(2, 3), 60));
    control.allow_steps(1);
    control.wait_at_gate(2);
    let s = &worker.shared;
    let before_second = (
        s.kv_reserved.load(Ordering::SeqCst),
        s.waiting.load(Ordering::SeqCst),
    );
    control.allow_steps(10);
    assert_eq!(to_end(&mut a), completed(3));
    assert_eq!(to_end(&mut b), completed(3));
    drained(&worker);
    (control.steps(), before_second.0, before_second.1)
}

#[test]
fn the_kv_budget_holds_work_back() {
    let (steps, kv, waiting) = two_requests_under_a_kv_budget(100);
    assert_eq!(
        steps,
        vec![vec![1], vec![1], vec![1], vec![2], vec![2], vec![2]]
    );
    assert_eq!((kv, waiting), (60, 1), "B waits while A holds 60 of 100");
    // With room for both, B joins at once.
    let (steps, kv, waiting) = two_requests_under_a_kv_budget(120);
    assert_eq!(steps, vec![vec![1], vec![1, 2], vec![1, 2], vec![2]]);
    assert_eq!((kv, waiting), (60, 0));
}

#[test]
fn a_cancelled_request_leaves_the_batch_and_its_kv_reservation_is_released() {
    let (backend, control) = ScriptedBackend::stepped();
    let worker = start(config(8, 100), backend);
    let mut a = submit(&worker, with_kv(request(1, 50), 70));
    control.wait_at_gate(1);
    // Held back by the KV budget while A runs.
    let mut b = submit(&worker, with_kv(request(2, 2), 70));
    control.allow_steps(1);
    assert_eq!(describe(&next(&mut a).unwrap()), "started");
    control.wait_at_gate(2);
    assert_eq!(worker.shared.kv_reserved.load(Ordering::SeqCst), 70);
    drop(a);
    control.allow_steps(1);
    control.wait_at_gate(3);
    assert_eq!(control.removed(), vec![1], "A left the batch");
    assert_eq!(
        worker.shared.kv_reserved.load(Ordering::SeqCst),
        0,
        "A's 70 bytes were released (published after step 2)"
    );
    assert_eq!(control.added().len(), 2, "B was admitted in A's place");
    control.allow_steps(2);
    assert_eq!(to_end(&mut b), completed(2));
    assert_eq!(control.steps(), vec![vec![1], vec![1], vec![2], vec![2]]);
    drained(&worker);
}

#[test]
fn a_request_cancelled_while_queued_never_starts() {
    let (backend, control) = ScriptedBackend::stepped();
    let worker = start(config(1, 1000), backend);
    let mut a = submit(&worker, request(1, 2));
    control.wait_at_gate(1);
    let b = submit(&worker, request(2, 2));
    assert_eq!(worker.shared.waiting.load(Ordering::SeqCst), 1);
    drop(b);
    control.allow_steps(2);
    assert_eq!(to_end(&mut a), completed(2));
    drained(&worker);
    assert_eq!(control.added(), vec![vec![1, 2, 3]]);
}

#[test]
fn a_running_request_past_its_deadline_gets_the_timeout_error() {
    let (backend, control) = ScriptedBackend::stepped();
    let worker = start(config(4, 1000), backend);
    let deadline = Instant::now() + Duration::from_secs(1);
    let item = WorkItem {
        deadline,
        ..with_kv(request(1, 50), 10)
    };
    let mut a = submit(&worker, item);
    let mut b = submit(&worker, request(2, 3));
    control.allow_steps(1);
    assert_eq!(describe(&next(&mut a).unwrap()), "started");
    assert_eq!(describe(&next(&mut a).unwrap()), "100");
    control.wait_at_gate(2);
    std::thread::sleep(
        deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(10),
    );
    control.allow_steps(1);
    assert_eq!(to_end(&mut a), vec!["101", "error: DeadlinePassed"]);
    assert_eq!(control.removed(), vec![1]);
    control.allow_steps(10);
    assert_eq!(
        to_end(&mut b),
        completed(3),
        "the other request is untouched"
    );
    drained(&worker);
}

#[test]
fn a_queued_request_past_its_deadline_gets_the_timeout_error_without_starting() {
    let (backend, control) = ScriptedBackend::new();
    let worker = start(config(4, 1000), backend);
    let item = WorkItem {
        deadline: Instant::now(),
        ..request(1, 3)
    };
    std::thread::sleep(Duration::from_millis(5));
    let mut a = submit(&worker, item);
    assert_eq!(to_end(&mut a), vec!["error: DeadlinePassed"]);
    drained(&worker);
    assert!(control.added().is_empty());
    assert!(control.steps().is_empty());
}

#[test]
fn a_backend_error_on_add_refuses_only_that_request() {
    let (backend, control) = ScriptedBackend::stepped();
    control.refuse_prompts_starting_with(66);
    let worker = start(config(4, 1000), backend);
    let mut first = submit(&worker, request(1, 2));
    control.wait_at_gate(1);
    // Admitted together after step 1.
    let mut bad = submit(&worker, with_kv(request(66, 2), 10));
    let mut good = submit(&worker, request(2, 2));
    control.allow_steps(10);
    assert_eq!(
        to_end(&mut bad),
        vec![
            "started",
            r#"error: Refused("scripted refusal of [66, 2, 3]")"#
        ]
    );
    assert_eq!(to_end(&mut first), completed(2));
    assert_eq!(to_end(&mut good), completed(2));
    assert_eq!(control.steps(), vec![vec![1], vec![1, 2], vec![2]]);
    drained(&worker);
    assert!(worker.alive());
}

#[test]
fn a_failed_step_fails_the_batch_and_the_worker_keeps_serving() {
    let (backend, control) = ScriptedBackend::stepped();
    control.fail_at_step(2);
    let worker = start(config(4, 1000), backend);
    let mut a = submit(&worker, with_kv(request(1, 10), 10));
    control.wait_at_gate(1);
    let mut b = submit(&worker, with_kv(request(2, 10), 10));
    control.allow_steps(1);
    control.wait_at_gate(2);
    control.allow_steps(1);
    let failed =
        r#"error: ModelFailed("model step failed: scripted failure at step 2")"#.to_string();
    assert_eq!(to_end(&mut a), vec!["started", "100", &failed]);
    assert_eq!(to_end(&mut b), vec!["started", &failed]);
    let mut removed = control.removed();
    removed.sort();
    assert_eq!(removed, vec![1, 2]);
    drained(&worker);
    assert!(worker.alive());
    let mut c = submit(&worker, request(3, 2));
    control.allow_steps(2);
    assert_eq!(to_end(&mut c), completed(2));
    assert_eq!(control.steps(), vec![vec![1], vec![1, 2], vec![3], vec![3]]);
}

#[test]
fn a_panicking_backend_kills_the_worker_and_no_request_hangs() {
    let (backend, control) = ScriptedBackend::new();
    control.panic_at_step(2);
    let worker = start(config(1, 1000), backend);
    let mut a = submit(&worker, request(1, 5));
    // Queued behind A (batch of one).
    let mut b = submit(&worker, request(2, 5));
    assert_eq!(to_end(&mut a), vec!["started", "100", "closed"]);
    assert_eq!(to_end(&mut b), vec!["closed"]);
    eventually("the worker is marked dead", || !worker.alive());
    assert_eq!(worker.shared.waiting.load(Ordering::SeqCst), 0);
    assert_eq!(
        worker.reserve().err(),
        Some(WorkerError::Stopped { retry_after_s: 1 })
    );
}

#[test]
fn one_bad_image_fails_only_its_own_request_and_good_features_are_cached() {
    let (backend, control) = ScriptedBackend::stepped();
    let cfg = config(4, 1000);
    let cache = cfg.cache.clone();
    let worker = start(cfg, backend);
    let mut first = submit(&worker, request(1, 2));
    control.wait_at_gate(1);
    // Admitted together after step 1: their images are encoded in one call, which fails, then
    // one by one.
    let good = WorkItem {
        images: vec![image(1, 0.5)],
        ..request(2, 2)
    };
    let bad = WorkItem {
        images: vec![image(2, BAD_PIXEL)],
        ..request(3, 2)
    };
    let mut good = submit(&worker, good);
    let mut bad = submit(&worker, bad);
    control.allow_steps(10);
    assert_eq!(
        to_end(&mut bad),
        vec![
            "started",
            r#"error: ModelFailed("image encoding failed: scripted bad image")"#
        ]
    );
    assert_eq!(to_end(&mut first), completed(2));
    assert_eq!(to_end(&mut good), completed(2));
    assert_eq!(control.encode_calls(), vec![2, 1, 1]);
    assert_eq!(cache.lock().unwrap().len(), 1);
    // The same image again comes from the cache.
    let again = WorkItem {
        images: vec![image(1, 0.5)],
        ..request(4, 2)
    };
    let mut again = submit(&worker, again);
    assert_eq!(to_end(&mut again), completed(2));
    assert_eq!(control.encode_calls(), vec![2, 1, 1]);
    drained(&worker);
}

#[test]
fn a_beam_search_ends_with_its_hypotheses_and_takes_a_row_per_beam() {
    let (backend, control) = ScriptedBackend::new();
    let worker = start(config(3, 1000), backend);
    let beams = WorkItem {
        params: GenerationParams {
            max_new_tokens: 3,
            num_beams: 3,
            ..GenerationParams::default()
        },
        ..request(1, 3)
    };
    let mut a = submit(&worker, beams);
    let mut b = submit(&worker, request(2, 2));
    assert_eq!(
        to_end(&mut a),
        vec!["started", "finished Length, 1 hypotheses"]
    );
    assert_eq!(to_end(&mut b), completed(2));
    // Three beams fill the batch of three rows: the greedy request waits for them.
    assert_eq!(
        control.steps(),
        vec![vec![1], vec![1], vec![1], vec![2], vec![2]]
    );
    drained(&worker);
}

#[test]
fn a_stop_token_ends_the_sequence() {
    let (backend, _control) = ScriptedBackend::new();
    let worker = start(config(4, 1000), backend);
    let item = WorkItem {
        params: GenerationParams {
            max_new_tokens: 10,
            stop_tokens: vec![101],
            ..GenerationParams::default()
        },
        ..request(1, 10)
    };
    let mut a = submit(&worker, item);
    assert_eq!(to_end(&mut a), vec!["started", "100", "101 StopToken"]);
    drained(&worker);
}

//! What happened to one request, and how it counts.
//!
//! `client.rs` records raw facts ([`Observed`]); [`classify`] turns them into a [`Class`]. Keeping
//! this pure makes the rules — which are the whole point of the tool — unit-testable:
//! * **lost**: the client did not get a usable answer: no response, connection reset, timeout,
//!   an unparseable JSON body, malformed SSE, or a stream that ended without its final event.
//! * **failure**: an answer that breaks the API contract: a status outside the documented set
//!   (500 is "a bug" per the contract; 502 means the proxy lost the upstream), a bad input that
//!   was accepted (200) or answered with a 5xx, a 429/503 without `Retry-After`, a 200 body of
//!   the wrong shape.
//! * everything else is an acceptable answer: success, a documented error, load shedding, or
//!   a deliberate client disconnect.

use serde::Serialize;

use crate::workload::Kind;

/// Statuses the API documents as error answers (docs/api-contract.md, "Errors").
pub const DOCUMENTED_ERRORS: [u16; 7] = [400, 401, 413, 422, 429, 503, 504];

/// How the exchange ended at the transport level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The whole body (or, for a disconnecting client, what it wanted) was read.
    Complete,
    /// Our own deadline (`--timeout`) passed.
    Timeout,
    /// Could not connect.
    Connect(String),
    /// Connected, but no response head came back (connection closed/reset).
    NoResponse(String),
    /// The response started but the body broke off (reset, truncated chunked encoding).
    BodyBroken(String),
}

/// What the body turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Not examined (no response).
    None,
    /// Parsed as JSON; `shape_ok` = it has the fields the route promises for this status.
    Json { shape_ok: bool },
    /// Not JSON although JSON was due.
    BadJson(String),
    /// An SSE body.
    Stream(StreamResult),
    /// The server answered a streaming request with 200 but not `text/event-stream`.
    NotEventStream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamResult {
    pub tokens: u64,
    pub finished: bool,
    /// `event: error` payload type, when the stream failed after it started.
    pub error: Option<String>,
    /// Malformed SSE (bad JSON in an event, wrong shape, events after the final one, ...).
    pub malformed: Option<String>,
    /// The client hung up on purpose (disconnect kind) after the first token.
    pub hung_up: bool,
}

/// Raw facts about one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub status: Option<u16>,
    pub transport: Transport,
    pub retry_after: bool,
    pub body: Body,
}

/// Why a request counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lost {
    Timeout,
    Connect,
    NoResponse,
    BodyBroken,
    MalformedJson,
    MalformedSse,
    StreamWithoutFinalEvent,
}

/// Why a request counts as a contract failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    UndocumentedStatus,
    BadInputAccepted,
    BadInputServerError,
    MissingRetryAfter,
    WrongBodyShape,
    NotEventStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Success,
    /// A bad input refused with a 4xx, as it should be.
    Rejected,
    /// 429/503 with `Retry-After`: the server shed load.
    Shed,
    /// Another documented error for a valid request (e.g. 504 timeout).
    Error,
    /// The stream started and then ended with `event: error`.
    StreamError,
    /// The client disconnected on purpose.
    Disconnected,
    Lost(Lost),
    Failure(Failure),
}

impl Class {
    pub fn name(self) -> String {
        match self {
            Class::Success => "success".into(),
            Class::Rejected => "rejected".into(),
            Class::Shed => "shed".into(),
            Class::Error => "error".into(),
            Class::StreamError => "stream_error".into(),
            Class::Disconnected => "disconnected".into(),
            Class::Lost(l) => format!("lost:{}", enum_name(&l)),
            Class::Failure(f) => format!("failure:{}", enum_name(&f)),
        }
    }
}

/// snake_case name of a unit enum variant via its serde name.
pub fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn classify(kind: Kind, o: &Observed) -> Class {
    // Transport first: without a complete exchange nothing else matters.
    match &o.transport {
        Transport::Timeout => return Class::Lost(Lost::Timeout),
        Transport::Connect(_) => return Class::Lost(Lost::Connect),
        Transport::NoResponse(_) => return Class::Lost(Lost::NoResponse),
        Transport::BodyBroken(_) => {
            // A disconnecting client that already hung up does not care how the body ended.
            if !matches!(&o.body, Body::Stream(s) if s.hung_up) {
                return Class::Lost(Lost::BodyBroken);
            }
        }
        Transport::Complete => {}
    }
    let Some(status) = o.status else {
        return Class::Lost(Lost::NoResponse);
    };

    if status == 200 {
        if kind.is_bad_input() {
            return Class::Failure(Failure::BadInputAccepted);
        }
        return match &o.body {
            Body::Json { shape_ok: true } => Class::Success,
            Body::Json { shape_ok: false } => Class::Failure(Failure::WrongBodyShape),
            Body::BadJson(_) => Class::Lost(Lost::MalformedJson),
            Body::NotEventStream => Class::Failure(Failure::NotEventStream),
            Body::None => Class::Lost(Lost::NoResponse),
            Body::Stream(s) => {
                if s.malformed.is_some() {
                    Class::Lost(Lost::MalformedSse)
                } else if s.hung_up {
                    Class::Disconnected
                } else if s.error.is_some() {
                    Class::StreamError
                } else if s.finished {
                    Class::Success
                } else {
                    Class::Lost(Lost::StreamWithoutFinalEvent)
                }
            }
        };
    }

    if !DOCUMENTED_ERRORS.contains(&status) {
        // 500 (a bug by contract), 502/504-from-proxy, 404 (route missing), ...
        return if kind.is_bad_input() && status >= 500 {
            Class::Failure(Failure::BadInputServerError)
        } else {
            Class::Failure(Failure::UndocumentedStatus)
        };
    }
    // Documented error statuses: the body must be the JSON error object.
    match &o.body {
        Body::BadJson(_) | Body::None => return Class::Lost(Lost::MalformedJson),
        Body::Json { shape_ok: false } => return Class::Failure(Failure::WrongBodyShape),
        _ => {}
    }
    let shed = status == 429 || status == 503;
    if shed && !o.retry_after {
        return Class::Failure(Failure::MissingRetryAfter);
    }
    if kind.is_bad_input() {
        return if shed {
            // Shedding before validation is legitimate (the request never reached the parser).
            Class::Shed
        } else if status == 504 {
            Class::Failure(Failure::BadInputServerError)
        } else {
            Class::Rejected
        };
    }
    if shed {
        Class::Shed
    } else {
        Class::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: u16, body: Body) -> Observed {
        Observed {
            status: Some(status),
            transport: Transport::Complete,
            retry_after: false,
            body,
        }
    }

    fn stream(finished: bool, error: Option<&str>, malformed: bool, hung_up: bool) -> Body {
        Body::Stream(StreamResult {
            tokens: 3,
            finished,
            error: error.map(str::to_string),
            malformed: malformed.then(|| "x".to_string()),
            hung_up,
        })
    }

    const OK: Body = Body::Json { shape_ok: true };

    #[test]
    fn transport_problems_are_lost() {
        for (t, l) in [
            (Transport::Timeout, Lost::Timeout),
            (Transport::Connect("refused".into()), Lost::Connect),
            (Transport::NoResponse("reset".into()), Lost::NoResponse),
            (Transport::BodyBroken("reset".into()), Lost::BodyBroken),
        ] {
            let o = Observed {
                transport: t,
                ..obs(200, OK)
            };
            assert_eq!(classify(Kind::Generate, &o), Class::Lost(l));
        }
    }

    #[test]
    fn streams_need_their_final_event_and_valid_sse() {
        let k = Kind::GenerateStream;
        assert_eq!(
            classify(k, &obs(200, stream(true, None, false, false))),
            Class::Success
        );
        assert_eq!(
            classify(k, &obs(200, stream(false, None, false, false))),
            Class::Lost(Lost::StreamWithoutFinalEvent)
        );
        assert_eq!(
            classify(k, &obs(200, stream(true, None, true, false))),
            Class::Lost(Lost::MalformedSse)
        );
        assert_eq!(
            classify(k, &obs(200, stream(false, Some("timeout"), false, false))),
            Class::StreamError
        );
        assert_eq!(
            classify(k, &obs(200, Body::NotEventStream)),
            Class::Failure(Failure::NotEventStream)
        );
    }

    #[test]
    fn hang_ups_are_disconnects_even_if_the_body_then_breaks() {
        let o = Observed {
            transport: Transport::BodyBroken("closed".into()),
            ..obs(200, stream(false, None, false, true))
        };
        assert_eq!(classify(Kind::Disconnect, &o), Class::Disconnected);
        // ...but a disconnect request that was shed is counted as shed.
        let o = Observed {
            retry_after: true,
            ..obs(429, OK)
        };
        assert_eq!(classify(Kind::Disconnect, &o), Class::Shed);
    }

    #[test]
    fn malformed_json_bodies_are_lost() {
        let bad = Body::BadJson("eof".into());
        assert_eq!(
            classify(Kind::Generate, &obs(200, bad.clone())),
            Class::Lost(Lost::MalformedJson)
        );
        assert_eq!(
            classify(Kind::Generate, &obs(422, bad)),
            Class::Lost(Lost::MalformedJson)
        );
        assert_eq!(
            classify(Kind::Chat, &obs(200, Body::Json { shape_ok: false })),
            Class::Failure(Failure::WrongBodyShape)
        );
    }

    #[test]
    fn bad_inputs_must_get_a_4xx() {
        for k in [Kind::BadBase64, Kind::WrongImageCount, Kind::MalformedJson] {
            assert_eq!(classify(k, &obs(422, OK)), Class::Rejected);
            assert_eq!(classify(k, &obs(400, OK)), Class::Rejected);
            assert_eq!(
                classify(k, &obs(200, OK)),
                Class::Failure(Failure::BadInputAccepted)
            );
            assert_eq!(
                classify(k, &obs(500, OK)),
                Class::Failure(Failure::BadInputServerError)
            );
        }
    }

    #[test]
    fn shedding_needs_retry_after_and_other_statuses_fail() {
        let k = Kind::Generate;
        let shed = Observed {
            retry_after: true,
            ..obs(429, OK)
        };
        assert_eq!(classify(k, &shed), Class::Shed);
        assert_eq!(
            classify(k, &obs(503, OK)),
            Class::Failure(Failure::MissingRetryAfter)
        );
        assert_eq!(classify(k, &obs(504, OK)), Class::Error);
        assert_eq!(
            classify(k, &obs(500, OK)),
            Class::Failure(Failure::UndocumentedStatus)
        );
        assert_eq!(
            classify(k, &obs(502, OK)),
            Class::Failure(Failure::UndocumentedStatus)
        );
        assert_eq!(
            classify(k, &obs(404, Body::BadJson("html".into()))),
            Class::Failure(Failure::UndocumentedStatus)
        );
    }

    #[test]
    fn class_names() {
        assert_eq!(
            Class::Lost(Lost::StreamWithoutFinalEvent).name(),
            "lost:stream_without_final_event"
        );
        assert_eq!(
            Class::Failure(Failure::MissingRetryAfter).name(),
            "failure:missing_retry_after"
        );
    }
}

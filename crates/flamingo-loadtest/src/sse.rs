//! Server-sent events: an incremental parser (bytes in, events out) and the two stream
//! protocols of the API (TGI `/generate_stream`, OpenAI `chat.completion.chunk` + `[DONE]`).
//!
//! The parser is incremental because the point of the load tool is to see *when* each event
//! arrives (time to first token, unbuffered proxying), so it must not wait for the whole body.
//! The protocol checkers decide whether a stream is complete: a stream that ends before its
//! final event is a lost request, even though the HTTP status was 200.

/// One dispatched SSE event (WHATWG "event stream interpretation", minus `id`/`retry`,
/// which the API never sends and we do not need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field; `None` means the default type "message".
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser. Feed arbitrary chunks (split anywhere, even inside a UTF-8 sequence or
/// between `\r` and `\n`); complete events come out as soon as their blank line arrives.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` at the start of the next one belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
    /// Lines whose field name the protocol does not know (ignored per spec, but counted
    /// because the API never sends them; a proxy injecting garbage would show up here).
    pub unknown_fields: u64,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed a chunk; returns the events completed by it. Errors on invalid UTF-8 (the API is
    /// JSON over SSE, so a non-UTF-8 line means the stream was corrupted).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue; // second half of a CRLF
                }
            }
            match b {
                b'\n' => self.end_line(&mut out)?,
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out)?;
                }
                _ => self.line.push(b),
            }
        }
        Ok(out)
    }

    /// True when bytes of an unfinished line or event are buffered (a stream that ends here
    /// was cut mid-event).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.data.is_some() || self.event.is_some()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), String> {
        let raw = std::mem::take(&mut self.line);
        let line = String::from_utf8(raw).map_err(|_| "invalid UTF-8 in event stream")?;
        if line.is_empty() {
            // Blank line: dispatch. An event without data is discarded (per spec).
            let event = self.event.take();
            if let Some(data) = self.data.take() {
                out.push(SseEvent { event, data });
            }
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(()); // comment / keep-alive
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line.as_str(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            "id" | "retry" => {}
            _ => self.unknown_fields += 1,
        }
        Ok(())
    }
}

/// Which stream protocol a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `/generate_stream`: token events, the last one carries `generated_text` + `details`.
    Tgi,
    /// `/v1/chat/completions` with `stream: true`: chunks, then `data: [DONE]`.
    OpenAi,
}

/// What one event means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A token (for OpenAI: a chunk whose delta has non-empty content).
    Token,
    /// A well-formed event without content (OpenAI's leading role-only delta, the chunk that
    /// only carries `finish_reason`). It must not count as the first token: a server that sends
    /// the role chunk before prefill would otherwise look like it had a 0 ms time to first token.
    Other,
    /// The protocol's final event: the stream is complete.
    Final,
    /// `event: error` after the stream started; the payload's error type.
    Error(String),
}

/// Tracks one stream's events and decides whether it is well-formed and complete.
#[derive(Debug)]
pub struct StreamChecker {
    protocol: Protocol,
    pub tokens: u64,
    pub finished: bool,
    pub error: Option<String>,
}

impl StreamChecker {
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            tokens: 0,
            finished: false,
            error: None,
        }
    }

    /// True once a terminal event (final or error) has been seen.
    pub fn terminated(&self) -> bool {
        self.finished || self.error.is_some()
    }

    /// Check one event. `Err` = malformed SSE (unparseable data, wrong shape, or an event
    /// after the terminal one), which the caller counts as a lost request.
    pub fn on_event(&mut self, ev: &SseEvent) -> Result<EventKind, String> {
        if self.terminated() {
            return Err("event after the final event".into());
        }
        if ev.event.as_deref() == Some("error") {
            let ty = error_type(&ev.data)?;
            self.error = Some(ty.clone());
            return Ok(EventKind::Error(ty));
        }
        if let Some(other) = ev.event.as_deref() {
            if other != "message" {
                return Err(format!("unexpected event type {other:?}"));
            }
        }
        let kind = match self.protocol {
            Protocol::Tgi => check_tgi(&ev.data)?,
            Protocol::OpenAi => check_openai(&ev.data)?,
        };
        match kind {
            EventKind::Token => self.tokens += 1,
            EventKind::Final => {
                // TGI's final event carries the last token too.
                if self.protocol == Protocol::Tgi {
                    self.tokens += 1;
                }
                self.finished = true;
            }
            EventKind::Other | EventKind::Error(_) => {}
        }
        Ok(kind)
    }
}

fn parse_json(data: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(data).map_err(|e| format!("event data is not JSON: {e}"))
}

/// `event: error` payload: `{"error": "...", "error_type": "..."}` (TGI routes) or the OpenAI
/// shape `{"error": {"message", "type"}}` (`/v1` routes). Either is accepted.
fn error_type(data: &str) -> Result<String, String> {
    let v = parse_json(data)?;
    if let Some(t) = v.get("error_type").and_then(|t| t.as_str()) {
        return Ok(t.to_string());
    }
    if let Some(t) = v.pointer("/error/type").and_then(|t| t.as_str()) {
        return Ok(t.to_string());
    }
    Err("error event without an error type".into())
}

fn check_tgi(data: &str) -> Result<EventKind, String> {
    let v = parse_json(data)?;
    let token = v.get("token").ok_or("TGI event without `token`")?;
    if !token.get("text").is_some_and(|t| t.is_string()) {
        return Err("TGI token without `text`".into());
    }
    match v.get("generated_text") {
        Some(serde_json::Value::String(_)) => {
            // The final event must say why generation stopped.
            if v.pointer("/details/finish_reason").is_none() {
                return Err("TGI final event without details.finish_reason".into());
            }
            Ok(EventKind::Final)
        }
        Some(serde_json::Value::Null) | None => Ok(EventKind::Token),
        Some(_) => Err("TGI `generated_text` is neither null nor a string".into()),
    }
}

fn check_openai(data: &str) -> Result<EventKind, String> {
    if data.trim() == "[DONE]" {
        return Ok(EventKind::Final);
    }
    let v = parse_json(data)?;
    if v.get("object").and_then(|o| o.as_str()) != Some("chat.completion.chunk") {
        return Err("OpenAI stream event is not a chat.completion.chunk".into());
    }
    let Some(choices) = v.get("choices").and_then(|c| c.as_array()) else {
        return Err("chat.completion.chunk without `choices`".into());
    };
    let has_content = choices.iter().any(|c| {
        c.pointer("/delta/content")
            .and_then(|t| t.as_str())
            .is_some_and(|t| !t.is_empty())
    });
    Ok(if has_content {
        EventKind::Token
    } else {
        EventKind::Other
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::new();
        assert!(p.feed(b"da").unwrap().is_empty());
        assert!(p.feed(b"ta: {\"a\":1}\n").unwrap().is_empty());
        assert!(p.has_partial());
        assert_eq!(p.feed(b"\n").unwrap(), vec![ev(None, "{\"a\":1}")]);
        assert!(!p.has_partial());
    }

    #[test]
    fn handles_crlf_split_between_chunks_and_bare_cr() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: x\r").unwrap().is_empty());
        // The `\n` completing the CRLF must not count as a blank line.
        assert!(p.feed(b"\n").unwrap().is_empty());
        assert_eq!(p.feed(b"\r\n").unwrap(), vec![ev(None, "x")]);
        assert_eq!(p.feed(b"data: y\r\r").unwrap(), vec![ev(None, "y")]);
    }

    #[test]
    fn joins_multiline_data_keeps_event_type_and_skips_comments() {
        let mut p = SseParser::new();
        let out = p
            .feed(b": keep-alive\n\nevent: error\ndata: a\ndata:b\nid: 7\n\n")
            .unwrap();
        assert_eq!(out, vec![ev(Some("error"), "a\nb")]);
        assert_eq!(p.unknown_fields, 0);
        p.feed(b"bogus: 1\n\n").unwrap();
        assert_eq!(p.unknown_fields, 1);
    }

    #[test]
    fn utf8_split_inside_a_character_is_fine_but_invalid_utf8_is_an_error() {
        let mut p = SseParser::new();
        let s = "data: ▁A\n\n".as_bytes();
        let (a, b) = s.split_at(8); // inside the 3-byte '▁'
        assert!(p.feed(a).unwrap().is_empty());
        assert_eq!(p.feed(b).unwrap(), vec![ev(None, "▁A")]);
        assert!(SseParser::new().feed(b"data: \xff\n").is_err());
    }

    const TGI_TOKEN: &str = r#"{"index":1,"token":{"id":5,"text":"a","logprob":-1.0,"special":false},"generated_text":null,"details":null}"#;
    const TGI_FINAL: &str = r#"{"index":2,"token":{"id":6,"text":"b","logprob":-1.0,"special":false},"generated_text":"ab","details":{"finish_reason":"length","generated_tokens":2,"seed":null},"filtered":false}"#;

    #[test]
    fn tgi_stream_complete_only_after_final_event() {
        let mut c = StreamChecker::new(Protocol::Tgi);
        assert_eq!(c.on_event(&ev(None, TGI_TOKEN)).unwrap(), EventKind::Token);
        assert!(!c.terminated());
        assert_eq!(c.on_event(&ev(None, TGI_FINAL)).unwrap(), EventKind::Final);
        assert!(c.finished);
        assert_eq!(c.tokens, 2);
        assert!(
            c.on_event(&ev(None, TGI_TOKEN)).is_err(),
            "nothing may follow the final event"
        );
    }

    #[test]
    fn tgi_malformed_events_are_errors() {
        let mut c = StreamChecker::new(Protocol::Tgi);
        assert!(c.on_event(&ev(None, "{not json")).is_err());
        assert!(c.on_event(&ev(None, r#"{"generated_text":null}"#)).is_err());
        assert!(c
            .on_event(&ev(None, r#"{"token":{"text":"a"},"generated_text":"a"}"#))
            .is_err());
        assert!(c.on_event(&ev(Some("ping"), TGI_TOKEN)).is_err());
    }

    #[test]
    fn error_event_terminates_with_its_type_in_either_shape() {
        let mut c = StreamChecker::new(Protocol::Tgi);
        let k = c
            .on_event(&ev(
                Some("error"),
                r#"{"error":"x","error_type":"timeout"}"#,
            ))
            .unwrap();
        assert_eq!(k, EventKind::Error("timeout".into()));
        assert!(c.terminated());
        let mut c = StreamChecker::new(Protocol::OpenAi);
        let k = c
            .on_event(&ev(
                Some("error"),
                r#"{"error":{"message":"m","type":"internal"}}"#,
            ))
            .unwrap();
        assert_eq!(k, EventKind::Error("internal".into()));
        let mut c = StreamChecker::new(Protocol::OpenAi);
        assert!(c
            .on_event(&ev(Some("error"), r#"{"error":"no type"}"#))
            .is_err());
    }

    #[test]
    fn openai_stream_needs_done() {
        let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;
        let role = r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#;
        let mut c = StreamChecker::new(Protocol::OpenAi);
        assert_eq!(c.on_event(&ev(None, role)).unwrap(), EventKind::Other);
        assert_eq!(c.tokens, 0);
        assert_eq!(c.on_event(&ev(None, chunk)).unwrap(), EventKind::Token);
        assert!(!c.finished);
        assert_eq!(c.on_event(&ev(None, "[DONE]")).unwrap(), EventKind::Final);
        assert!(c.finished);
        let mut c = StreamChecker::new(Protocol::OpenAi);
        assert!(c
            .on_event(&ev(None, r#"{"object":"chat.completion"}"#))
            .is_err());
    }
}

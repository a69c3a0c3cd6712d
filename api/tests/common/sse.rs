//! A minimal server-sent events reader for `GET /concerts/{id}/events`.

use super::Server;
use serde_json::Value;
use std::time::Duration;

/// How long a test waits for the next event before it calls the stream stuck (a hang detector).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A minimal server-sent events reader over a streaming response.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
    /// The `retry:` field, once seen.
    pub retry_ms: Option<u64>,
}

impl EventStream {
    pub async fn open(server: &Server, concert: &str, last_event_id: Option<&str>) -> EventStream {
        let mut request = server
            .client
            .get(format!("{}/concerts/{concert}/events", server.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("the stream opens");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        assert_eq!(response.headers()["cache-control"], "no-cache");
        EventStream {
            response,
            buffer: String::new(),
            retry_ms: None,
        }
    }

    /// The next event, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.event = value.to_owned(),
                        "data" => {
                            assert!(!has_data, "data fits one line: {block}");
                            has_data = true;
                            event.data = serde_json::from_str(value)
                                .unwrap_or_else(|_| panic!("data is JSON: {value}"));
                        }
                        "retry" => self.retry_ms = Some(value.parse().expect("retry in ms")),
                        other => panic!("unknown field {other} in {block:?}"),
                    }
                }
                if has_data {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(EVENT_TIMEOUT, self.response.chunk())
                .await
                .expect("an event within the timeout")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                None => return None,
            }
        }
    }

    pub async fn expect_next(&mut self) -> Sse {
        self.next().await.expect("the stream goes on")
    }

    /// The next `seat` event, skipping availability updates.
    pub async fn next_seat(&mut self) -> Sse {
        loop {
            let event = self.expect_next().await;
            match event.event.as_str() {
                "seat" => return event,
                "availability" => continue,
                other => panic!("unexpected {other} event: {event:?}"),
            }
        }
    }

    /// Reads availability events until one equals `expected` (updates are coalesced, so earlier ones may differ).
    pub async fn await_availability(&mut self, expected: (u64, u64, u64)) {
        loop {
            let event = self.expect_next().await;
            if event.event == "availability" {
                let got = counts(&event.data);
                assert_eq!(got.0 + got.1 + got.2, expected.0 + expected.1 + expected.2);
                if got == expected {
                    return;
                }
            }
        }
    }
}

pub fn seat_triple(data: &Value) -> (String, String, String) {
    let field = |name: &str| {
        data[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} in {data}"))
            .to_owned()
    };
    (field("id"), field("status"), field("change"))
}

pub fn counts(data: &Value) -> (u64, u64, u64) {
    let field = |name: &str| {
        data[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {data}"))
    };
    (field("remaining"), field("held"), field("sold"))
}

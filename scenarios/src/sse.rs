//! Reading server-sent events as they arrive: bytes in, whole events out, however the stream was cut into frames.
//! The subset of the format `GET /concerts/{id}/events` uses and a browser understands: `id`, `event` and `data`
//! fields (several `data` lines are joined with a newline), comments starting with `:`, lines ending in `\n` or
//! `\r\n`, and a blank line ending each event.

/// Bytes of one line at most; a longer one is an error rather than unbounded memory (a snapshot of a large seated
/// concert is one line of about 40 bytes per seat).
pub const LINE_MAX: usize = 64 << 20;

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `None` when the event had no `id` field.
    pub id: Option<String>,
    /// `message` when the event had no `event` field.
    pub kind: String,
    pub data: String,
}

/// Turns chunks of a stream into events.
#[derive(Debug, Default)]
pub struct Parser {
    /// The unfinished line.
    line: Vec<u8>,
    id: Option<String>,
    kind: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// Adds `chunk` and returns the events it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, String> {
        let mut events = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            self.line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| "an event line is not UTF-8")?;
            if let Some(event) = self.line_done(&line) {
                events.push(event);
            }
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > LINE_MAX {
            return Err(format!("an event line is longer than {LINE_MAX} bytes"));
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let data = self.data.take();
            let (id, kind) = (self.id.take(), self.kind.take());
            return data.map(|data| Event {
                id,
                kind: kind.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.kind = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, kind: &str, data: &str) -> Event {
        Event {
            id: id.map(str::to_owned),
            kind: kind.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_come_out_whole_however_the_stream_is_cut() {
        let stream = b"id: 1f-1\nevent: snapshot\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: availability\r\ndata: x\r\ndata: y\r\n\r\nid: 1f-2\nevent: seat\ndata: {}\n\n";
        let expected = vec![
            event(Some("1f-1"), "snapshot", "{\"a\":1}"),
            event(None, "availability", "x\ny"),
            event(Some("1f-2"), "seat", "{}"),
        ];
        for cut in 1..stream.len() {
            let mut parser = Parser::default();
            let mut events = parser.feed(&stream[..cut]).unwrap();
            events.extend(parser.feed(&stream[cut..]).unwrap());
            assert_eq!(events, expected, "cut at {cut}");
        }
        let mut parser = Parser::default();
        let one_by_one: Vec<Event> = stream
            .iter()
            .flat_map(|byte| parser.feed(&[*byte]).unwrap())
            .collect();
        assert_eq!(one_by_one, expected);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_an_unfinished_one_waits() {
        let mut parser = Parser::default();
        assert_eq!(
            parser.feed(b"id: 7\nevent: seat\n\ndata: a").unwrap(),
            vec![]
        );
        assert_eq!(
            parser.feed(b"\n\n").unwrap(),
            vec![event(None, "message", "a")]
        );
    }

    #[test]
    fn bad_bytes_are_an_error_not_a_panic() {
        let mut parser = Parser::default();
        assert!(parser.feed(b"data: \xff\xfe\n").is_err());
    }
}

//! Splits the byte stream of an OVSDB connection into JSON messages.
//!
//! OVSDB's JSON-RPC has no length prefix or delimiter: messages are JSON texts written back to
//! back. A read may end in the middle of one message or hold several, so the splitter tracks
//! nesting depth, skipping brackets inside strings (and escaped quotes inside those), and hands
//! out each complete top-level object for `serde_json` to parse. Scanning resumes where the
//! previous read stopped, so a large message split over many reads is scanned once.

use serde_json::Value as Json;

/// Why the stream cannot be split into messages; the connection must be dropped.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("unexpected byte 0x{byte:02x} between JSON messages")]
    Garbage { byte: u8 },
    #[error("a JSON message exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed JSON message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Incremental splitter: [`push`](Self::push) bytes as they arrive, then call
/// [`next_message`](Self::next_message) until it returns `None`.
#[derive(Debug)]
pub struct JsonSplitter {
    buf: Vec<u8>,
    /// Start of the first byte not yet handed out.
    start: usize,
    /// Next byte to scan; everything in `start..pos` has been scanned.
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl JsonSplitter {
    /// A splitter that refuses messages larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Drop what was handed out already, once per read rather than once per message.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Json>, FramingError> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            self.pos += 1;
            if self.depth == 0 {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => self.start = self.pos,
                    b'{' | b'[' => self.depth = 1,
                    byte => return Err(FramingError::Garbage { byte }),
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let msg = serde_json::from_slice(&self.buf[self.start..self.pos]);
                        self.start = self.pos;
                        return Ok(Some(msg?));
                    }
                }
                _ => {}
            }
        }
        if self.depth > 0 && self.pos - self.start > self.limit {
            return Err(FramingError::TooLarge { limit: self.limit });
        }
        Ok(None)
    }

    /// Whether a message has started but not ended (bytes would be lost at end of stream).
    pub fn has_partial(&self) -> bool {
        self.depth > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drain(s: &mut JsonSplitter) -> Vec<Json> {
        let mut out = Vec::new();
        while let Some(m) = s.next_message().unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn back_to_back_messages_in_one_read() {
        let mut s = JsonSplitter::new(1 << 20);
        s.push(
            br#"{"id":1,"result":[]}{"id":2,"result":{}} {"method":"echo","params":[],"id":"e"}"#,
        );
        let msgs = drain(&mut s);
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["id"], 2);
        assert_eq!(msgs[2]["method"], "echo");
        assert!(!s.has_partial());
    }

    #[test]
    fn a_message_split_byte_by_byte() {
        let text = json!({"id": 7, "result": [{"rows": [{"name": "a}\"]{[", "x": [1, [2]]}]}]})
            .to_string();
        let mut s = JsonSplitter::new(1 << 20);
        let mut got = Vec::new();
        for b in text.as_bytes() {
            s.push(&[*b]);
            got.extend(drain(&mut s));
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["result"][0]["rows"][0]["name"], "a}\"]{[");
    }

    #[test]
    fn brackets_and_escapes_inside_strings_are_ignored() {
        let mut s = JsonSplitter::new(1 << 20);
        s.push(br#"{"a":"\\"}{"b":"\"}\\\"{"}"#);
        let msgs = drain(&mut s);
        assert_eq!(msgs, vec![json!({"a": "\\"}), json!({"b": "\"}\\\"{"})]);
    }

    #[test]
    fn multibyte_utf8_is_kept_intact_across_reads() {
        let text = json!({"name": "brücke-☃"}).to_string();
        let bytes = text.as_bytes();
        let mut s = JsonSplitter::new(1 << 20);
        let (a, b) = bytes.split_at(11);
        s.push(a);
        assert!(s.next_message().unwrap().is_none());
        s.push(b);
        assert_eq!(s.next_message().unwrap().unwrap()["name"], "brücke-☃");
    }

    #[test]
    fn garbage_between_messages_is_an_error() {
        let mut s = JsonSplitter::new(1 << 20);
        s.push(b"{}x");
        assert!(s.next_message().unwrap().is_some());
        assert!(matches!(
            s.next_message(),
            Err(FramingError::Garbage { byte: b'x' })
        ));
    }

    #[test]
    fn malformed_json_is_an_error() {
        let mut s = JsonSplitter::new(1 << 20);
        s.push(b"{\"a\" 1}");
        assert!(matches!(s.next_message(), Err(FramingError::Json(_))));
    }

    #[test]
    fn oversized_messages_are_refused() {
        let mut s = JsonSplitter::new(16);
        s.push(b"{\"a\":\"0123456789abcdef");
        assert!(matches!(
            s.next_message(),
            Err(FramingError::TooLarge { limit: 16 })
        ));
    }

    #[test]
    fn consumed_bytes_are_released() {
        let mut s = JsonSplitter::new(1 << 20);
        for i in 0..1000 {
            s.push(format!("{{\"id\":{i}}}").as_bytes());
            assert_eq!(drain(&mut s).len(), 1);
        }
        assert!(s.buf.len() < 32, "buffer kept {} bytes", s.buf.len());
    }
}

//! The one HTTP/1.1 reader of the tests, on httparse: request and response heads, and bodies
//! framed by `content-length`, chunked encoding or the end of the connection, decoded as their
//! bytes arrive. The mock upstream reads requests with it, the test client reads responses.

/// A parsed head: the request line's parts or the status, and the headers (names lowercased).
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub method: String,
    pub path: String,
    /// The protocol, e.g. `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// The first value of a header (names compared case-insensitively).
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

const MAX_HEADERS: usize = 64;

fn headers_of(raw: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    raw.iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect()
}

/// A request head at the start of `buf`: its length and the head, `None` while incomplete.
pub fn request_head(buf: &[u8]) -> Option<(usize, Head)> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
        return None;
    };
    let head = Head {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        version: format!("HTTP/1.{}", req.version.unwrap_or(1)),
        status: 0,
        headers: headers_of(req.headers),
    };
    Some((len, head))
}

/// A response head at the start of `buf`: its length and the head, `None` while incomplete.
pub fn response_head(buf: &[u8]) -> Option<(usize, Head)> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    let httparse::Status::Complete(len) = resp.parse(buf).ok()? else {
        return None;
    };
    let head = Head {
        version: format!("HTTP/1.{}", resp.version.unwrap_or(1)),
        status: resp.code.unwrap_or(0),
        headers: headers_of(resp.headers),
        ..Head::default()
    };
    Some((len, head))
}

/// How a body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// The connection's end (a response without a length).
    Close,
}

impl Framing {
    /// The framing a head announces; a request without one has no body, a response's body
    /// runs to the connection's end.
    pub fn of(head: &Head, is_response: bool) -> Framing {
        if head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = head.header("content-length").and_then(|v| v.parse().ok()) {
            Framing::Length(n)
        } else if is_response && !matches!(head.status, 204 | 304) {
            Framing::Close
        } else {
            Framing::Length(0)
        }
    }
}

/// Decodes a body from bytes as they arrive.
#[derive(Debug)]
pub struct Body {
    framing: Framing,
    raw: Vec<u8>,
    /// The body decoded so far (readers may drain it).
    pub decoded: Vec<u8>,
    /// All of the body has arrived.
    pub complete: bool,
}

impl Body {
    pub fn new(framing: Framing) -> Body {
        Body {
            framing,
            raw: Vec::new(),
            decoded: Vec::new(),
            complete: framing == Framing::Length(0),
        }
    }

    /// Takes in bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        self.decode();
    }

    /// The connection ended: a close-delimited body is complete.
    pub fn eof(&mut self) {
        if self.framing == Framing::Close {
            self.complete = true;
        }
    }

    /// Bytes that came after the body (the next request on a kept-alive connection).
    pub fn leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.raw)
    }

    fn decode(&mut self) {
        while !self.complete {
            match self.framing {
                Framing::Close => {
                    self.decoded.append(&mut self.raw);
                    return;
                }
                Framing::Length(n) => {
                    let want = n - self.decoded.len();
                    let take = want.min(self.raw.len());
                    self.decoded.extend(self.raw.drain(..take));
                    self.complete = self.decoded.len() == n;
                    return;
                }
                Framing::Chunked => {
                    let Some(line) = find(&self.raw, b"\r\n") else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&self.raw[..line]).into_owned();
                    let size_text = text.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size_text, 16).expect("chunk size");
                    if self.raw.len() < line + 2 + size + 2 {
                        return;
                    }
                    self.decoded
                        .extend_from_slice(&self.raw[line + 2..line + 2 + size]);
                    self.raw.drain(..line + 2 + size + 2);
                    self.complete = size == 0;
                }
            }
        }
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

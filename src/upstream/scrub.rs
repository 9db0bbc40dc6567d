//! Keeping the gateway's upstream keys out of what it relays: an upstream that echoes the key it
//! was sent (in an error message, a header, an SSE error event) must not hand it to the client.
//! Every occurrence of a key, as sent or JSON-escaped, is replaced by `***`, also when the
//! occurrence is cut across two chunks of a stream. Nothing is held back from a chunk unless its
//! end could be the start of a key, so events are not delayed.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

/// What replaces a key.
const MASK: &[u8] = b"***";

/// The forms of one upstream's keys to look for (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Scrub {
    forms: Arc<[Vec<u8>]>,
    /// A searcher for each form, built once.
    finders: Arc<[memchr::memmem::Finder<'static>]>,
}

impl Scrub {
    /// Looks for each of `secrets` (empty ones are ignored) as sent and as a JSON string would
    /// escape it.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Scrub {
        let mut forms: Vec<Vec<u8>> = Vec::new();
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            forms.push(secret.as_bytes().to_vec());
            let escaped = serde_json::to_string(secret).unwrap_or_default();
            let inner = escaped.trim_start_matches('"').trim_end_matches('"');
            let slashed = inner.replace('/', "\\/");
            for form in [inner.to_owned(), slashed] {
                if !form.is_empty() && !forms.iter().any(|f| f == form.as_bytes()) {
                    forms.push(form.into_bytes());
                }
            }
        }
        let finders = forms
            .iter()
            .map(|f| memchr::memmem::Finder::new(f).into_owned())
            .collect();
        Scrub {
            forms: forms.into(),
            finders,
        }
    }

    /// Masks the keys in every header value that holds one.
    pub fn headers(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        for value in headers.values_mut() {
            if self.finds(value.as_bytes()) {
                *value = HeaderValue::from_maybe_shared(self.all(value.as_bytes()))
                    .unwrap_or(HeaderValue::from_static("***"));
            }
        }
    }

    /// Whether there is anything to look for.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `bytes` with every key masked (whole, not streamed).
    pub fn all(&self, bytes: &[u8]) -> Bytes {
        let mut stream = self.stream();
        let mut out = BytesMut::from(&stream.feed(Bytes::copy_from_slice(bytes))[..]);
        out.extend_from_slice(&stream.finish());
        out.freeze()
    }

    /// A whole JSON body (an upstream's error) with every key masked, also where JSON escapes
    /// (`\u0073k-…`) spell it in a way no byte search finds; `None` when the body is not JSON.
    /// The body's own bytes are kept unless a key had to be masked inside a decoded string.
    pub fn json(&self, body: &[u8]) -> Option<Bytes> {
        let masked = self.all(body);
        let mut value: serde_json::Value = serde_json::from_slice(&masked).ok()?;
        if self.is_empty() || !self.mask_strings(&mut value) {
            return Some(masked);
        }
        serde_json::to_vec(&value).ok().map(Bytes::from)
    }

    /// Masks keys inside the decoded strings of `value`; whether any was found.
    fn mask_strings(&self, value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(text) if self.finds(text.as_bytes()) => {
                *text = String::from_utf8_lossy(&self.all(text.as_bytes())).into_owned();
                true
            }
            serde_json::Value::Array(items) => items
                .iter_mut()
                .fold(false, |found, v| self.mask_strings(v) | found),
            serde_json::Value::Object(fields) => fields
                .values_mut()
                .fold(false, |found, v| self.mask_strings(v) | found),
            _ => false,
        }
    }

    /// Whether `bytes` holds a key.
    pub fn finds(&self, bytes: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(bytes).is_some())
    }

    /// A scrubber for one stream of chunks.
    pub fn stream(&self) -> ScrubStream {
        ScrubStream {
            scrub: self.clone(),
            held: Vec::new(),
        }
    }
}

/// Masks keys in a stream of chunks, holding back a chunk's end only while it may be the start
/// of a key.
#[derive(Debug)]
pub struct ScrubStream {
    scrub: Scrub,
    held: Vec<u8>,
}

impl ScrubStream {
    /// The bytes of `chunk` (after what was held back) that can go out now, masked. A chunk
    /// with nothing to mask or hold goes out as it is, uncopied.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.scrub.forms.is_empty()
            || (self.held.is_empty() && !self.scrub.finds(&chunk) && self.partial_tail(&chunk) == 0)
        {
            return chunk;
        }
        let mut text = std::mem::take(&mut self.held);
        text.extend_from_slice(&chunk);
        let masked = self.mask(&text);
        let keep = self.partial_tail(&masked);
        self.held = masked[masked.len() - keep..].to_vec();
        Bytes::copy_from_slice(&masked[..masked.len() - keep])
    }

    /// What was held back at the end of the stream.
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.held))
    }

    /// `text` with every whole key masked.
    fn mask(&self, text: &[u8]) -> Vec<u8> {
        let mut out = text.to_vec();
        for (form, finder) in self.scrub.forms.iter().zip(self.scrub.finders.iter()) {
            let mut from = 0;
            while let Some(at) = finder.find(&out[from..]) {
                let at = from + at;
                out.splice(at..at + form.len(), MASK.iter().copied());
                from = at + MASK.len();
            }
        }
        out
    }

    /// The length of the longest end of `text` that is the start of a key.
    fn partial_tail(&self, text: &[u8]) -> usize {
        let mut keep = 0;
        for form in self.scrub.forms.iter() {
            let most = (form.len() - 1).min(text.len());
            let window = &text[text.len() - most..];
            // A tail that starts a key starts with its first byte: only those are compared,
            // the longest first.
            for at in memchr::memchr_iter(form[0], window) {
                let n = window.len() - at;
                if n <= keep {
                    break;
                }
                if window[at..] == form[..n] {
                    keep = n;
                    break;
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-Abc/123_xyz";

    #[test]
    fn masks_keys_as_sent_and_json_escaped() {
        let s = Scrub::new([KEY, ""]);
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-proj-Abc\/123_xyz (sk-proj-Abc/123_xyz)"}}"#;
        let out = s.all(body);
        assert_eq!(
            &out[..],
            &br#"{"error":{"message":"Incorrect API key provided: *** (***)"}}"#[..]
        );
        assert!(s.finds(body) && !s.finds(&out));
    }

    #[test]
    fn a_key_cut_across_chunks_is_masked_and_nothing_else_waits() {
        let s = Scrub::new([KEY]);
        let mut st = s.stream();
        let event = b"data: {\"a\":1}\n\n";
        assert_eq!(
            &st.feed(Bytes::from_static(event))[..],
            &event[..],
            "an event ends; nothing is held"
        );
        let first = st.feed(Bytes::from_static(b"data: {\"error\":\"bad key sk-proj-A"));
        assert_eq!(&first[..], b"data: {\"error\":\"bad key ");
        let second = st.feed(Bytes::from_static(b"bc/123_xyz\"}\n\n"));
        assert_eq!(&second[..], b"***\"}\n\n");
        let third = st.feed(Bytes::from_static(b"sk-pr"));
        assert!(third.is_empty());
        assert_eq!(
            &st.finish()[..],
            b"sk-pr",
            "a prefix at the very end goes out as it is"
        );
    }

    #[test]
    fn a_stream_cut_anywhere_is_masked_as_the_whole_is() {
        let s = Scrub::new([KEY]);
        let text = b"sk-proj-Ab then sk-proj-Abc/123_xyz, sk-proj-Abc\\/123_xyz and ssk-proj-Abc/123_xyzsk-p";
        let whole = s.all(text);
        assert!(!s.finds(&whole));
        for cut in 0..=text.len() {
            let mut st = s.stream();
            let mut out = st.feed(Bytes::copy_from_slice(&text[..cut])).to_vec();
            out.extend_from_slice(&st.feed(Bytes::copy_from_slice(&text[cut..])));
            out.extend_from_slice(&st.finish());
            assert_eq!(out, &whole[..], "cut at {cut}");
        }
    }

    #[test]
    fn keys_spelled_with_json_escapes_are_masked_in_json_bodies() {
        let scrub = Scrub::new(["sk-live-123"]);
        let body = br#"{"error":{"message":"bad key \u0073k-live-\u0031\u00323","code":"x"}}"#;
        assert!(!scrub.finds(body), "no byte search finds it");
        let clean = scrub.json(body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&clean).unwrap();
        assert_eq!(v["error"]["message"], "bad key ***");
        assert_eq!(v["error"]["code"], "x");
        // A body without a key keeps its own bytes; one that is not JSON is not read.
        let plain = br#"{ "error" : {"message": "nope"} }"#;
        assert_eq!(&scrub.json(plain).unwrap()[..], &plain[..]);
        assert!(scrub.json(b"<html>sk-live-123</html>").is_none());
    }

    #[test]
    fn without_keys_bytes_pass_untouched() {
        let s = Scrub::new(std::iter::empty());
        assert!(s.is_empty());
        assert_eq!(
            &s.stream().feed(Bytes::from_static(b"sk-anything"))[..],
            b"sk-anything"
        );
    }
}

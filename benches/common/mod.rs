//! What the criterion benchmarks share: the ~1.4 KB chat request of the load benchmark.

use bytes::Bytes;

/// A ~1.4 KB chat request (a system prompt and a question) for `model` at `temperature`.
pub fn chat_body(model: &str, temperature: f64) -> Bytes {
    let system =
        "You are a helpful assistant that answers questions about history concisely. ".repeat(6);
    let user = "Tell me about the history of the Roman empire, its rise and its fall, in brief. "
        .repeat(10);
    Bytes::from(
        serde_json::json!({
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": temperature,
            "max_tokens": 256
        })
        .to_string(),
    )
}

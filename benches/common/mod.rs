//! What the criterion benchmarks share: the ~1.4 KB chat request of the load benchmark, and a
//! one-message request of any size. Each bench uses what it needs of them.
#![allow(dead_code)]

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

/// One user message of about `size` bytes of prose, nothing else .
pub fn one_message(size: usize) -> switchyard::api::ChatRequest {
    let sentence = "Summarize the main arguments for and against nuclear power in Europe, \
                    weighing cost, safety, waste and emissions, with numbers where you can. ";
    let text = sentence.repeat(size / sentence.len() + 1);
    let body =
        serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]});
    switchyard::api::ChatRequest::parse(Bytes::from(body.to_string())).expect("valid request")
}

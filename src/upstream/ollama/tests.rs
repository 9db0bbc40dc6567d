//! Golden tests of the translation, both ways, streaming and not.

use super::*;
use crate::config::Config;
use serde_json::json;

fn upstream(extra: &str) -> UpstreamConfig {
    let yaml = format!(
        r#"
upstreams:
  local: {{kind: ollama, route: local, url: "http://127.0.0.1:11434", model: llama3.1 {extra}}}
default_route: {{upstream: local}}
"#
    );
    Config::from_yaml(&yaml, |_| None)
        .expect("valid config")
        .upstreams
        .remove(0)
}

fn translate(body: Value, extra: &str) -> Value {
    let req = ChatRequest::parse(Bytes::from(body.to_string())).expect("valid request");
    let out = request_body(&req, "llama3.1:8b", &upstream(extra)).expect("translates");
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn a_request_becomes_an_api_chat_body() {
    let got = translate(
        json!({
            "model": "auto",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]},
            ],
            "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": "END",
            "frequency_penalty": 0.5, "presence_penalty": 0.1, "max_tokens": 64,
            "stream": true,
            "user": "ignored",
        }),
        ", num_ctx: 8192, keep_alive: 10m",
    );
    assert_eq!(
        got,
        json!({
            "model": "llama3.1:8b",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is in this picture?", "images": ["iVBORw0KGgo="]},
            ],
            "stream": true,
            "options": {
                "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["END"],
                "frequency_penalty": 0.5, "presence_penalty": 0.1, "num_predict": 64,
                "num_ctx": 8192,
            },
            "keep_alive": "10m",
        })
    );
}

#[test]
fn tools_and_their_answers_translate() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let got = translate(
        json!({
            "model": "auto",
            "tools": tools,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            ],
        }),
        "",
    );
    assert_eq!(got["stream"], false, "Ollama streams unless told not to");
    assert_eq!(got["tools"], tools);
    assert_eq!(
        got["messages"][1],
        json!({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ]})
    );
    assert_eq!(
        got["messages"][2],
        json!({"role": "tool", "content": "18°C", "tool_name": "get_weather"})
    );
    assert!(got.get("options").is_none());

    let none = translate(
        json!({"model": "auto", "tools": tools, "tool_choice": "none",
               "messages": [{"role": "user", "content": "Just talk."}]}),
        "",
    );
    assert!(
        none.get("tools").is_none(),
        "tool_choice none offers no tools"
    );
}

#[test]
fn response_formats_become_format() {
    let ask = |rf: Value| {
        translate(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": rf}),
            "",
        )
    };
    assert_eq!(ask(json!({"type": "json_object"}))["format"], "json");
    let schema =
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
    assert_eq!(
        ask(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
            ["format"],
        schema
    );
    assert!(ask(json!({"type": "text"})).get("format").is_none());
}

#[test]
fn what_ollama_cannot_take_is_a_400() {
    let fails = |body: Value| {
        let req = ChatRequest::parse(Bytes::from(body.to_string())).unwrap();
        request_body(&req, "m", &upstream("")).unwrap_err()
    };
    let e = fails(json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!((e.status, e.param.as_deref()), (400, Some("n")));
    let e = fails(
        json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    );
    assert_eq!(
        e.param.as_deref(),
        Some("messages.[0].content.[0].image_url.url")
    );
    let e = fails(
        json!({"model": "m", "messages": [{"role": "assistant", "content": null,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]}),
    );
    assert_eq!(e.status, 400);
}

/// Exactly what Ollama 0.5 streams for a short answer.
const STREAM: &str = concat!(
    r#"{"model":"llama3.1:8b","created_at":"2024-12-01T10:00:00.000Z","message":{"role":"assistant","content":"The"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.1:8b","created_at":"2024-12-01T10:00:00.050Z","message":{"role":"assistant","content":" sky is blue."},"done":false}"#,
    "\n",
    r#"{"model":"llama3.1:8b","created_at":"2024-12-01T10:00:00.100Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":135000000,"load_duration":2000000,"prompt_eval_count":26,"prompt_eval_duration":50000000,"eval_count":5,"eval_duration":80000000}"#,
    "\n",
);

/// A whole stream translated at once, as SSE.
fn translate_stream(stream: &[u8]) -> Vec<u8> {
    let mut t = StreamTranslator::new("x");
    let mut out = Vec::new();
    t.feed(stream, &mut out);
    t.finish(&mut out);
    out
}

fn sse_events(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[test]
fn a_stream_split_anywhere_becomes_the_same_sse() {
    let mut whole = StreamTranslator::new("x");
    let mut reference = Vec::new();
    whole.feed(STREAM.as_bytes(), &mut reference);
    whole.finish(&mut reference);
    let events = sse_events(&reference);
    let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    assert_eq!(deltas[1], &json!({"content": "The"}));
    assert_eq!(deltas[2], &json!({"content": " sky is blue."}));
    assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        events[4],
        json!({"id": events[0]["id"], "object": "chat.completion.chunk", "created": events[0]["created"],
               "model": "llama3.1:8b", "choices": [],
               "usage": {"prompt_tokens": 26, "completion_tokens": 5, "total_tokens": 31}})
    );
    assert!(events
        .iter()
        .all(|e| e["id"] == events[0]["id"] && e["object"] == "chat.completion.chunk"));
    assert!(whole.is_done());

    for size in [1, 2, 5, 17, 100] {
        let mut t = StreamTranslator::new("x");
        let mut out = Vec::new();
        for piece in STREAM.as_bytes().chunks(size) {
            t.feed(piece, &mut out);
        }
        t.finish(&mut out);
        let got = sse_events(&out);
        assert_eq!(got.len(), events.len(), "size {size}");
        for (g, e) in got.iter().zip(&events) {
            assert_eq!(g["choices"], e["choices"], "size {size}");
        }
    }
}

#[test]
fn streamed_tool_calls_become_tool_call_deltas() {
    let stream = concat!(
        r#"{"model":"llama3.1:8b","created_at":"t","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},"done":false}"#,
        "\n",
        r#"{"model":"llama3.1:8b","created_at":"t","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"prompt_eval_count":90,"eval_count":20}"#,
        "\n",
    );
    let events = sse_events(&translate_stream(stream.as_bytes()));
    let call = &events[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(call["index"], 0);
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(events[2]["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn an_error_line_ends_the_stream_with_an_error_event() {
    let mut t = StreamTranslator::new("x");
    let first = r#"{"model":"m","created_at":"t","message":{"role":"assistant","content":"Hel"},"done":false}"#;
    let mut out = Vec::new();
    t.feed(
        format!("{first}\n{{\"error\":\"an error was encountered while running the model\"}}\n")
            .as_bytes(),
        &mut out,
    );
    let text = std::str::from_utf8(&out).unwrap();
    assert!(text.contains("\"content\":\"Hel\""), "{text}");
    assert!(text.contains("an error was encountered"), "{text}");
    assert!(!text.contains("[DONE]"));
    assert!(t.failed() && !t.is_done());
}

#[test]
fn length_stops_and_json_answers() {
    let body = br#"{"model":"llama3.1:8b","created_at":"t","message":{"role":"assistant","content":"Once upon"},"done_reason":"length","done":true,"prompt_eval_count":12,"eval_count":2}"#;
    let out: Value = serde_json::from_slice(&completion(body, "local").unwrap().to_json()).unwrap();
    assert_eq!(out["object"], "chat.completion");
    assert!(out["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(out["model"], "llama3.1:8b");
    assert_eq!(
        out["choices"][0],
        json!({"index": 0, "message": {"role": "assistant", "content": "Once upon", "refusal": null},
               "logprobs": null, "finish_reason": "length"})
    );
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14})
    );

    let tools = br#"{"model":"m","created_at":"t","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"x":1}}}]},"done_reason":"stop","done":true,"prompt_eval_count":1,"eval_count":1}"#;
    let out: Value =
        serde_json::from_slice(&completion(tools, "local").unwrap().to_json()).unwrap();
    let msg = &out["choices"][0]["message"];
    assert_eq!(msg["content"], Value::Null);
    assert_eq!(msg["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn ollama_errors_become_openai_errors() {
    let e = error(
        404,
        &error_message(br#"{"error":"model \"llama9\" not found, try pulling it first"}"#),
    );
    assert_eq!((e.status, e.code), (404, Some("model_not_found")));
    assert!(e.message.contains("llama9"));
    let e = error(400, &error_message(br#"{"error":"invalid options"}"#));
    assert_eq!((e.status, e.kind), (400, "invalid_request_error"));
    let e = error(500, &error_message(b"<html>oops</html>"));
    assert_eq!((e.status, e.kind), (500, "server_error"));
}

#[test]
fn generate_and_llama_cpp_answers_translate_too() {
    // Ollama's generate API, streamed.
    let generate = concat!(
        r#"{"model":"llama3.1:8b","created_at":"t","response":"Hel","done":false}"#,
        "\n",
        r#"{"model":"llama3.1:8b","created_at":"t","response":"lo","done":false}"#,
        "\n",
        r#"{"model":"llama3.1:8b","created_at":"t","response":"","done":true,"done_reason":"length","context":[1,2],"prompt_eval_count":9,"eval_count":2}"#,
        "\n",
    );
    let events = sse_events(&translate_stream(generate.as_bytes()));
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(events[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(events[4]["usage"]["prompt_tokens"], 9);

    // llama.cpp's completion API, streamed as SSE without [DONE].
    let llama = concat!(
        "data: {\"content\":\"Hi\",\"stop\":false}\n\n",
        "data: {\"content\":\" there\",\"stop\":false}\n\n",
        "data: {\"content\":\"\",\"stop\":true,\"stop_type\":\"eos\",\"tokens_predicted\":2,\"tokens_evaluated\":14}\n\n",
    );
    for size in [1, 7, 1000] {
        let mut t = StreamTranslator::new("x");
        let mut out = Vec::new();
        for piece in llama.as_bytes().chunks(size) {
            t.feed(piece, &mut out);
        }
        t.finish(&mut out);
        let events = sse_events(&out);
        let text: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hi there", "size {size}");
        assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            events[4]["usage"],
            json!({"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16})
        );
    }

    // Whole answers of both.
    let out: Value = serde_json::from_slice(
        &completion(br#"{"content":"Hi","stop":true,"stop_type":"limit","tokens_predicted":1,"tokens_evaluated":5}"#, "local")
            .unwrap()
            .to_json(),
    )
    .unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Hi");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    let err = completion(
        br#"{"error":{"code":500,"message":"slot unavailable","type":"server_error"}}"#,
        "local",
    )
    .unwrap_err();
    assert!(err.message.contains("slot unavailable"));
}

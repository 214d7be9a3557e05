//! Streamed answers in each format, over HTTP: what a client reassembles from the events,
//! pacing, and the mid-stream faults.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use quarry_fake_provider::{FakeConfig, spawn};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn receipt() -> Value {
    json!({"type": "object", "required": ["total", "currency"], "additionalProperties": false,
           "properties": {"total": {"type": "number"}, "currency": {"type": "string"}}})
}

/// `(event name, data)` of each server-sent event in `body`.
fn events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    let response = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "a stream"
    );
    response
}

#[tokio::test]
async fn openai_chunks_carry_the_answer_then_the_usage_then_done() {
    let fake = spawn(FakeConfig::default()).await.unwrap();
    let body = json!({
        "model": "fake-large", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Cafe Luna TOTAL 5.60 EUR"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "receipt", "strict": true, "schema": receipt()}}
    });
    let text = post(&format!("{}/chat/completions", fake.base_url()), &body)
        .await
        .text()
        .await
        .unwrap();
    let events = events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() > 4, "an answer in pieces: {}", chunks.len());
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    let parsed: Value = serde_json::from_str(&content).expect("the pieces make the JSON answer");
    assert!(jsonschema::is_valid(&receipt(), &parsed), "{parsed}");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("stop")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );
    assert_eq!(fake.stats.snapshot().completions, 1);
}

#[tokio::test]
async fn anthropic_events_build_the_tool_call_and_end_the_message() {
    let fake = spawn(FakeConfig::default()).await.unwrap();
    let body = json!({
        "model": "claude-fake", "max_tokens": 1024, "stream": true,
        "messages": [{"role": "user", "content": "Cafe Luna TOTAL 5.60 EUR"}],
        "tools": [{"name": "extraction", "description": "the record", "input_schema": receipt()}],
        "tool_choice": {"type": "tool", "name": "extraction"}
    });
    let text = post(&format!("{}/messages", fake.base_url()), &body)
        .await
        .text()
        .await
        .unwrap();
    let events = events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
    let data: Vec<Value> = events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let start = data
        .iter()
        .find(|d| d["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["type"], "tool_use");
    let partial: String = data
        .iter()
        .filter_map(|d| d.pointer("/delta/partial_json").and_then(Value::as_str))
        .collect();
    let input: Value = serde_json::from_str(&partial).expect("the partial JSON makes the input");
    assert!(jsonschema::is_valid(&receipt(), &input), "{input}");
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn gemini_streams_candidates_with_alt_sse_only() {
    let fake = spawn(FakeConfig::default()).await.unwrap();
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Summarise: all good"}]}]});
    let url = format!(
        "{}/models/fake-large:streamGenerateContent?alt=sse",
        fake.gemini_base_url()
    );
    let text = post(&url, &body).await.text().await.unwrap();
    let chunks: Vec<Value> = events(&text)
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let answer: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/candidates/0/content/parts/0/text")
                .and_then(Value::as_str)
        })
        .collect();
    assert!(answer.starts_with("Extracted:"), "{answer}");
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert!(
        last["usageMetadata"]["candidatesTokenCount"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["candidates"][0].get("finishReason").is_none())
    );
    let without_sse = reqwest::Client::new()
        .post(url.trim_end_matches("?alt=sse"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(without_sse.status(), 400);
}

#[tokio::test]
async fn events_come_at_the_configured_pace() {
    let fake = spawn(FakeConfig {
        stream_chunk_delay: Duration::from_millis(10),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let body = json!({"model": "fake-large", "stream": true,
                      "messages": [{"role": "user", "content": "Summarise: all good"}]});
    let started = Instant::now();
    let text = post(&format!("{}/chat/completions", fake.base_url()), &body)
        .await
        .text()
        .await
        .unwrap();
    let n = events(&text).len() as u32;
    assert!(
        started.elapsed() >= Duration::from_millis(10) * n,
        "{n} events in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_dropped_or_stalled_stream_ends_without_its_last_events() {
    let fake = spawn(FakeConfig {
        hang: Some(Duration::from_millis(200)),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    for fault in ["stream_drop", "stream_stall"] {
        let body = json!({"model": "fake-large", "stream": true,
                          "messages": [{"role": "user", "content": format!("[[fake:{fault}]] Summarise: all good")}]});
        // Cut: while the body comes (the usual case: half of it arrives first), or, on a
        // loaded machine, before the headers were flushed.
        let sent = reqwest::Client::new()
            .post(format!("{}/chat/completions", fake.base_url()))
            .json(&body)
            .send()
            .await;
        let mut received = String::new();
        if let Ok(mut response) = sent {
            let ended = loop {
                match response.chunk().await {
                    Ok(Some(bytes)) => received.push_str(&String::from_utf8_lossy(&bytes)),
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                }
            };
            assert!(ended.is_err(), "{fault}: the connection is cut, not ended");
        }
        assert!(!received.contains("[DONE]"), "{fault}: {received}");
        // The same request again is a retry after a fault, and gets the whole answer.
        let again = post(&format!("{}/chat/completions", fake.base_url()), &body)
            .await
            .text()
            .await
            .unwrap();
        assert!(again.ends_with("data: [DONE]\n\n"), "{fault}: {again}");
    }
    let stats = fake.stats.snapshot();
    assert_eq!(stats.completions, 2, "only the whole answers count");
    assert_eq!(stats.unexplained_repeats, 0);
}

#[tokio::test]
async fn a_stream_fault_does_not_touch_an_unstreamed_request() {
    let fake = spawn(FakeConfig::default()).await.unwrap();
    let body = json!({"model": "fake-large",
                      "messages": [{"role": "user", "content": "[[fake:stream_drop]] Summarise: all good"}]});
    let response: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["choices"][0]["finish_reason"], "stop");
}

//! Streamed answers, as each real API streams them (server-sent events): OpenAI chat
//! completion chunks (with the usage chunk when `stream_options.include_usage` asks for it,
//! then `[DONE]`), Anthropic message events (`message_start`, content blocks with their
//! deltas, `message_delta`, `message_stop`), Gemini `streamGenerateContent?alt=sse`
//! candidates. The answer is the same one the format would give unstreamed, cut into pieces
//! of about a token (4 characters).

use crate::formats::{Answer, Format, Parsed};
use serde_json::{Value, json};

/// Characters per streamed piece: about one token.
const PIECE_CHARS: usize = 4;

/// `text` in pieces of [`PIECE_CHARS`] characters (never splitting a character).
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (count, (at, _)) in text.char_indices().enumerate() {
        if count > 0 && count % PIECE_CHARS == 0 {
            out.push(&text[start..at]);
            start = at;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The whole streamed answer, event by event. `include_usage`: OpenAI's
/// `stream_options.include_usage`.
pub fn events(
    format: Format,
    parsed: &Parsed,
    answer: &Answer,
    id: u64,
    refusal: bool,
    include_usage: bool,
) -> Vec<String> {
    let (prompt, completion) = answer.usage;
    match format {
        Format::OpenAi => {
            let chunk = |delta: Value, finish: Option<&str>| {
                let mut chunk = json!({
                    "id": format!("chatcmpl-fake-{id:016x}"),
                    "object": "chat.completion.chunk",
                    "created": crate::formats::now_secs(),
                    "model": parsed.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                });
                if include_usage {
                    chunk["usage"] = Value::Null;
                }
                sse(None, &chunk)
            };
            let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
            if refusal {
                for piece in pieces("I'm sorry, I can't help with that.") {
                    out.push(chunk(json!({"refusal": piece}), None));
                }
            } else {
                for piece in pieces(&answer.content) {
                    out.push(chunk(json!({"content": piece}), None));
                }
            }
            let finish = if answer.truncated { "length" } else { "stop" };
            out.push(chunk(json!({}), Some(finish)));
            if include_usage {
                out.push(sse(
                    None,
                    &json!({
                        "id": format!("chatcmpl-fake-{id:016x}"),
                        "object": "chat.completion.chunk",
                        "created": crate::formats::now_secs(),
                        "model": parsed.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                            "prompt_tokens_details": {"cached_tokens": 0}
                        }
                    }),
                ));
            }
            out.push("data: [DONE]\n\n".to_owned());
            out
        }
        Format::Anthropic => {
            let mut out = vec![sse(
                Some("message_start"),
                &json!({"type": "message_start", "message": {
                    "id": format!("msg_fake_{id:016x}"), "type": "message", "role": "assistant",
                    "model": parsed.model, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": prompt, "output_tokens": 1,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
                }}),
            )];
            out.push(sse(Some("ping"), &json!({"type": "ping"})));
            let mut index = 0;
            let mut block = |out: &mut Vec<String>, start: Value, deltas: Vec<Value>| {
                out.push(sse(
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": index, "content_block": start}),
                ));
                for delta in deltas {
                    out.push(sse(
                        Some("content_block_delta"),
                        &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                    ));
                }
                out.push(sse(
                    Some("content_block_stop"),
                    &json!({"type": "content_block_stop", "index": index}),
                ));
                index += 1;
            };
            if parsed.thinking {
                block(
                    &mut out,
                    json!({"type": "thinking", "thinking": ""}),
                    vec![
                        json!({"type": "thinking_delta", "thinking": "Let me look at the input."}),
                        json!({"type": "signature_delta", "signature": format!("sig-fake-{id:016x}")}),
                    ],
                );
            }
            match (&parsed.tool, &answer.tool_input, refusal) {
                (_, _, true) => {}
                (Some(tool), Some(input), false) => {
                    let text = input.to_string();
                    let deltas = pieces(&text)
                        .into_iter()
                        .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                        .collect();
                    block(
                        &mut out,
                        json!({"type": "tool_use", "id": format!("toolu_fake_{id:016x}"), "name": tool, "input": {}}),
                        deltas,
                    );
                }
                _ => {
                    let deltas = pieces(&answer.content)
                        .into_iter()
                        .map(|p| json!({"type": "text_delta", "text": p}))
                        .collect();
                    block(&mut out, json!({"type": "text", "text": ""}), deltas);
                }
            }
            let stop_reason = crate::formats::anthropic_stop_reason(parsed, answer, refusal);
            out.push(sse(
                Some("message_delta"),
                &json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason, "stop_sequence": answer.stopped_by},
                        "usage": {"output_tokens": completion}}),
            ));
            out.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
            out
        }
        Format::Gemini => {
            let usage = |done: bool| {
                if done {
                    json!({"promptTokenCount": prompt, "candidatesTokenCount": completion,
                           "totalTokenCount": prompt + completion})
                } else {
                    json!({"promptTokenCount": prompt, "totalTokenCount": prompt})
                }
            };
            let chunk = |candidate: Value, done: bool| {
                sse(
                    None,
                    &json!({"candidates": [candidate], "usageMetadata": usage(done),
                            "modelVersion": parsed.model, "responseId": format!("fake-{id:016x}")}),
                )
            };
            if refusal {
                return vec![chunk(
                    json!({"finishReason": "SAFETY", "index": 0,
                           "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]}),
                    true,
                )];
            }
            let parts = pieces(&answer.content);
            let last = parts.len().saturating_sub(1);
            let finish = if answer.truncated {
                "MAX_TOKENS"
            } else {
                "STOP"
            };
            if parts.is_empty() {
                return vec![chunk(
                    json!({"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": finish, "index": 0}),
                    true,
                )];
            }
            parts
                .into_iter()
                .enumerate()
                .map(|(i, piece)| {
                    let mut candidate =
                        json!({"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0});
                    if i == last {
                        candidate["finishReason"] = json!(finish);
                    }
                    chunk(candidate, i == last)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_without_splitting_characters() {
        assert_eq!(pieces("abcdefghij"), vec!["abcd", "efgh", "ij"]);
        assert_eq!(pieces("€€€€€"), vec!["€€€€", "€"]);
        assert!(pieces("").is_empty());
        let text = "Extracted: {\"total\": 5.6}";
        assert_eq!(pieces(text).concat(), text);
    }
}

//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): a job's `traceparent` (and
//! `tracestate`) AMQP headers continue into every provider request the worker makes for it,
//! each attempt as its own child span, so a plugin's trace runs through the fleet. A job
//! without a valid `traceparent` starts a new trace.

use crate::amqp::publisher::header_text;
use lapin::types::FieldTable;
use quarry_schemas::wire::{HEADER_TRACEPARENT, HEADER_TRACESTATE, parse_traceparent};

/// The trace a job belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, not all zero.
    pub trace_id: String,
    /// The producer's span (the parent of the worker's), 16 hex digits.
    pub parent_id: String,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// Vendor state, passed on unchanged.
    pub state: Option<String>,
}

impl TraceContext {
    /// From a job's headers; `None` when absent or malformed.
    pub fn from_headers(headers: &Option<FieldTable>) -> Option<Self> {
        let mut context = Self::parse(&header_text(headers, HEADER_TRACEPARENT)?)?;
        context.state =
            header_text(headers, HEADER_TRACESTATE).filter(|s| s.len() <= 512 && s.is_ascii());
        Some(context)
    }

    /// Parses a `traceparent` value ([`parse_traceparent`]).
    pub fn parse(value: &str) -> Option<Self> {
        let fields = parse_traceparent(value)?;
        Some(Self {
            trace_id: format!("{:032x}", fields.trace_id),
            parent_id: format!("{:016x}", fields.parent_id),
            flags: fields.flags,
            state: None,
        })
    }

    /// A new trace, for a job that carries none (sampled).
    pub fn new_root() -> Self {
        Self {
            trace_id: format!("{:016x}{:016x}", fastrand::u64(1..), fastrand::u64(..)),
            parent_id: span_id(),
            flags: 1,
            state: None,
        }
    }

    /// The `traceparent` of a new child span (one provider attempt).
    pub fn child(&self) -> TraceParent {
        let text = format!("00-{}-{}-{:02x}", self.trace_id, span_id(), self.flags);
        let mut bytes = [b'0'; TRACEPARENT_LEN];
        let n = text.len().min(TRACEPARENT_LEN);
        bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
        TraceParent(bytes)
    }
}

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A version-00 `traceparent` value, by value (it travels in `Copy` requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent([u8; TRACEPARENT_LEN]);

impl TraceParent {
    /// The header value.
    pub fn as_str(&self) -> &str {
        // Built from ASCII hex digits and dashes only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A random, non-zero span id.
fn span_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_refuses_invalid_traceparents() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(valid).expect("valid");
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.flags, 1);
        let child = context.child().as_str().to_owned();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, valid, "a child has its own span id");
        assert!(TraceContext::parse(&child).is_some());
        for invalid in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(invalid).is_none(), "{invalid}");
        }
        // A later version with more fields is read by its first four.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        let root = TraceContext::new_root();
        assert!(TraceContext::parse(root.child().as_str()).is_some());
    }
}

//! W3C Trace Context for jobs: every job is published with a `traceparent` header, a child
//! span of the caller's trace when one is given ([`crate::CallOptions::trace`],
//! [`crate::BatchOptions::trace`]), else of a new trace. Workers continue it into the provider
//! requests they make for the job.

use std::fmt;

/// A trace to publish jobs in: its id and flags (`Copy`, so options stay `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    flags: u8,
}

impl TraceContext {
    /// The trace of a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`), e.g. the one of
    /// the request the plugin is serving; `None` when it is malformed.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let fields = quarry_schemas::wire::parse_traceparent(value)?;
        Some(Self {
            trace_id: fields.trace_id,
            flags: fields.flags,
        })
    }

    /// A new, sampled trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: uuid::Uuid::new_v4().as_u128().max(1),
            flags: 1,
        }
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` of a new child span (one publish).
    pub(crate) fn child(&self) -> String {
        let span = (uuid::Uuid::new_v4().as_u128() as u64).max(1);
        format!("00-{:032x}-{span:016x}-{:02x}", self.trace_id, self.flags)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_keep_the_trace_and_get_their_own_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::from_traceparent(parent).expect("valid");
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (a, b) = (trace.child(), trace.child());
        assert!(a.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && a.ends_with("-01"));
        assert_ne!(a, b);
        assert!(TraceContext::from_traceparent(&a).is_some());
        assert!(TraceContext::from_traceparent("00-0000-00f067aa0ba902b7-01").is_none());
        assert!(
            TraceContext::from_traceparent(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            )
            .is_none()
        );
    }
}

//! Deterministic fault injection.
//!
//! Per request, with a marker anywhere in the request's text: `[[fake:FAULT]]` (the first
//! time this exact request is seen) or `[[fake:FAULT*N]]` (the first N times). By profile,
//! for every request: `--faults rate_limit=0.3,server_error=0.1` draws a fault from a
//! hash of the request body and how often it was seen, so a run is reproducible.
//!
//! Output faults (`invalid_json`, `truncated`, `schema_invalid`, `refusal`) only hit *first
//! answers*, i.e. requests whose conversation has no earlier model turn: a repair request
//! gets a clean answer. Transport faults hit any request.

use std::fmt;
use std::str::FromStr;

/// A fault the fake provider can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 429 with `Retry-After` (and the format's own retry hint).
    RateLimit,
    /// 401.
    Auth,
    /// 401 from something in between (a proxy's HTML page, not the API's error object).
    ProxyAuth,
    /// 500.
    ServerError,
    /// 529 (Anthropic) or 503 (OpenAI, Gemini): the model is overloaded.
    Overloaded,
    /// No answer until the client gives up.
    Timeout,
    /// An answer that is not JSON at all.
    InvalidJson,
    /// A JSON answer cut off midway (as with `max_tokens` too small).
    Truncated,
    /// Well-formed JSON that breaks the requested schema.
    SchemaInvalid,
    /// The model declines to answer.
    Refusal,
    /// 400: the API refuses the request (its invalid-request error object).
    BadRequest,
    /// 402 with the format's own word for a spent quota where it has one (OpenAI
    /// `insufficient_quota`, Anthropic `billing_error`; Gemini has none).
    PaymentRequired,
    /// 404: no such model.
    NotFound,
    /// 200 with a body that is not the format's answer at all.
    Malformed,
    /// A streamed answer whose connection drops midway (streaming requests only).
    StreamDrop,
    /// A streamed answer that stops midway and never finishes (streaming requests only).
    StreamStall,
}

impl Fault {
    /// Every fault, for listings.
    pub const ALL: [Fault; 16] = [
        Fault::RateLimit,
        Fault::Auth,
        Fault::ProxyAuth,
        Fault::ServerError,
        Fault::Overloaded,
        Fault::Timeout,
        Fault::InvalidJson,
        Fault::Truncated,
        Fault::SchemaInvalid,
        Fault::Refusal,
        Fault::BadRequest,
        Fault::PaymentRequired,
        Fault::NotFound,
        Fault::Malformed,
        Fault::StreamDrop,
        Fault::StreamStall,
    ];

    /// The name used in markers and profiles.
    pub const fn name(self) -> &'static str {
        match self {
            Fault::RateLimit => "rate_limit",
            Fault::Auth => "auth",
            Fault::ProxyAuth => "proxy_auth",
            Fault::ServerError => "server_error",
            Fault::Overloaded => "overloaded",
            Fault::Timeout => "timeout",
            Fault::InvalidJson => "invalid_json",
            Fault::Truncated => "truncated",
            Fault::SchemaInvalid => "schema_invalid",
            Fault::Refusal => "refusal",
            Fault::BadRequest => "bad_request",
            Fault::PaymentRequired => "payment_required",
            Fault::NotFound => "not_found",
            Fault::Malformed => "malformed",
            Fault::StreamDrop => "stream_drop",
            Fault::StreamStall => "stream_stall",
        }
    }

    /// Whether the fault happens inside a streamed answer (a request that does not stream
    /// gets a clean answer instead).
    pub const fn is_mid_stream(self) -> bool {
        matches!(self, Fault::StreamDrop | Fault::StreamStall)
    }

    /// Whether the fault is in the answer's content (only first answers get those).
    pub const fn is_output(self) -> bool {
        matches!(
            self,
            Fault::InvalidJson | Fault::Truncated | Fault::SchemaInvalid | Fault::Refusal
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fault `{s}` (known: {})",
                    Fault::ALL.map(Fault::name).join(", ")
                )
            })
    }
}

/// Fault probabilities applied to every request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile(Vec<(Fault, f64)>);

impl FromStr for Profile {
    type Err = String;
    /// `rate_limit=0.3,server_error=0.1`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        let mut total = 0.0;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, p) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: expected fault=probability"))?;
            let p: f64 = p.parse().map_err(|e| format!("`{item}`: {e}"))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("`{item}`: probability must be within 0..=1"));
            }
            total += p;
            out.push((name.parse()?, p));
        }
        if total > 1.0 + 1e-9 {
            return Err(format!("probabilities add up to {total}, more than 1"));
        }
        Ok(Profile(out))
    }
}

impl Profile {
    /// The fault for a uniform draw `u` in [0, 1).
    fn pick(&self, u: f64) -> Option<Fault> {
        let mut edge = 0.0;
        for (fault, p) in &self.0 {
            edge += p;
            if u < edge {
                return Some(*fault);
            }
        }
        None
    }
}

/// `[[fake:NAME]]` or `[[fake:NAME*N]]` markers in `text`.
pub fn markers(text: &str) -> Vec<(Fault, u32)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("[[fake:") {
        rest = &rest[start + 7..];
        let Some(end) = rest.find("]]") else { break };
        let spec = &rest[..end];
        let (name, times) = match spec.split_once('*') {
            Some((name, n)) => (name, n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        if let Ok(fault) = name.parse() {
            found.push((fault, times));
        }
        rest = &rest[end..];
    }
    found
}

/// The fault, if any, for a request: markers first, then the profile.
pub fn decide(
    profile: &Profile,
    text: &str,
    draw: f64,
    sighting: u32,
    first_answer: bool,
) -> Option<Fault> {
    let applies = |fault: Fault| !fault.is_output() || first_answer;
    for (fault, times) in markers(text) {
        if applies(fault) && (fault.is_output() || sighting <= times) {
            return Some(fault);
        }
    }
    profile.pick(draw).filter(|f| applies(*f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_counts() {
        assert_eq!(
            markers("a [[fake:rate_limit]] b [[fake:timeout*3]]"),
            vec![(Fault::RateLimit, 1), (Fault::Timeout, 3)]
        );
        assert_eq!(markers("[[fake:nonsense]] [[fake:auth"), vec![]);
        let p = Profile::default();
        assert_eq!(
            decide(&p, "[[fake:rate_limit*2]]", 0.0, 1, true),
            Some(Fault::RateLimit)
        );
        assert_eq!(
            decide(&p, "[[fake:rate_limit*2]]", 0.0, 2, false),
            Some(Fault::RateLimit)
        );
        assert_eq!(decide(&p, "[[fake:rate_limit*2]]", 0.0, 3, true), None);
        assert_eq!(
            decide(&p, "[[fake:invalid_json]]", 0.0, 5, true),
            Some(Fault::InvalidJson)
        );
        assert_eq!(
            decide(&p, "[[fake:invalid_json]]", 0.0, 1, false),
            None,
            "repairs get clean answers"
        );
    }

    #[test]
    fn profiles() {
        let p: Profile = "rate_limit=0.3, server_error=0.1".parse().unwrap();
        assert_eq!(p.pick(0.1), Some(Fault::RateLimit));
        assert_eq!(p.pick(0.35), Some(Fault::ServerError));
        assert_eq!(p.pick(0.5), None);
        assert!("rate_limit=0.7,timeout=0.5".parse::<Profile>().is_err());
        assert!("bogus=0.1".parse::<Profile>().is_err());
        let output: Profile = "invalid_json=1".parse().unwrap();
        assert_eq!(decide(&output, "", 0.2, 1, true), Some(Fault::InvalidJson));
        assert_eq!(decide(&output, "", 0.2, 1, false), None);
    }
}

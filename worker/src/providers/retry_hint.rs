//! Retry hints in provider answers: `retry-after-ms`, `retry-after` (seconds or HTTP date),
//! OpenAI's `x-ratelimit-reset-requests`/`-tokens` (Go durations such as `6m0s`, `20ms`),
//! Anthropic's `anthropic-ratelimit-*-reset` (RFC 3339 instants), and Gemini's `RetryInfo`
//! error detail (`"retryDelay": "30s"`).

use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// Longest wait any hint may ask for.
const MAX_HINT: Duration = Duration::from_secs(3600);

/// The wait the headers ask for, most precise first. `None` when they say nothing usable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0).min(MAX_HINT));
    }
    if let Some(value) = text("retry-after") {
        return parse_retry_after(value);
    }
    // The latest of the limits' resets: waiting for it frees every exhausted limit.
    let openai = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|h| text(h).and_then(parse_go_duration));
    let anthropic = [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ]
    .into_iter()
    .filter_map(|h| text(h).and_then(until_instant));
    openai.chain(anthropic).max().map(|d| d.min(MAX_HINT))
}

/// `Retry-After`: delta seconds, or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds).min(MAX_HINT));
    }
    let at = httpdate(value)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_HINT),
    )
}

fn httpdate(value: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(value).ok().or_else(|| {
        // `Wed, 21 Oct 2015 07:28:00 GMT`
        let mut parts = value.split_whitespace().skip(1);
        let (day, month, year, time) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == month)? + 1;
        humantime::parse_rfc3339_weak(&format!("{year}-{month:02}-{day:0>2}T{time}Z")).ok()
    })
}

fn until_instant(value: &str) -> Option<Duration> {
    let at = humantime::parse_rfc3339_weak(value.trim_end_matches('Z')).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Go-style durations as OpenAI and Google send them: `1s`, `6m0s`, `1h2m3.5s`, `20ms`, `1.5s`.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    total
        .is_finite()
        .then(|| Duration::from_secs_f64(total).min(MAX_HINT))
}

/// Gemini's `error.details[] {"@type": ".../google.rpc.RetryInfo", "retryDelay": "30s"}`.
pub fn google_retry_info(error: &Value) -> Option<Duration> {
    error.get("details")?.as_array()?.iter().find_map(|detail| {
        let kind = detail.get("@type")?.as_str()?;
        if !kind.ends_with("google.rpc.RetryInfo") {
            return None;
        }
        parse_go_duration(detail.get("retryDelay")?.as_str()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_go_duration("1m2.5s"),
            Some(Duration::from_millis(62_500))
        );
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("99999"), Some(MAX_HINT));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("whenever"), None);
    }

    #[test]
    fn header_precedence_and_provider_resets() {
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "9")]);
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let h = headers(&[("retry-after", "9"), ("x-ratelimit-reset-requests", "1s")]);
        assert_eq!(retry_after(&h), Some(Duration::from_secs(9)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(retry_after(&h), Some(Duration::from_secs(360)));
        let soon = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(30))
            .to_string();
        let h = headers(&[("anthropic-ratelimit-requests-reset", &soon)]);
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn gemini_retry_info() {
        let error = json!({"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}
        ]});
        assert_eq!(google_retry_info(&error), Some(Duration::from_secs(30)));
        assert_eq!(google_retry_info(&json!({"code": 429})), None);
    }
}

//! One classifier for every provider's failures: the HTTP status decides, unless the
//! provider's own error object says more ([`Said`], each provider's override). The table in
//! `docs/providers.md`, "Errors", is this module's, and the tests below hold them together.

use super::Disposition;
use quarry_schemas::ErrorCode;
use std::time::Duration;

/// What a provider's own error object says went wrong, in words every provider shares. Each
/// provider maps its error kinds here (`anthropic::said`, `gemini::said`,
/// `openai_compatible::said`); what it does not map is left to the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    /// The API itself rejected the credential (not a proxy's 401 page): the key leaves the
    /// job's rotation.
    KeyRejected,
    /// The key's quota or billing is spent.
    QuotaSpent,
    /// No such model.
    NotFound,
    /// A rate limit.
    RateLimited,
    /// The model is overloaded or unavailable for now.
    Overloaded,
    /// The provider timed out.
    TimedOut,
    /// The request is malformed.
    Invalid,
    /// The provider failed inside.
    ServerError,
}

impl Said {
    /// Every word, for the doc test.
    pub const ALL: [Said; 8] = [
        Said::KeyRejected,
        Said::QuotaSpent,
        Said::NotFound,
        Said::RateLimited,
        Said::Overloaded,
        Said::TimedOut,
        Said::Invalid,
        Said::ServerError,
    ];

    fn class(self, after: Option<Duration>) -> (ErrorCode, Disposition) {
        let retry = Disposition::Retry { after };
        match self {
            Said::KeyRejected => (ErrorCode::AuthFailed, Disposition::RotateKey),
            Said::QuotaSpent => (ErrorCode::CredentialsExhausted, Disposition::RotateKey),
            Said::NotFound => (ErrorCode::ModelUnavailable, Disposition::Permanent),
            Said::RateLimited => (ErrorCode::RateLimited, retry),
            Said::Overloaded => (ErrorCode::ModelUnavailable, retry),
            Said::TimedOut => (ErrorCode::Timeout, retry),
            Said::Invalid => (ErrorCode::InvalidRequest, Disposition::Permanent),
            Said::ServerError => (ErrorCode::ProviderError, retry),
        }
    }
}

/// The code and disposition of an HTTP status alone.
fn by_status(status: u16, after: Option<Duration>) -> (ErrorCode, Disposition) {
    let retry = Disposition::Retry { after };
    match status {
        400 | 413 | 415 | 422 => (ErrorCode::InvalidRequest, Disposition::Permanent),
        // Without the API's own word, a 401 may be a proxy's or a gateway's: retried, and the
        // key stays in rotation.
        401 | 403 => (ErrorCode::AuthFailed, retry),
        402 => (ErrorCode::CredentialsExhausted, Disposition::RotateKey),
        404 => (ErrorCode::ModelUnavailable, Disposition::Permanent),
        408 | 504 => (ErrorCode::Timeout, retry),
        429 => (ErrorCode::RateLimited, retry),
        503 | 529 => (ErrorCode::ModelUnavailable, retry),
        500..=599 => (ErrorCode::ProviderError, retry),
        _ => (ErrorCode::ProviderError, Disposition::Permanent),
    }
}

/// A failed answer's code and disposition: what the provider said, else its HTTP status.
/// `after`: the provider's retry hint.
pub fn classify(
    status: u16,
    said: Option<Said>,
    after: Option<Duration>,
) -> (ErrorCode, Disposition) {
    match said {
        Some(said) => said.class(after),
        None => by_status(status, after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../../docs/providers.md");

    /// The rows of the doc's table headed `heading`: cells, trimmed, code spans unwrapped.
    fn rows(heading: &str) -> Vec<Vec<String>> {
        let start = DOC
            .find(heading)
            .unwrap_or_else(|| panic!("docs/providers.md has no `{heading}`"));
        DOC[start..]
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .filter(|line| !line.starts_with("|---"))
            .map(|line| {
                line.trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().replace('`', ""))
                    .collect()
            })
            .collect()
    }

    fn disposition_word(disposition: Disposition) -> &'static str {
        match disposition {
            Disposition::Retry { .. } => "retry",
            Disposition::RotateKey => "rotate key",
            Disposition::Permanent => "permanent",
        }
    }

    #[test]
    fn the_status_table_in_the_docs_is_the_classifiers() {
        let table = rows("| HTTP status | code | disposition |");
        assert!(table.len() >= 9, "{table:?}");
        let mut listed = Vec::new();
        for row in &table {
            let (code, disposition) = (&row[1], &row[2]);
            let statuses: Vec<u16> = match row[0].as_str() {
                "other 5xx" => (500..=599).filter(|s| !listed.contains(s)).collect(),
                "anything else" => (100..=599).filter(|s| !listed.contains(s)).collect(),
                cell => cell
                    .split(',')
                    .map(|s| s.trim().parse().expect("a status"))
                    .collect(),
            };
            for status in statuses {
                let (got, how) = classify(status, None, None);
                assert_eq!(got.as_str(), code, "HTTP {status}");
                assert_eq!(disposition_word(how), disposition, "HTTP {status}");
                listed.push(status);
            }
        }
        assert_eq!(
            listed.len(),
            500,
            "every status from 100 to 599 is in one row"
        );
    }

    #[test]
    fn the_provider_error_table_in_the_docs_is_the_classifiers() {
        let table = rows("| the provider says | code | disposition |");
        assert_eq!(table.len(), Said::ALL.len(), "{table:?}");
        for (row, said) in table.iter().zip(Said::ALL) {
            let (code, how) = said.class(None);
            assert_eq!(code.as_str(), row[1], "{said:?}");
            assert_eq!(disposition_word(how), row[2], "{said:?}");
            // Each provider's words in that row map to it.
            for (column, said_by) in [
                (3, super::super::anthropic::said as fn(&str) -> Option<Said>),
                (4, super::super::gemini::said),
            ] {
                for word in row[column]
                    .split(',')
                    .map(str::trim)
                    .filter(|w| !w.is_empty() && *w != "—")
                {
                    assert_eq!(said_by(word), Some(said), "column {column}: {word}");
                }
            }
        }
    }

    #[test]
    fn what_the_provider_says_outranks_the_status() {
        assert_eq!(
            classify(400, Some(Said::KeyRejected), None),
            (ErrorCode::AuthFailed, Disposition::RotateKey)
        );
        let after = Some(Duration::from_secs(2));
        assert_eq!(
            classify(500, Some(Said::RateLimited), after),
            (ErrorCode::RateLimited, Disposition::Retry { after })
        );
        assert_eq!(
            classify(418, None, None),
            (ErrorCode::ProviderError, Disposition::Permanent)
        );
    }
}

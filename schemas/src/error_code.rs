//! The stable error codes a failed result carries.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a job failed. The string forms (`INVALID_REQUEST`, ...) are the stable wire contract;
/// a newer worker may add codes, which an older reader decodes as [`ErrorCode::Unknown`]
/// (the error's [`ErrorInfo::code_text`](crate::ErrorInfo::code_text) keeps the text): an
/// error all the same, never a result dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The job is malformed or asks for something impossible (bad schema, bad image, ...).
    InvalidRequest,
    /// The plugin may not do what the job asks.
    NotAuthorized,
    /// The model alias is not configured.
    ModelUnresolved,
    /// The resolved model is not available at the provider.
    ModelUnavailable,
    /// A rate limit stopped the job and its deadline did not allow waiting.
    RateLimited,
    /// Every credential for the provider is cooling down or disabled.
    CredentialsExhausted,
    /// The provider rejected the credential.
    AuthFailed,
    /// A provider attempt timed out.
    Timeout,
    /// The job's deadline passed.
    DeadlineExceeded,
    /// The model's answer did not parse or did not match the job's schema.
    OutputInvalid,
    /// The provider failed in a way not covered above.
    ProviderError,
    /// The job or its batch was cancelled.
    Cancelled,
    /// The plugin's budget is spent.
    BudgetExceeded,
    /// A fault inside Quarry.
    Internal,
    /// A code this version does not know, from a newer worker. Never written by a worker;
    /// not in [`ErrorCode::ALL`].
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidRequest,
        ErrorCode::NotAuthorized,
        ErrorCode::ModelUnresolved,
        ErrorCode::ModelUnavailable,
        ErrorCode::RateLimited,
        ErrorCode::CredentialsExhausted,
        ErrorCode::AuthFailed,
        ErrorCode::Timeout,
        ErrorCode::DeadlineExceeded,
        ErrorCode::OutputInvalid,
        ErrorCode::ProviderError,
        ErrorCode::Cancelled,
        ErrorCode::BudgetExceeded,
        ErrorCode::Internal,
    ];

    /// The wire string, e.g. `"INVALID_REQUEST"`; also a bounded metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::NotAuthorized => "NOT_AUTHORIZED",
            ErrorCode::ModelUnresolved => "MODEL_UNRESOLVED",
            ErrorCode::ModelUnavailable => "MODEL_UNAVAILABLE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::CredentialsExhausted => "CREDENTIALS_EXHAUSTED",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::OutputInvalid => "OUTPUT_INVALID",
            ErrorCode::ProviderError => "PROVIDER_ERROR",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::BudgetExceeded => "BUDGET_EXCEEDED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// Whether the same job submitted again may succeed: the default `retryable` of a result.
    pub const fn default_retryable(self) -> bool {
        match self {
            ErrorCode::RateLimited
            | ErrorCode::CredentialsExhausted
            | ErrorCode::Timeout
            | ErrorCode::ModelUnavailable
            | ErrorCode::ProviderError
            | ErrorCode::Internal => true,
            ErrorCode::InvalidRequest
            | ErrorCode::NotAuthorized
            | ErrorCode::ModelUnresolved
            | ErrorCode::AuthFailed
            | ErrorCode::DeadlineExceeded
            | ErrorCode::OutputInvalid
            | ErrorCode::Cancelled
            | ErrorCode::BudgetExceeded
            | ErrorCode::Unknown => false,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

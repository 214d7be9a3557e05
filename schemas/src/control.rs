//! Control messages (`control.v1`): what a plugin asks of the fleet rather than of a model.
//! Published to the exchange `{ns}.control`; a worker applies the request for the publishing
//! plugin (its broker-validated `user_id`) and answers a [`ControlReply`] to `reply_to`.

use crate::{ErrorInfo, Status};
use serde::{Deserialize, Serialize};

/// Wire version tag of a control message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlVersion {
    /// `control.v1`
    #[default]
    #[serde(rename = "control.v1")]
    V1,
}

/// What a control message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Jobs of the batch not yet started end `CANCELLED`; jobs in flight finish.
    CancelBatch,
    /// The batch's progress counters: results stored so far by outcome, and tokens.
    BatchStatus,
}

/// A control request. Mirrors `json/control.v1.schema.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// Always [`ControlVersion::V1`].
    pub version: ControlVersion,
    /// The request.
    pub action: ControlAction,
    /// The batch it applies to (one of the publishing plugin's own).
    pub batch_id: String,
}

impl ControlRequest {
    /// Cancels `batch_id`.
    pub fn cancel_batch(batch_id: impl Into<String>) -> Self {
        Self::new(ControlAction::CancelBatch, batch_id)
    }

    /// Asks for the progress of `batch_id`.
    pub fn batch_status(batch_id: impl Into<String>) -> Self {
        Self::new(ControlAction::BatchStatus, batch_id)
    }

    /// What the types cannot say: `batch_id` is 1 to
    /// [`MAX_BATCH_ID_LEN`](crate::job::limits::MAX_BATCH_ID_LEN) characters.
    pub fn check(&self) -> Result<(), crate::job::JobInvalid> {
        let n = self.batch_id.chars().count();
        if !(1..=crate::job::limits::MAX_BATCH_ID_LEN).contains(&n) {
            return Err(crate::job::JobInvalid {
                field: "/batch_id".into(),
                reason: format!(
                    "length {n} is outside 1..={}",
                    crate::job::limits::MAX_BATCH_ID_LEN
                ),
            });
        }
        Ok(())
    }

    fn new(action: ControlAction, batch_id: impl Into<String>) -> Self {
        Self {
            version: ControlVersion::V1,
            action,
            batch_id: batch_id.into(),
        }
    }
}

/// The answer to a control request. Mirrors `json/control-reply.v1.schema.json`; ignores
/// fields a newer worker adds (`docs/wire-contract.md`, "Compatibility").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Always [`ControlVersion::V1`].
    pub version: ControlVersion,
    /// The request answered.
    pub action: ControlAction,
    /// Its batch.
    pub batch_id: String,
    /// `ok`: applied fleet-wide; `error`: see `error`.
    pub status: Status,
    /// Why the request was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// `batch_status`: results stored so far, by outcome (`ok` or an error code), and
    /// `tokens`. Empty for a batch the fleet has no record of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<std::collections::BTreeMap<String, u64>>,
    /// `batch_status`: what the stored results cost, US dollars (to the nanodollar), from
    /// the workers' price table; absent when none of them had a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

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
    /// The caller's own view of the fleet ([`Description`]): what it may run on, its
    /// defaults, profiles and quotas, and the contract the fleet speaks. Takes no batch.
    Describe,
    /// One job (`job_id`, in `batch_id` when it has one): not started, it ends `CANCELLED`
    /// without a call; in flight, its provider call is dropped and it ends `CANCELLED`;
    /// finished, it keeps its result.
    CancelJob,
}

/// A control request. Mirrors `json/control.v1.schema.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// Always [`ControlVersion::V1`].
    pub version: ControlVersion,
    /// The request.
    pub action: ControlAction,
    /// The batch it applies to (one of the publishing plugin's own): required by the batch
    /// actions, refused by `describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// The job `cancel_job` applies to (one of the publishing plugin's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
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

    /// Asks for the caller's view of the fleet.
    pub fn describe() -> Self {
        Self {
            version: ControlVersion::V1,
            action: ControlAction::Describe,
            batch_id: None,
            job_id: None,
        }
    }

    /// Cancels one job, of `batch_id` when it was published in one.
    pub fn cancel_job(job_id: impl Into<String>, batch_id: Option<String>) -> Self {
        Self {
            version: ControlVersion::V1,
            action: ControlAction::CancelJob,
            batch_id,
            job_id: Some(job_id.into()),
        }
    }

    /// What the types cannot say: a batch action's `batch_id` is 1 to
    /// [`MAX_BATCH_ID_LEN`](crate::job::limits::MAX_BATCH_ID_LEN) characters; `describe`
    /// takes none.
    pub fn check(&self) -> Result<(), crate::job::JobInvalid> {
        let refused = |field: &str, reason: &str| crate::job::JobInvalid {
            field: field.into(),
            reason: reason.into(),
        };
        match (self.action, &self.job_id) {
            (ControlAction::CancelJob, None) => return Err(refused("/job_id", "is required")),
            (ControlAction::CancelJob, Some(id)) => {
                let n = id.chars().count();
                if !(1..=crate::job::limits::MAX_ID_LEN).contains(&n) {
                    return Err(refused("/job_id", "must be 1 to 128 characters"));
                }
            }
            (_, Some(_)) => return Err(refused("/job_id", "only cancel_job takes a job")),
            (_, None) => {}
        }
        let batch_id = match (self.action, &self.batch_id) {
            (ControlAction::Describe, None) | (ControlAction::CancelJob, None) => return Ok(()),
            (ControlAction::Describe, Some(_)) => {
                return Err(crate::job::JobInvalid {
                    field: "/batch_id".into(),
                    reason: "describe takes no batch".into(),
                });
            }
            (ControlAction::CancelBatch | ControlAction::BatchStatus, None) => {
                return Err(crate::job::JobInvalid {
                    field: "/batch_id".into(),
                    reason: "is required".into(),
                });
            }
            (
                ControlAction::CancelBatch | ControlAction::BatchStatus | ControlAction::CancelJob,
                Some(id),
            ) => id,
        };
        let n = batch_id.chars().count();
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
            batch_id: Some(batch_id.into()),
            job_id: None,
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
    /// Its batch (batch actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Its job (`cancel_job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
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
    /// `describe`: the caller's view of the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Description>,
}

/// What a `describe` reply carries: the caller's own view of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The message versions this fleet reads and writes (`job.v1`, `result.v1`, `control.v1`).
    pub contract: Vec<String>,
    /// What this fleet's workers do beyond the first `job.v1` (`json_mode`, `targets`,
    /// `agent_id`, `reasoning`, `finish_reason`, `exact_metadata`, `describe`, ...).
    pub capabilities: Vec<String>,
    /// The caller, as the fleet knows it.
    pub plugin: String,
    /// The alias a job without `model` runs on.
    pub default_model: String,
    /// Whether a job may choose another alias, or a target.
    pub model_override: bool,
    /// The aliases it may run on (its default, or every one with `model_override`), each with
    /// the targets it may be dispatched to, in order.
    pub aliases: Vec<AliasView>,
    /// The `provider/model` targets a job may name (with `model_override`).
    pub targets: Vec<TargetView>,
    /// The credential profile a job without one gets.
    pub default_profile: String,
    /// Every profile it may ask for.
    pub profiles: Vec<String>,
    /// Whether a job may name its agent (`agent_id`).
    pub agent_id_override: bool,
    /// The plugin's `max_tokens` ceiling, if any.
    pub max_tokens_ceiling: Option<u32>,
    /// `max_tokens` a job without one gets (before a provider's own default).
    pub default_max_tokens: u32,
    /// A job's time budget without `deadline_ms`, milliseconds.
    pub job_budget_ms: u64,
    /// Its quotas, each with what is left now.
    pub quotas: Vec<QuotaView>,
}

/// An alias and the targets it may be dispatched to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasView {
    /// The alias.
    pub name: String,
    /// Its targets the caller may reach, primary first, then fallbacks.
    pub targets: Vec<TargetView>,
}

/// One provider's model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    /// A configured provider.
    pub provider: String,
    /// Its model id.
    pub model: String,
    /// Whether it takes image input.
    pub images: bool,
}

/// One quota of the caller and what is left of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaView {
    /// `requests_per_minute`, `tokens_per_minute` or `daily_tokens`.
    pub name: String,
    /// The limit.
    pub limit: u64,
    /// What is left in the current window or day (absent when Redis did not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

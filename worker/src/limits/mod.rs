//! Every limit the fleet keeps, in one place:
//!
//! - [`limiter`]: the Redis limiter, one atomic decision per attempt over window, concurrency
//!   and day buckets (`functions/reserve.lua`, `finish.lua`, `status.lua`).
//! - [`admission`]: what one provider attempt is charged — the plugin's quotas, the key pool
//!   and its per-key and per-model limits — which key serves it, and what a failure does to
//!   the key (cooldown after a 429, out of rotation after repeated credential refusals).
//!
//! Not here: a provider's own retry hints (`Retry-After` and kin), which are part of its
//! answer ([`crate::providers::retry_hint`]), and the retry policy that uses them
//! ([`crate::retry`]).

pub mod admission;
pub mod limiter;

pub(crate) use admission::Quota;

pub use limiter::{
    Bucket, Candidate, CandidateStatus, Charge, Decision, Limiter, Reservation, Settlement, Unit,
};

//! A scenario's report: what was delivered, lost, repeated; printed and written as JSON.

use std::collections::BTreeMap;

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) expected: usize,
    pub(crate) delivered: usize,
    pub(crate) duplicates_delivered: usize,
    pub(crate) duplicates_dropped_by_sdk: u64,
    pub(crate) producer_reconnects: usize,
    pub(crate) lost: usize,
    pub(crate) ok: usize,
    pub(crate) errors_by_code: BTreeMap<String, usize>,
    pub(crate) provider_calls: u64,
    pub(crate) calls_per_job_mean: f64,
    pub(crate) calls_per_job_max: u32,
    pub(crate) unexplained_repeat_calls: u64,
    pub(crate) faults_injected: u64,
    pub(crate) fault_events: usize,
    pub(crate) longest_stall_secs: f64,
    pub(crate) worker_crashes: usize,
    pub(crate) unclean_exits: usize,
    pub(crate) bad_inputs: usize,
    pub(crate) bad_inputs_handled: usize,
    pub(crate) bad_input_misses: Vec<String>,
    pub(crate) wall_secs: f64,
    pub(crate) passed: bool,
    pub(crate) failures: Vec<String>,
}

pub(crate) fn print_report(r: &Report) {
    eprintln!(
        "   delivered {}/{} (ok {}, errors {:?}), duplicates delivered {}, dropped by the SDK {}, lost {}, producer reconnections {}",
        r.delivered,
        r.expected,
        r.ok,
        r.errors_by_code,
        r.duplicates_delivered,
        r.duplicates_dropped_by_sdk,
        r.lost,
        r.producer_reconnects
    );
    eprintln!(
        "   provider calls {} (mean {:.3}/job, max {}), repeats not explained by a retried fault {}, faults injected {}",
        r.provider_calls,
        r.calls_per_job_mean,
        r.calls_per_job_max,
        r.unexplained_repeat_calls,
        r.faults_injected
    );
    eprintln!(
        "   fault events {}, longest stall {:.1} s, worker crashes {}, unclean exits {}, bad inputs handled {}/{}, {:.1} s",
        r.fault_events,
        r.longest_stall_secs,
        r.worker_crashes,
        r.unclean_exits,
        r.bad_inputs_handled,
        r.bad_inputs,
        r.wall_secs
    );
    for miss in &r.bad_input_misses {
        eprintln!("   bad input not handled: {miss}");
    }
    for failure in &r.failures {
        eprintln!("   FAIL: {failure}");
    }
}

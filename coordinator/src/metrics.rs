//! Prometheus metrics: every name the coordinator exports, in one place.
//!
//! The runtime reports through the functions below (the `metrics` facade:
//! without an installed recorder they cost next to nothing, which is the
//! case in tests and simulation). `concord serve --metrics-listen ADDR`
//! installs the Prometheus exporter, which serves `/metrics` on its own
//! port. docs/operations.md lists the metrics and what to alert on.

use std::net::SocketAddr;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::model::{TxnKind, TxnState};
use crate::protocol::two_phase::Decision;

/// Latency buckets, in seconds: from a loopback round trip to a slow
/// participant's deadline.
const SECONDS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Records per log batch: one to the writer's cap.
const RECORDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Calls per `Participant.Batch` call: one to the batch limit.
const CALLS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Serves `/metrics` on `listen` from now on (for the life of the process).
pub fn install(listen: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets(SECONDS)?
        .set_buckets_for_metric(Matcher::Full("concord_log_batch_records".into()), RECORDS)?
        .set_buckets_for_metric(
            Matcher::Full("concord_participant_batch_calls".into()),
            CALLS,
        )?
        .install()
}

fn kind_label(kind: TxnKind) -> &'static str {
    match kind {
        TxnKind::TwoPhase => "2pc",
        TxnKind::Saga => "saga",
        TxnKind::Message => "message",
    }
}

/// A transaction or saga was begun (its first record is durable).
pub(crate) fn begun(kind: TxnKind) {
    counter!("concord_transactions_begun_total", "kind" => kind_label(kind)).increment(1);
}

/// A transaction or saga ended (its end record is durable), by outcome:
/// committed, aborted, completed, compensated or failed.
pub(crate) fn ended(kind: TxnKind, state: TxnState) {
    counter!(
        "concord_transactions_total",
        "kind" => kind_label(kind),
        "outcome" => state.as_str()
    )
    .increment(1);
}

/// How long one phase took, in seconds: `commit` (a Commit call until its
/// outcome is announced: prepare round and decision write), `decision_write`
/// (the forced COMMITTED record), `phase2` (decision until every branch
/// acknowledged), `saga` (submission until the end).
pub(crate) fn phase(phase: &'static str, seconds: f64) {
    histogram!("concord_phase_seconds", "phase" => phase).record(seconds);
}

/// One log batch: its records and how long its database transaction took.
pub(crate) fn log_batch(records: usize, seconds: f64) {
    histogram!("concord_log_batch_records").record(records as f64);
    histogram!("concord_log_write_seconds").record(seconds);
}

/// One `Participant.Batch` call went out carrying `calls` calls.
pub(crate) fn call_batch(calls: usize) {
    histogram!("concord_participant_batch_calls").record(calls as f64);
}

/// A write to the log failed (the store's error): nothing in it was
/// applied, and its callers write again.
pub(crate) fn log_write_failure() {
    counter!("concord_log_write_failures_total").increment(1);
}

/// A recovered transaction sends its decision to a branch: perhaps again,
/// since a participant's acknowledgement before the restart is not logged
/// (one write per branch saved on every transaction's path; the ledger
/// answers a repeat as a duplicate).
pub(crate) fn redelivery(decision: Decision) {
    let decision = match decision {
        Decision::Commit => "commit",
        Decision::Abort => "abort",
    };
    counter!("concord_redeliveries_total", "decision" => decision).increment(1);
}

/// Records refused because another node owns their transaction now.
pub(crate) fn fenced(records: usize) {
    counter!("concord_fenced_transactions_total").increment(records as u64);
}

/// A retry after backoff: `delivery` (phase 2), `step`, `compensation`,
/// `log_write`.
pub(crate) fn retry(what: &'static str) {
    counter!("concord_retries_total", "what" => what).increment(1);
}

/// What is in memory now: transactions and sagas in flight, and of those
/// the decided 2PC transactions still delivering (the phase-2 backlog).
pub(crate) fn in_flight(two_phase: usize, sagas: usize, messages: usize, phase2_backlog: usize) {
    gauge!("concord_in_flight", "kind" => "2pc").set(two_phase as f64);
    gauge!("concord_in_flight", "kind" => "saga").set(sagas as f64);
    gauge!("concord_in_flight", "kind" => "message").set(messages as f64);
    gauge!("concord_phase2_backlog").set(phase2_backlog as f64);
}

/// Transactions loaded by recovery or takeover and not finished yet.
pub(crate) fn recovery_backlog(count: usize) {
    gauge!("concord_recovery_backlog").set(count as f64);
}

/// Finished transactions removed from the log past the retention.
pub(crate) fn pruned(count: u64) {
    counter!("concord_pruned_transactions_total").increment(count);
}

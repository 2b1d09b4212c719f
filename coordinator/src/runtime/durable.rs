//! Forcing records into the log until they are durable, whatever the
//! protocol: a decision or an end cannot be dropped (R1, R3), so a failing
//! store is retried with capped backoff and jitter for as long as it
//! fails, the clients waiting told UNAVAILABLE after `log_write_attempts`
//! failures, and a write refused because another node took the
//! transaction over (fenced, DESIGN §6) reported as such.

use backon::BackoffBuilder;

use crate::metrics;
use crate::runtime::log::LogError;
use crate::runtime::shared::Shared;
use crate::store::Record;

/// Clients held up until a write is durable, told when it keeps failing
/// and when it went through after all (a 2PC transaction's waiting
/// clients, `LiveTxn`).
pub(in crate::runtime) trait Waiting: Sync {
    /// The write failed `failures` times in a row: answer UNAVAILABLE.
    fn report_undurable(&self, failures: u32, error: &str);
    /// It went through after being reported failing.
    fn durable_again(&self);
}

/// How [`write_until_durable`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::runtime) enum Written {
    Durable,
    /// The coordinator is shutting down; recovery finishes the transaction.
    Stopped,
    /// Another node owns the transaction now; nothing was written.
    Fenced,
}

/// Writes `records`, retrying with capped backoff while the store fails.
pub(in crate::runtime) async fn write_until_durable(
    shared: &Shared,
    records: Vec<Record>,
) -> Written {
    write_until_durable_as(shared, records, Urgency::Forced, None).await
}

/// Whether anyone is held up until a write is durable (see
/// [`LogWriter::submit_lazy`](crate::runtime::log::LogWriter::submit_lazy)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::runtime) enum Urgency {
    Forced,
    Lazy,
}

/// Writes `records` until they are durable: the decision or end of a
/// transaction cannot be dropped (R1, R3), so a failing store is retried
/// with capped backoff and jitter for as long as it fails. Not silently:
/// each failure is counted (`concord_log_write_failures_total`) and makes
/// the node NOT_SERVING (`LogWriter::health`), and after
/// `log_write_attempts` failures the clients `waiting` are answered
/// UNAVAILABLE with the store's error ([`Waiting::report_undurable`]).
pub(in crate::runtime) async fn write_until_durable_as(
    shared: &Shared,
    records: Vec<Record>,
    urgency: Urgency,
    waiting: Option<&dyn Waiting>,
) -> Written {
    let mut delays = shared.config.retry.build();
    let mut failures: u32 = 0;
    loop {
        let attempt = match urgency {
            Urgency::Forced => shared.log.submit(records.clone()),
            Urgency::Lazy => shared.log.submit_lazy(records.clone()),
        }
        .wait();
        let result = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return Written::Stopped,
            result = attempt => result,
        };
        match result {
            Ok(()) => {
                if let Some(waiting) =
                    waiting.filter(|_| failures >= shared.config.log_write_attempts)
                {
                    waiting.durable_again();
                }
                return Written::Durable;
            }
            Err(LogError::Fenced) => return Written::Fenced,
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == shared.config.log_write_attempts
                    && let Some(waiting) = waiting
                {
                    waiting.report_undurable(failures, &error.to_string());
                }
                metrics::retry("log_write");
                let delay = delays.next().unwrap_or(shared.config.retry_max_delay);
                tracing::warn!(%error, ?delay, "log write failed; retrying");
                tokio::select! {
                    () = shared.shutdown.cancelled() => return Written::Stopped,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

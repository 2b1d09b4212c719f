//! The runtime's periodic work: transactions past their timeout abort
//! (R5), the in-flight gauges are refreshed, first writes that failed
//! ambiguously are ended if the log holds them after all (R2), and ended
//! transactions past the retention leave the log.

use crate::model::TxnId;
use crate::model::TxnKind;
use crate::model::TxnState;
use crate::protocol::two_phase::Event;
use crate::runtime::log::LogError;
use crate::runtime::shared::Shared;
use crate::runtime::two_phase::driver;
use crate::runtime::two_phase::live::LiveTxn;
use crate::store::Record;
use std::sync::Arc;
use std::time::Duration;

/// How often the records of failed first writes are looked for.
const DOUBTFUL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Looks for the records of failed first writes every
/// [`DOUBTFUL_CHECK_EVERY`], in a task of its own: its reads wait on the
/// store, which is likely failing just then, and must not hold up the
/// sweeper's timeouts (R5).
pub(super) async fn end_doubtful_writes(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(DOUBTFUL_CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        end_doubtful(&shared).await;
    }
}

/// R2 for a first write that failed ambiguously: the client was told
/// UNAVAILABLE and nobody learned the id, so nothing was sent to any
/// participant and no step ran; if the store holds the records all the
/// same, they are ended here (aborted; a saga compensated with nothing to
/// undo) instead of waiting, unfinished and owned by a live node, for a
/// restart. A read or write that fails is tried again at the next check,
/// with every id not looked at yet: the store is failing, and one wait a
/// check is enough.
async fn end_doubtful(shared: &Arc<Shared>) {
    let ids = std::mem::take(
        &mut *shared
            .doubtful
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    let mut again = Vec::new();
    let mut ids = ids.into_iter();
    while let Some(id) = ids.next() {
        let view = match shared.store.transaction(&id).await {
            Ok(Some(view)) if !view.state.is_terminal() => view,
            // Never written, or ended already.
            Ok(_) => continue,
            Err(_) => {
                again.push(id);
                again.extend(ids);
                break;
            }
        };
        tracing::warn!(%id, "a first write reported failed is in the log after all; ending it (R2)");
        let (state, reason) = match view.kind {
            TxnKind::TwoPhase => (
                TxnState::Aborted,
                "its Begin was answered UNAVAILABLE (the log's answer was lost); presumed aborted",
            ),
            TxnKind::Saga => (
                TxnState::Compensated,
                "its SubmitSaga was answered UNAVAILABLE (the log's answer was lost); no step ran",
            ),
            // Never noted doubtful: a message whose first write failed
            // stays in memory and its check-back decides it (runtime::send).
            TxnKind::Message => continue,
        };
        let record = Record::Ended {
            id,
            state,
            at_ms: shared.config.clock.now_ms(),
            read_only: false,
            reason: Some(reason.into()),
            branches: view
                .branches
                .iter()
                .enumerate()
                .map(|(idx, _)| crate::store::BranchEnd {
                    idx: u32::try_from(idx).unwrap_or(u32::MAX),
                    state: crate::model::BranchState::Aborted,
                    vote: None,
                    attempts: 0,
                    last_error: None,
                })
                .collect(),
            steps: Vec::new(),
        };
        match shared.log.force(vec![record]).await {
            Ok(()) => crate::metrics::ended(view.kind, state),
            // Another node took it over (DESIGN §6) and finishes it.
            Err(LogError::Fenced) => {}
            Err(_) => {
                again.push(id);
                again.extend(ids);
                break;
            }
        }
    }
    shared
        .doubtful
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .extend(again);
}

/// Removes finished transactions past the retention, a thousand at a time,
/// once a minute. Every removal is logged and counted: nothing leaves the
/// log silently.
pub(super) async fn prune(shared: Arc<Shared>) {
    const BATCH: u32 = 1_000;
    let Some(retention) = shared.config.retention else {
        return;
    };
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let mut ticks = tokio::time::interval(Duration::from_secs(60));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let cutoff = shared.config.clock.now_ms().saturating_sub(retention_ms);
        let begun_before = TxnId::from_parts(cutoff, 0);
        let mut removed = 0u64;
        loop {
            match shared.store.prune(&begun_before, cutoff, BATCH).await {
                Ok(count) => {
                    removed += count;
                    if count < u64::from(BATCH) || shared.shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not remove finished transactions; next minute");
                    break;
                }
            }
        }
        if removed > 0 {
            crate::metrics::pruned(removed);
            tracing::info!(
                removed,
                retention_days = retention_ms / 86_400_000,
                "removed finished transactions past the retention"
            );
        }
    }
}

/// Aborts transactions whose timeout passed before they decided (R5), even
/// when no client calls.
pub(super) async fn sweep(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.config.sweep_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let phase2_backlog = shared
            .live
            .iter()
            .filter(|txn| txn.progress.borrow().outcome.is_some())
            .count();
        crate::metrics::in_flight(
            shared.live.len(),
            shared.sagas.len(),
            shared.messages.len(),
            phase2_backlog,
        );
        crate::metrics::recovery_backlog(
            shared
                .recovery_backlog
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let now = shared.config.clock.now_ms();
        let expired: Vec<Arc<LiveTxn>> = shared
            .live
            .iter()
            .filter(|txn| txn.header.deadline_ms <= now)
            .map(|txn| Arc::clone(&txn))
            .collect();
        for txn in expired {
            let mut inner = txn.lock();
            if let Ok(effects) = inner.machine.apply(Event::Expired) {
                if !effects.is_empty() {
                    tracing::info!(id = %txn.header.id, "transaction timed out before deciding; aborting");
                }
                driver::dispatch(&shared, &txn, &mut inner, effects);
            }
        }
    }
}

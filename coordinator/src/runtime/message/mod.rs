//! Transactional messages at run time (DESIGN §10): a message in memory
//! ([`LiveMessage`]), the task that drives it — the check-back when its
//! producer is silent past `check_after` (M2, M6), then a delivery to every
//! destination, retried with backoff until acknowledged (M3) — and the
//! per-key order of deliveries (M5, [`Orders`]).
//!
//! The state machine is `protocol::message`; it is touched only under the
//! message's lock, never across an `.await`. The driver reads what the
//! machine owes (a check-back, deliveries) and feeds the answers back.
//!
//! What is written, and when (the log's side of §10):
//! - `MessagePrepared`, forced before PrepareMessage answers.
//! - `MessageDecided`, lazily: the producer's outbox row decides a message,
//!   not this record; a crash before it lands leaves the message PREPARED,
//!   and its check-back finds the same row (M2). A message with an ordering
//!   key is delivered only once it is durable, so that its place among its
//!   key's messages (`ordering_seq`) outlives a restart.
//! - `Ended`, DROPPED forced before anyone is told, DELIVERED lazily (a lost
//!   end means the deliveries are made again, and the destinations' ledgers
//!   absorb them, M4).

pub(crate) mod live;
mod send;

use live::{ATTENTION_AFTER, destination_state};
pub use live::{LiveMessage, MessageInner, Orders, PRODUCER, state_of, via_of};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use crate::metrics;
use crate::model::{OperatorAction, Resolution, TxnKind, message_via_str};
use crate::protocol::message::{CheckAnswer, DestinationPhase, Effect, Event, Phase};
use crate::store::{BranchEnd, Record};

use crate::runtime::durable::{Urgency, Written, write_until_durable_as};
use crate::runtime::participants::BranchCall;
use crate::runtime::shared::Shared;

/// Records that the producer's local transaction committed (`via`): the
/// machine has moved to DELIVERING and returned `effects`. Queues the
/// decision's record (with the message's place in its key's order, taken
/// under the same lock as the record is queued so that the two agree) and
/// wakes the driver.
pub(super) fn decided(
    shared: &Shared,
    message: &Arc<LiveMessage>,
    inner: &mut MessageInner,
    effects: &[Effect],
) {
    let Some(via) = effects.iter().find_map(|effect| match effect {
        Effect::LogDecided { via } => Some(*via),
        _ => None,
    }) else {
        return;
    };
    let at_ms = shared.config.clock.now_ms();
    inner.decided_at_ms = Some(at_ms);
    inner.reason = Some(message_via_str(via).to_owned());
    let write = |ordering_seq| {
        let record = Record::MessageDecided {
            id: message.header.id,
            at_ms,
            via,
            ordering_seq,
        };
        (shared.log.submit_lazy(vec![record.clone()]), record)
    };
    let (durable, record) = match message.ordering_key.as_deref() {
        Some(key) => shared.orders.enqueue(key, message, |seq| write(Some(seq))),
        None => write(None),
    };
    if let Record::MessageDecided { ordering_seq, .. } = &record {
        inner.ordering_seq = *ordering_seq;
    }
    inner.decision_write = Some((durable, record));
    message.wake.notify_one();
}

/// What an operator's durable decision does to a message (M6): for its
/// producer, the answer its check-back could not get (committed: deliver;
/// aborted: drop); for a destination, that it took the message (its
/// delivery stops). Applied once the action is durable, and again by
/// recovery, where it changes nothing that already happened.
pub(super) fn apply_action(shared: &Shared, message: &Arc<LiveMessage>, action: &OperatorAction) {
    let mut inner = message.lock();
    if action.branch == PRODUCER {
        let answer = if action.outcome == Resolution::Committed {
            CheckAnswer::Committed
        } else {
            CheckAnswer::RolledBack
        };
        if let Ok(effects) = inner.machine.apply(Event::Resolved(answer)) {
            if effects.contains(&Effect::LogEnded {
                phase: Phase::Dropped,
            }) {
                inner.reason = Some(format!(
                    "dropped by an operator ({}): {}",
                    action.operator, action.reason
                ));
            }
            decided(shared, message, &mut inner, &effects);
        }
        drop(inner);
        message.wake.notify_one();
        return;
    }
    if let Some(idx) = message
        .destinations
        .iter()
        .position(|d| d.name == action.branch)
    {
        let _ = inner
            .machine
            .apply(Event::Acknowledged { destination: idx });
        drop(inner);
        message.progress.send_modify(|n| *n += 1);
        message.retries.now();
    }
}

/// Starts the message's driver on the runtime's tasks.
pub(super) fn start(shared: &Arc<Shared>, message: Arc<LiveMessage>) {
    let span = tracing::info_span!("message", id = %message.header.id);
    shared
        .tasks
        .spawn(drive(Arc::clone(shared), message).instrument(span));
}

/// Drives one message to its end: waits for its producer to submit, asks
/// the producer when it does not in time, then delivers.
async fn drive(shared: Arc<Shared>, message: Arc<LiveMessage>) {
    let Some(phase) = until_decided(&shared, &message).await else {
        return;
    };
    if phase == Phase::Delivering && !deliver_all(&shared, &message).await {
        return;
    }
    end(&shared, &message).await;
}

/// Waits until the message is decided, asking the producer once its
/// deadline passed (M6); returns where it ended up, or None at shutdown.
async fn until_decided(shared: &Shared, message: &Arc<LiveMessage>) -> Option<Phase> {
    let mut delays = shared.config.retry.build();
    let mut due = false;
    loop {
        let phase = message.lock().machine.phase();
        if phase != Phase::Prepared {
            return Some(phase);
        }
        if !due {
            let now = shared.config.clock.now_ms();
            let wait = Duration::from_millis(message.header.deadline_ms.saturating_sub(now));
            if !wait.is_zero() {
                tokio::select! {
                    () = shared.shutdown.cancelled() => return None,
                    () = message.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            due = true;
            if message.ordering_key.is_some() && !until_recovered(shared).await {
                return None;
            }
            let mut inner = message.lock();
            if inner.machine.apply(Event::CheckDue).is_err() {
                continue;
            }
        }
        let id = message.header.id.to_string();
        let answer = tokio::select! {
            () = shared.shutdown.cancelled() => return None,
            answer = shared.participants.check_message(
                &message.producer,
                id,
                shared.config.delivery_timeout,
            ) => answer,
        };
        let event = match answer {
            Ok(answer) => Event::CheckAnswered(answer),
            Err(error) => Event::CheckFailed {
                reason: error.to_string(),
            },
        };
        let failed = matches!(event, Event::CheckFailed { .. });
        {
            let mut inner = message.lock();
            if let Event::CheckFailed { reason } = &event {
                inner.check_attempts = inner.check_attempts.saturating_add(1);
                inner.check_error = Some(reason.clone());
                tracing::warn!(error = %reason, attempts = inner.check_attempts, "check-back failed; asking again");
                let attempts = inner.check_attempts;
                flag_if_stuck(shared, message, &mut inner, attempts);
            }
            match inner.machine.apply(event) {
                Ok(effects) => {
                    // Only when this answer dropped it: a late answer after a
                    // Submit changes nothing, its reason included.
                    if effects.contains(&Effect::LogEnded {
                        phase: Phase::Dropped,
                    }) {
                        inner.reason = Some(
                            "dropped: the check-back found no outbox row (the producer's local \
                             transaction did not commit, and its tombstone keeps it from \
                             committing)"
                                .into(),
                        );
                    }
                    decided(shared, message, &mut inner, &effects);
                }
                Err(rejected) => tracing::error!(%rejected, "check-back answer refused"),
            }
        }
        if failed {
            metrics::retry("check_back");
            let delay = delays.next().unwrap_or(shared.config.retry_max_delay);
            tokio::select! {
                () = shared.shutdown.cancelled() => return None,
                () = message.wake.notified() => {}
                () = message.retries.sleep(delay) => {}
            }
        }
    }
}

/// See `Runtime::until_recovered`; false at shutdown.
async fn until_recovered(shared: &Shared) -> bool {
    let mut recovered = shared.recovered.subscribe();
    tokio::select! {
        result = recovered.wait_for(|done| *done) => result.is_ok(),
        () = shared.shutdown.cancelled() => false,
    }
}

/// Flags the message NEEDS_ATTENTION once `failures` reach
/// [`ATTENTION_AFTER`]; the flag is recorded lazily, once.
fn flag_if_stuck(shared: &Shared, message: &LiveMessage, inner: &mut MessageInner, failures: u32) {
    if failures < ATTENTION_AFTER {
        return;
    }
    inner.needs_attention = true;
    if !inner.attention_recorded {
        inner.attention_recorded = true;
        drop(shared.log.submit_lazy(vec![Record::NeedsAttention {
            id: message.header.id,
        }]));
    }
}

/// Delivers to every destination until each acknowledged (M3). False at
/// shutdown or when another node took the message over.
async fn deliver_all(shared: &Shared, message: &Arc<LiveMessage>) -> bool {
    // M5: a keyed message's place in its key's order must outlive a
    // restart before anything of it is delivered.
    let write = message.lock().decision_write.take();
    if let Some((durable, record)) = write
        && message.ordering_key.is_some()
        && durable.wait().await.is_err()
    {
        match write_until_durable_as(shared, vec![record], Urgency::Lazy, None).await {
            Written::Durable => {}
            Written::Fenced => {
                taken_over(shared, message);
                return false;
            }
            Written::Stopped => return false,
        }
    }
    let mut calls: FuturesUnordered<_> = (0..message.destinations.len())
        .filter(|idx| message.lock().machine.destination(*idx) == Some(DestinationPhase::Owed))
        .map(|idx| deliver(shared, message, idx))
        .collect();
    while let Some(delivered) = calls.next().await {
        if !delivered {
            return false;
        }
    }
    true
}

/// Delivers to one destination until it acknowledges; false at shutdown.
async fn deliver(shared: &Shared, message: &Arc<LiveMessage>, idx: usize) -> bool {
    let destination = &message.destinations[idx];
    if let Some(key) = &message.ordering_key
        && !until_turn(shared, message, key, &destination.participant).await
    {
        return false;
    }
    let mut delays = shared.config.retry.build();
    loop {
        // An operator may have resolved it meanwhile (`apply_action`).
        if message.lock().machine.destination(idx) == Some(DestinationPhase::Acknowledged) {
            return true;
        }
        let call = BranchCall {
            transaction_id: message.header.id.to_string(),
            branch: destination.name.clone(),
            participant: destination.participant.clone(),
            payload: destination.payload.clone(),
        };
        let result = tokio::select! {
            () = shared.shutdown.cancelled() => return false,
            result = shared.participants.deliver(call, shared.config.delivery_timeout) => result,
        };
        {
            let mut inner = message.lock();
            inner.attempts[idx] = inner.attempts[idx].saturating_add(1);
            let event = match result {
                Ok(()) => Event::Acknowledged { destination: idx },
                Err(error) => {
                    let reason = error.to_string();
                    inner.last_errors[idx] = Some(reason.clone());
                    tracing::warn!(destination = %destination.name, error = %reason, "delivery failed; retrying");
                    let attempts = inner.attempts[idx];
                    flag_if_stuck(shared, message, &mut inner, attempts);
                    Event::DeliveryFailed {
                        destination: idx,
                        reason,
                    }
                }
            };
            let acknowledged = matches!(event, Event::Acknowledged { .. });
            if let Err(rejected) = inner.machine.apply(event) {
                tracing::error!(%rejected, "delivery answer refused");
            }
            if acknowledged {
                drop(inner);
                message.progress.send_modify(|n| *n += 1);
                return true;
            }
        }
        metrics::retry("message_delivery");
        let delay = delays.next().unwrap_or(shared.config.retry_max_delay);
        tokio::select! {
            () = shared.shutdown.cancelled() => return false,
            () = message.retries.sleep(delay) => {}
        }
    }
}

/// M5: waits until every message decided before this one with the same
/// key was acknowledged by `participant` (or ended). False at shutdown.
async fn until_turn(shared: &Shared, message: &LiveMessage, key: &str, participant: &str) -> bool {
    loop {
        let Some(earlier) = shared.orders.blocker(key, message, participant) else {
            return true;
        };
        let mut progress = earlier.progress.subscribe();
        // Looked at again after subscribing: an acknowledgement in between
        // would otherwise be missed.
        if !earlier.owes(participant) {
            continue;
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return false,
            changed = progress.changed() => {
                if changed.is_err() {
                    continue;
                }
            }
        }
    }
}

/// Writes the message's end (DROPPED forced, DELIVERED lazily: see the
/// module's note) and lets it go from memory.
async fn end(shared: &Shared, message: &Arc<LiveMessage>) {
    let (record, urgency) = {
        let inner = message.lock();
        let phase = inner.machine.phase();
        let branches = (0..message.destinations.len())
            .map(|idx| BranchEnd {
                idx: u32::try_from(idx).unwrap_or(u32::MAX),
                state: destination_state(phase, inner.machine.destination(idx)),
                vote: None,
                attempts: inner.attempts[idx],
                last_error: inner.last_errors[idx].clone(),
            })
            .collect();
        let record = Record::Ended {
            id: message.header.id,
            state: state_of(phase),
            at_ms: shared.config.clock.now_ms(),
            read_only: false,
            reason: inner.reason.clone(),
            branches,
            steps: Vec::new(),
        };
        let urgency = if phase == Phase::Dropped {
            Urgency::Forced
        } else {
            Urgency::Lazy
        };
        (record, urgency)
    };
    let state = state_of(message.lock().machine.phase());
    match write_until_durable_as(shared, vec![record], urgency, None).await {
        Written::Durable => {
            metrics::ended(TxnKind::Message, state);
            forget(shared, message);
            message.ended.send_replace(true);
        }
        Written::Fenced => taken_over(shared, message),
        Written::Stopped => {}
    }
}

/// Another node owns the message now (DESIGN §6): it drives it from the
/// log; this one lets it go.
fn taken_over(shared: &Shared, message: &Arc<LiveMessage>) {
    tracing::warn!(id = %message.header.id, "message taken over by another node; letting it go");
    message.taken_over.store(true, Ordering::SeqCst);
    forget(shared, message);
    message.ended.send_replace(true);
}

fn forget(shared: &Shared, message: &LiveMessage) {
    shared.messages.remove(&message.header.id);
    if let Some(key) = &message.header.idempotency_key {
        shared.keys().remove(key);
    }
    if let Some(key) = &message.ordering_key {
        shared.orders.remove(key, message);
    }
    message.progress.send_modify(|n| *n += 1);
}

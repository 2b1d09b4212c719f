//! The driver: the one task that executes a transaction's effects.
//!
//! A transaction has at most one driver at a time. It runs while there is
//! something to do — calls in flight, a decision to write, deliveries to
//! retry — and ends when there is nothing; `dispatch` starts a new one when
//! effects arrive for an idle transaction. Calls to branches run concurrently
//! inside the driver (no task per branch), and each call's answer goes back
//! into the state machine as an event.

use std::collections::VecDeque;
use std::sync::Arc;

use backon::BackoffBuilder;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use crate::metrics;
use crate::model::{TxnKind, TxnState, VoteKind};
use crate::protocol::two_phase::{Decision, Effect, Event, OnePhaseResult, Outcome, Vote};
use crate::store::Record;

use super::live::{Inner, LiveTxn};
use crate::runtime::crash;
use crate::runtime::durable::{Urgency, Written, write_until_durable_as};
use crate::runtime::log::LogError;
use crate::runtime::mailbox::Delivery;
use crate::runtime::participants::{AbortAnswer, CallError};
use crate::runtime::shared::Shared;

/// Hands `effects` to the transaction's driver, starting one if none runs.
/// Called with the transaction's lock held, right after the machine produced
/// the effects, so they are executed in protocol order.
pub(in crate::runtime) fn dispatch(
    shared: &Arc<Shared>,
    txn: &Arc<LiveTxn>,
    inner: &mut Inner,
    effects: Vec<Effect>,
) {
    match inner.mailbox.post(effects) {
        Delivery::Nothing => {}
        Delivery::WakeDriver => txn.wake.notify_one(),
        Delivery::StartDriver => {
            let span = tracing::info_span!("txn", txn = %txn.header.id);
            shared
                .tasks
                .spawn(drive(Arc::clone(shared), Arc::clone(txn)).instrument(span));
        }
    }
}

/// Applies an event the driver produced. Such events are never refused (only
/// client requests can be); a refusal would be a bug, logged, not spread.
fn apply(txn: &LiveTxn, event: Event) -> Vec<Effect> {
    match txn.lock().machine.apply(event) {
        Ok(effects) => effects,
        Err(rejected) => {
            tracing::error!(%rejected, "the protocol refused an event from the driver");
            Vec::new()
        }
    }
}

/// The transaction's driver task. Its future is the task's size for the
/// transaction's whole life, so the log writes it awaits now and then are
/// boxed (`Box::pin`): inline, their states would make every driver as
/// large as the largest of them while it only waits for calls
/// (docs/performance.md, memory per in-flight transaction).
async fn drive(shared: Arc<Shared>, txn: Arc<LiveTxn>) {
    let mut calls: FuturesUnordered<BoxFuture<'static, Event>> = FuturesUnordered::new();
    let mut queue: VecDeque<Effect> = VecDeque::new();
    loop {
        if !txn.lock().mailbox.take(&mut queue, calls.is_empty()) {
            return;
        }
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::SendPrepare(idx) => {
                    crash::point("2pc-before-prepare");
                    calls.push(Box::pin(prepare(
                        Arc::clone(&shared),
                        Arc::clone(&txn),
                        idx,
                    )));
                }
                Effect::SendOnePhase(idx) => {
                    // The participant's one-phase commit is the decision: the
                    // transaction must be in the log before it can happen, or
                    // a crash would leave a commit that the log presumes
                    // aborted and GetOutcome would tell the client ABORTED
                    // (R1, I2). Recovery then asks the branch (an Abort that
                    // answers "already committed").
                    match Box::pin(begin_recorded(&shared, &txn)).await {
                        Written::Durable => {}
                        Written::Stopped => return stop(&txn),
                        Written::Fenced => return taken_over(&shared, &txn),
                    }
                    crash::point("2pc-before-one-phase");
                    calls.push(Box::pin(one_phase(
                        Arc::clone(&shared),
                        Arc::clone(&txn),
                        idx,
                    )));
                }
                Effect::SendCommit(idx) => {
                    calls.push(Box::pin(deliver(
                        Arc::clone(&shared),
                        Arc::clone(&txn),
                        idx,
                        Decision::Commit,
                    )));
                }
                Effect::SendAbort(idx) => {
                    calls.push(Box::pin(deliver(
                        Arc::clone(&shared),
                        Arc::clone(&txn),
                        idx,
                        Decision::Abort,
                    )));
                }
                Effect::LogDecision => {
                    crash::point("2pc-before-decision");
                    let at_ms = shared.config.clock.now_ms();
                    txn.lock().decided_at_ms = Some(at_ms);
                    let record = Record::Decided {
                        id: txn.header.id,
                        at_ms,
                    };
                    let started = std::time::Instant::now();
                    // R1: nothing goes further until the decision, and the
                    // Begun record it follows, are durable.
                    match Box::pin(write_decision(&shared, &txn, record)).await {
                        Written::Durable => {}
                        Written::Stopped => return stop(&txn),
                        Written::Fenced => return taken_over(&shared, &txn),
                    }
                    metrics::phase("decision_write", started.elapsed().as_secs_f64());
                    crash::point("2pc-after-decision");
                    queue.extend(apply(&txn, Event::DecisionDurable));
                }
                Effect::LogAbort { reason } => {
                    let at_ms = shared.config.clock.now_ms();
                    txn.lock().decided_at_ms.get_or_insert(at_ms);
                    // R2: presumed abort; nobody waits for this record.
                    let durable = shared.log.submit_lazy(vec![Record::Aborting {
                        id: txn.header.id,
                        at_ms,
                        reason,
                    }]);
                    if cfg!(feature = "failpoints") {
                        // Crash tests need the abort on disk to crash after it.
                        let _ = durable.wait().await;
                        crash::point("2pc-after-abort-decision");
                    }
                }
                Effect::Announce(outcome) => {
                    txn.announce(outcome);
                }
                Effect::LogEnd(outcome) => {
                    // A one-phase commit's end too: the log keeps it.
                    match Box::pin(begin_recorded(&shared, &txn)).await {
                        Written::Durable => {}
                        Written::Stopped => return stop(&txn),
                        Written::Fenced => return taken_over(&shared, &txn),
                    }
                    crash::point("2pc-before-end");
                    let state = match outcome {
                        Outcome::Committed { .. } => TxnState::Committed,
                        Outcome::Aborted { .. } => TxnState::Aborted,
                    };
                    let at_ms = shared.config.clock.now_ms();
                    txn.lock().ended_at_ms = Some(at_ms);
                    let record = Record::Ended {
                        id: txn.header.id,
                        state,
                        at_ms,
                        read_only: matches!(outcome, Outcome::Committed { read_only: true }),
                        reason: match &outcome {
                            Outcome::Aborted { reason } => Some(reason.clone()),
                            Outcome::Committed { .. } => None,
                        },
                        branches: txn.branch_ends(),
                        steps: Vec::new(),
                    };
                    // Waited for, so that once the transaction leaves memory
                    // the store shows it ended; lazily, since no one else is
                    // held up by it (the outcome is announced already).
                    let written = write_until_durable_as(
                        &shared,
                        vec![record],
                        Urgency::Lazy,
                        Some(txn.as_ref()),
                    );
                    match Box::pin(written).await {
                        Written::Durable => {}
                        Written::Stopped => return stop(&txn),
                        Written::Fenced => return taken_over(&shared, &txn),
                    }
                    metrics::ended(TxnKind::TwoPhase, state);
                    if let Some(decided) = txn.lock().decided_at_ms {
                        let ms = at_ms.saturating_sub(decided);
                        metrics::phase("phase2", ms as f64 / 1000.0);
                    }
                    shared.forget(&txn);
                    txn.mark_ended();
                }
            }
        }
        if calls.is_empty() {
            continue;
        }
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return stop(&txn),
            () = txn.wake.notified() => {}
            Some(event) = calls.next() => queue.extend(apply(&txn, event)),
        }
    }
}

/// Leaves the transaction for recovery after a restart: the log holds what
/// it needs (R2, R3).
fn stop(txn: &LiveTxn) {
    txn.lock().mailbox.stopped();
    tracing::debug!("driver stopped by shutdown");
}

/// Lets go of a transaction another node took over (DESIGN §6): its write
/// was refused, so this node must not act on it any further. Clients waiting
/// here are told to ask for the outcome; the new owner finishes it.
pub(in crate::runtime) fn taken_over(shared: &Shared, txn: &LiveTxn) {
    txn.lock().mailbox.stopped();
    tracing::warn!(
        "another coordinator node took this transaction over; this node's write was refused \
         (fencing) and it lets the transaction go"
    );
    shared.forget(txn);
    txn.mark_ended();
}

/// Waits for the Begun record of a transaction committed in its own Begin
/// (which did not wait for it, see `Inner::begin_write`), writing it again
/// if its batch failed.
async fn begin_recorded(shared: &Shared, txn: &LiveTxn) -> Written {
    let begin_write = txn.lock().begin_write.take();
    let Some(begin_write) = begin_write else {
        return Written::Durable;
    };
    let written = match begin_write.wait().await {
        Ok(()) => Written::Durable,
        Err(LogError::Stopped) => Written::Stopped,
        Err(LogError::Fenced) => Written::Fenced,
        Err(LogError::Store(_)) => {
            write_until_durable_as(shared, txn.begin_records(), Urgency::Forced, Some(txn)).await
        }
    };
    if written == Written::Durable {
        txn.mark_recorded();
    }
    written
}

/// Writes the COMMITTED decision. For a transaction committed in its own
/// Begin, the Begun records may still be queued (lazily, see
/// `Runtime::begin_as`): the decision is queued behind them at once, so
/// that both usually share one batch and one fsync, and counts as durable
/// only once both are. If the Begun records' batch failed, they are written
/// again with the decision, whatever became of the decision's own batch (it
/// may have found no transaction to update).
async fn write_decision(shared: &Shared, txn: &LiveTxn, decided: Record) -> Written {
    let begin_write = txn.lock().begin_write.take();
    let Some(begin_write) = begin_write else {
        return write_until_durable_as(shared, vec![decided], Urgency::Forced, Some(txn)).await;
    };
    let written = write_decision_after_begin(shared, txn, decided, begin_write).await;
    if written == Written::Durable {
        txn.mark_recorded();
    }
    written
}

/// [`write_decision`] for a transaction whose Begun records were queued
/// lazily and may still be on their way (or have failed).
async fn write_decision_after_begin(
    shared: &Shared,
    txn: &LiveTxn,
    decided: Record,
    begin_write: crate::runtime::log::Durable,
) -> Written {
    let decision_write = shared.log.submit(vec![decided.clone()]);
    let (begun, written) = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => return Written::Stopped,
        both = async { tokio::join!(begin_write.wait(), decision_write.wait()) } => both,
    };
    match (begun, written) {
        (Ok(()), Ok(())) => Written::Durable,
        (Err(LogError::Fenced), _) | (_, Err(LogError::Fenced)) => Written::Fenced,
        (Err(LogError::Stopped), _) | (_, Err(LogError::Stopped)) => Written::Stopped,
        (Ok(()), Err(LogError::Store(_))) => {
            write_until_durable_as(shared, vec![decided], Urgency::Forced, Some(txn)).await
        }
        (Err(LogError::Store(_)), _) => {
            let mut records = txn.begin_records();
            records.push(decided);
            write_until_durable_as(shared, records, Urgency::Forced, Some(txn)).await
        }
    }
}

async fn prepare(shared: Arc<Shared>, txn: Arc<LiveTxn>, idx: usize) -> Event {
    let Some(call) = txn.call(idx) else {
        return Event::PrepareFailed {
            branch: idx,
            reason: format!("no branch {idx}"),
        };
    };
    let name = call.branch.clone();
    let deadline = txn.lock().prepare_timeout;
    txn.note_attempt(idx);
    match shared.participants.prepare(call, deadline).await {
        Ok(vote) => {
            txn.note_vote(
                idx,
                match &vote {
                    Vote::Commit => VoteKind::Commit,
                    Vote::Abort { .. } => VoteKind::Abort,
                    Vote::ReadOnly => VoteKind::ReadOnly,
                },
            );
            if let Vote::Abort { reason } = &vote {
                txn.note_error(idx, reason.clone());
            }
            Event::Voted { branch: idx, vote }
        }
        Err(error) => {
            let reason = format!("prepare of branch {name} failed: {error}");
            txn.note_error(idx, reason.clone());
            if error.never_sent() {
                Event::PrepareNotSent {
                    branch: idx,
                    reason,
                }
            } else {
                Event::PrepareFailed {
                    branch: idx,
                    reason,
                }
            }
        }
    }
}

async fn one_phase(shared: Arc<Shared>, txn: Arc<LiveTxn>, idx: usize) -> Event {
    let Some(call) = txn.call(idx) else {
        return Event::OnePhaseFailed {
            reason: format!("no branch {idx}"),
        };
    };
    let name = call.branch.clone();
    let deadline = txn.lock().prepare_timeout;
    txn.note_attempt(idx);
    match shared.participants.commit_one_phase(call, deadline).await {
        Ok(result) => {
            txn.note_vote(
                idx,
                match &result {
                    OnePhaseResult::Committed { read_only: true } => VoteKind::ReadOnly,
                    OnePhaseResult::Committed { read_only: false } => VoteKind::Commit,
                    OnePhaseResult::Aborted { .. } => VoteKind::Abort,
                },
            );
            if let OnePhaseResult::Aborted { reason } = &result {
                txn.note_error(idx, reason.clone());
            }
            Event::OnePhaseAnswered(result)
        }
        Err(error) => {
            let reason = format!("one-phase commit of branch {name} failed: {error}");
            txn.note_error(idx, reason.clone());
            if error.never_sent() {
                // Certainly not committed there: abort now rather than at
                // the caller's deadline.
                Event::OnePhaseNotSent { reason }
            } else {
                Event::OnePhaseFailed { reason }
            }
        }
    }
}

/// Delivers the decision to one branch, retrying with exponential backoff,
/// jitter and a capped delay until it is acknowledged (R3). Only shutdown
/// stops it; recovery picks it up after the restart.
async fn deliver(shared: Arc<Shared>, txn: Arc<LiveTxn>, idx: usize, decision: Decision) -> Event {
    let Some(call) = txn.call(idx) else {
        return Event::Delivered { branch: idx };
    };
    let deadline = shared.config.delivery_timeout;
    let mut delays = shared.config.retry.build();
    if txn.lock().recovered {
        metrics::redelivery(decision);
    }
    loop {
        if txn.delivery_settled(idx, decision) {
            // An operator established this branch's outcome (it can only be
            // the decided one), or the protocol learnt the branch holds
            // nothing (its Prepare never left): stop calling.
            return Event::Delivered { branch: idx };
        }
        txn.note_attempt(idx);
        let result = match decision {
            Decision::Commit => shared
                .participants
                .commit(call.clone(), deadline)
                .await
                .map(|()| AbortAnswer::Aborted),
            Decision::Abort => shared.participants.abort(call.clone(), deadline).await,
        };
        match result {
            Ok(AbortAnswer::AlreadyCommitted) if decision == Decision::Abort => {
                return Event::FoundCommitted { branch: idx };
            }
            Ok(_) => {
                if decision == Decision::Commit {
                    crash::point("2pc-mid-phase-two");
                }
                return Event::Delivered { branch: idx };
            }
            Err(CallError::Undialable { .. }) if decision == Decision::Abort => {
                // No coordinator could ever dial this address, so nothing
                // was ever prepared there (recovered from a log written
                // before endpoints were checked at the door).
                return Event::Delivered { branch: idx };
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(shared.config.retry_max_delay);
                let verb = match decision {
                    Decision::Commit => "commit",
                    Decision::Abort => "abort",
                };
                tracing::warn!(branch = %call.branch, %error, ?delay, "{verb} delivery failed; retrying");
                txn.note_error(idx, format!("{verb} delivery failed: {error}"));
                metrics::retry("delivery");
                txn.retries.sleep(delay).await;
            }
        }
    }
}

// The clients waiting on a 2PC transaction's forced writes (durable.rs).
impl crate::runtime::durable::Waiting for LiveTxn {
    fn report_undurable(&self, failures: u32, error: &str) {
        LiveTxn::report_undurable(self, failures, error);
    }

    fn durable_again(&self) {
        self.undurable
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

//! Sagas at run time: a saga in memory ([`LiveSaga`]) and the driver task
//! that executes its effects — step actions and compensations retried per
//! each step's policy with a deadline per attempt, each step's status forced
//! to the log before any step depending on it starts (DESIGN §3).
//!
//! The pattern is the one of `live` + `driver` for 2PC: the machine is
//! touched only under the saga's lock; effects are queued for the saga's one
//! driver, which runs the calls concurrently and feeds their answers back.

pub(crate) mod live;
mod submit;

pub use live::{LiveSaga, Progress, SagaInner, state_of};
use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use crate::metrics;
use crate::model::{Resolution, StepKind, StepStatus, TxnKind, TxnState};
use crate::protocol::saga::{Effect, Event, SagaPhase};
use crate::store::Record;

use crate::runtime::crash;
use crate::runtime::durable::{Written, write_until_durable};
use crate::runtime::mailbox::Delivery;
use crate::runtime::participants::{BranchCall, ExecuteAnswer};
use crate::runtime::shared::Shared;

/// Hands effects to the saga's driver, starting one if none runs. Called
/// with the saga's lock held, right after the machine produced them.
pub(super) fn dispatch(
    shared: &Arc<Shared>,
    saga: &Arc<LiveSaga>,
    inner: &mut SagaInner,
    effects: Vec<Effect>,
) {
    match inner.mailbox.post(effects) {
        Delivery::Nothing => {}
        Delivery::WakeDriver => saga.wake.notify_one(),
        Delivery::StartDriver => {
            let span = tracing::info_span!("saga", txn = %saga.header.id);
            shared
                .tasks
                .spawn(drive(Arc::clone(shared), Arc::clone(saga)).instrument(span));
        }
    }
}

async fn drive(shared: Arc<Shared>, saga: Arc<LiveSaga>) {
    let mut calls: FuturesUnordered<BoxFuture<'static, Event>> = FuturesUnordered::new();
    let mut queue: VecDeque<Effect> = VecDeque::new();
    loop {
        if !saga.lock().mailbox.take(&mut queue, calls.is_empty()) {
            return;
        }
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Execute {
                    step,
                    report_budget,
                } => calls.push(Box::pin(execute(
                    Arc::clone(&shared),
                    Arc::clone(&saga),
                    step,
                    report_budget,
                ))),
                Effect::Compensate {
                    step,
                    report_budget,
                } => calls.push(Box::pin(compensate(
                    Arc::clone(&shared),
                    Arc::clone(&saga),
                    step,
                    report_budget,
                ))),
                Effect::Record { step, status } => {
                    let compensation = status == StepStatus::Compensated;
                    crash::point(if compensation {
                        "saga-before-compensation-record"
                    } else {
                        "saga-before-step-record"
                    });
                    // §3: durable before any step depending on it starts.
                    // When the saga ends right after, nothing depends on it
                    // and the end record, forced next, carries every step's
                    // final progress: one forced write instead of two.
                    let ends_next = matches!(queue.front(), Some(Effect::End { .. }));
                    if !ends_next {
                        let (record, progress) = {
                            let inner = saga.lock();
                            let progress = LiveSaga::step_progress(&inner, step, status);
                            let record = Record::StepRecorded {
                                id: saga.header.id,
                                saga_state: state_of(&inner.machine),
                                reason: inner.machine.reason().map(str::to_owned),
                                step: progress.clone(),
                            };
                            (record, progress)
                        };
                        match write_until_durable(&shared, vec![record]).await {
                            Written::Durable => {
                                if let Some(recorded) = saga.lock().recorded.get_mut(step) {
                                    *recorded = Some(progress);
                                }
                            }
                            Written::Stopped => return stop(&saga),
                            Written::Fenced => return taken_over(&shared, &saga),
                        }
                    }
                    crash::point(if compensation {
                        "saga-after-compensation-record"
                    } else {
                        "saga-after-step-record"
                    });
                }
                Effect::FlagAttention => {
                    tracing::warn!("saga needs attention: a step is past its retry budget");
                    drop(
                        shared
                            .log
                            .submit(vec![Record::NeedsAttention { id: saga.header.id }]),
                    );
                }
                Effect::End { phase, reason } => {
                    let steps = {
                        let inner = saga.lock();
                        (0..saga.steps.len())
                            .map(|step| {
                                let status = inner
                                    .machine
                                    .statuses()
                                    .get(step)
                                    .copied()
                                    .unwrap_or(StepStatus::Pending);
                                LiveSaga::step_progress(&inner, step, status)
                            })
                            .filter(|progress| {
                                let step = progress.idx as usize;
                                inner.recorded.get(step).and_then(Option::as_ref) != Some(progress)
                            })
                            .collect()
                    };
                    let state = match phase {
                        SagaPhase::Completed => TxnState::Completed,
                        SagaPhase::Compensated => TxnState::Compensated,
                        _ => TxnState::Failed,
                    };
                    let at_ms = shared.config.clock.now_ms();
                    let record = Record::Ended {
                        id: saga.header.id,
                        state,
                        at_ms,
                        read_only: false,
                        reason,
                        branches: Vec::new(),
                        steps,
                    };
                    match write_until_durable(&shared, vec![record]).await {
                        Written::Durable => {}
                        Written::Stopped => return stop(&saga),
                        Written::Fenced => return taken_over(&shared, &saga),
                    }
                    metrics::ended(TxnKind::Saga, state);
                    let ms = at_ms.saturating_sub(saga.header.created_at_ms);
                    metrics::phase("saga", ms as f64 / 1000.0);
                    shared.forget_saga(&saga);
                    saga.ended.send_replace(true);
                }
            }
        }
        if calls.is_empty() {
            continue;
        }
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return stop(&saga),
            () = saga.wake.notified() => {}
            Some(event) = calls.next() => queue.extend(saga.lock().machine.apply(event)),
        }
    }
}

/// Lets go of a saga another node took over (DESIGN §6): its step or end
/// record was refused, and the new owner resumes it from its records.
fn taken_over(shared: &Shared, saga: &LiveSaga) {
    saga.lock().mailbox.stopped();
    tracing::warn!(
        "another coordinator node took this saga over; this node's write was refused (fencing) \
         and it lets the saga go"
    );
    shared.forget_saga(saga);
    saga.taken_over
        .store(true, std::sync::atomic::Ordering::SeqCst);
    saga.ended.send_replace(true);
}

fn stop(saga: &LiveSaga) {
    saga.lock().mailbox.stopped();
    tracing::debug!("saga driver stopped by shutdown");
}

fn call(saga: &LiveSaga, step: usize, payload: Vec<u8>) -> BranchCall {
    let def = &saga.steps[step];
    BranchCall {
        transaction_id: saga.header.id.to_string(),
        branch: def.name.clone(),
        participant: def.participant.clone(),
        payload,
    }
}

/// Calls a step's action until it answers, per its retry policy.
async fn execute(
    shared: Arc<Shared>,
    saga: Arc<LiveSaga>,
    step: usize,
    report_budget: bool,
) -> Event {
    let Some(def) = saga.steps.get(step).cloned() else {
        return Event::ActionFailed {
            step,
            reason: format!("no step {step}"),
        };
    };
    let call = call(&saga, step, def.action.clone());
    let mut delays = def.retry.delays();
    let mut attempts = 0u32;
    loop {
        if saga.resolution(step) == Some(Resolution::Committed) {
            // An operator established that the action completed.
            return Event::ActionSucceeded(step);
        }
        attempts = attempts.saturating_add(1);
        saga.note(step, false, None);
        let error = match shared
            .participants
            .execute(call.clone(), def.attempt_timeout)
            .await
        {
            Ok(ExecuteAnswer::Succeeded) => return Event::ActionSucceeded(step),
            Ok(ExecuteAnswer::Failed(reason)) => {
                saga.note_error(step, reason.clone());
                return Event::ActionFailed { step, reason };
            }
            Err(error) => error,
        };
        let message = format!("step {} attempt {attempts} failed: {error}", def.name);
        saga.note_error(step, message.clone());
        if !saga.lock().machine.keeps_retrying(step) {
            // The saga turned back: this step may have run; it will be
            // compensated.
            return Event::ActionExhausted {
                step,
                reason: format!("stopped retrying as the saga compensates; {message}"),
            };
        }
        if report_budget && attempts >= def.retry.max_attempts {
            return match def.kind {
                StepKind::Compensatable => Event::ActionExhausted {
                    step,
                    reason: format!("step {} failed {attempts} attempts: {error}", def.name),
                },
                StepKind::Pivot | StepKind::Retriable => Event::ActionOverBudget(step),
            };
        }
        let delay = delays.next().unwrap_or(def.retry.max_delay);
        tracing::debug!(step = %def.name, %error, ?delay, "retrying step");
        metrics::retry("step");
        saga.retries.sleep(delay).await;
    }
}

/// Calls a step's compensation until it succeeds (§3: never dropped).
async fn compensate(
    shared: Arc<Shared>,
    saga: Arc<LiveSaga>,
    step: usize,
    report_budget: bool,
) -> Event {
    let Some(def) = saga.steps.get(step).cloned() else {
        return Event::Compensated(step);
    };
    let call = call(&saga, step, def.compensation.clone().unwrap_or_default());
    let mut delays = def.retry.delays();
    let mut attempts = 0u32;
    loop {
        if saga.resolution(step) == Some(Resolution::Compensated) {
            // An operator established that the compensation completed.
            return Event::Compensated(step);
        }
        attempts = attempts.saturating_add(1);
        saga.note(step, true, None);
        match shared
            .participants
            .compensate(call.clone(), def.attempt_timeout)
            .await
        {
            Ok(()) => return Event::Compensated(step),
            Err(error) => {
                saga.note_error(
                    step,
                    format!(
                        "compensation of {} attempt {attempts} failed: {error}",
                        def.name
                    ),
                );
                if report_budget && attempts >= def.retry.max_attempts {
                    return Event::CompensationOverBudget(step);
                }
                let delay = delays.next().unwrap_or(def.retry.max_delay);
                metrics::retry("compensation");
                saga.retries.sleep(delay).await;
            }
        }
    }
}

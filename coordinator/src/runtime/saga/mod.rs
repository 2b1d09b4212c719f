//! Sagas at run time: a saga in memory ([`LiveSaga`]) and the driver task
//! that executes its effects — step actions and compensations retried per
//! each step's policy with a deadline per attempt, each step's status forced
//! to the log before any step depending on it starts (DESIGN §3).
//!
//! The pattern is the one of `live` + `driver` for 2PC: the machine is
//! touched only under the saga's lock; effects are queued for the saga's one
//! driver, which runs the calls concurrently and feeds their answers back.

mod submit;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::metrics;
use crate::model::{
    OperatorAction, Preview, Resolution, SagaStepDef, StepKind, StepStatus, StepView, TxnKind,
    TxnState, TxnView,
};
use crate::protocol::saga::{Effect, Event, Saga, SagaPhase};
use crate::store::{Record, StepProgress};

use crate::runtime::crash;
use crate::runtime::durable::{Written, write_until_durable};
use crate::runtime::mailbox::{Delivery, Mailbox};
use crate::runtime::participants::{BranchCall, ExecuteAnswer};
use crate::runtime::requests::TxnHeader;
use crate::runtime::shared::Shared;

/// Calls made to one step so far.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub last_error: Option<String>,
}

pub struct SagaInner {
    pub machine: Saga,
    pub progress: Vec<Progress>,
    mailbox: Mailbox<Effect>,
    /// Operators' decisions for steps (`concord txn resolve`), durable.
    pub operator_actions: Vec<OperatorAction>,
    /// Each step's progress as this node last made it durable with a step
    /// record; None where unknown (not written yet, or the saga was loaded
    /// by recovery). The end record leaves out the steps whose progress is
    /// already in the log as it is: a completed saga's end rewrites only
    /// its last step, not every step (fewer rows for the single log writer,
    /// which bounds saga throughput: docs/performance.md).
    recorded: Vec<Option<StepProgress>>,
}

pub struct LiveSaga {
    pub header: TxnHeader,
    pub steps: Vec<SagaStepDef>,
    inner: Mutex<SagaInner>,
    wake: Notify,
    /// True once the saga ended and its end record is durable, or once
    /// another node took it over.
    pub ended: watch::Sender<bool>,
    /// Another node took the saga over (its records were fenced).
    pub taken_over: std::sync::atomic::AtomicBool,
    /// Its definition is durable (§3): only then may a SubmitSaga retried
    /// with its key be told it was accepted.
    pub recorded: std::sync::atomic::AtomicBool,
    /// Its steps' and compensations' retry backoff, which an operator can
    /// cut short.
    pub retries: crate::runtime::wait::Retries,
}

impl LiveSaga {
    pub fn new(
        header: TxnHeader,
        steps: Vec<SagaStepDef>,
        machine: Saga,
        progress: Vec<Progress>,
    ) -> Self {
        Self {
            header,
            steps,
            inner: Mutex::new(SagaInner {
                machine,
                recorded: vec![None; progress.len()],
                progress,
                mailbox: Mailbox::default(),
                operator_actions: Vec::new(),
            }),
            wake: Notify::new(),
            ended: watch::channel(false).0,
            taken_over: std::sync::atomic::AtomicBool::new(false),
            recorded: std::sync::atomic::AtomicBool::new(false),
            retries: crate::runtime::wait::Retries::default(),
        }
    }

    /// See `LiveTxn::lock`: a poisoned lock's data is still consistent
    /// because the machine never panics on input.
    pub fn lock(&self) -> MutexGuard<'_, SagaInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn note(&self, step: usize, compensation: bool, error: Option<String>) {
        let mut inner = self.lock();
        if let Some(progress) = inner.progress.get_mut(step) {
            if compensation {
                progress.compensation_attempts = progress.compensation_attempts.saturating_add(1);
            } else {
                progress.attempts = progress.attempts.saturating_add(1);
            }
            if error.is_some() {
                progress.last_error = error;
            }
        }
    }

    fn note_error(&self, step: usize, error: String) {
        if let Some(progress) = self.lock().progress.get_mut(step) {
            progress.last_error = Some(error);
        }
    }

    /// A step's progress with `status`, the status its record is for. Not
    /// the machine's status now: by the time the driver writes a record the
    /// machine may have moved the step on (an UNKNOWN step is already
    /// COMPENSATING), and a record of that in-flight status would read as
    /// "never ran" after a restart, sending the saga forward over a
    /// compensation already sent (I4; found by the simulation).
    fn step_progress(inner: &SagaInner, step: usize, status: StepStatus) -> StepProgress {
        let progress = inner.progress.get(step).cloned().unwrap_or_default();
        StepProgress {
            idx: u32::try_from(step).unwrap_or(u32::MAX),
            status,
            attempts: progress.attempts,
            compensation_attempts: progress.compensation_attempts,
            last_error: progress.last_error,
        }
    }

    pub fn state(&self) -> TxnState {
        state_of(&self.lock().machine)
    }

    pub fn view(&self, with_steps: bool) -> TxnView {
        let inner = self.lock();
        let steps = if with_steps {
            self.steps
                .iter()
                .enumerate()
                .map(|(idx, def)| {
                    let progress = inner.progress.get(idx).cloned().unwrap_or_default();
                    StepView {
                        name: def.name.clone(),
                        participant: def.participant.clone(),
                        kind: def.kind,
                        status: inner.machine.statuses()[idx],
                        depends_on: def
                            .depends_on
                            .iter()
                            .filter_map(|dep| self.steps.get(*dep).map(|d| d.name.clone()))
                            .collect(),
                        attempts: progress.attempts,
                        compensation_attempts: progress.compensation_attempts,
                        last_error: progress.last_error,
                        action: Preview::of(&def.action),
                        compensation: Preview::of(def.compensation.as_deref().unwrap_or_default()),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        TxnView {
            id: self.header.id,
            kind: TxnKind::Saga,
            state: state_of(&inner.machine),
            created_at_ms: self.header.created_at_ms,
            deadline_ms: 0,
            decided_at_ms: None,
            ended_at_ms: None,
            reason: inner.machine.reason().map(str::to_owned),
            idempotency_key: self.header.idempotency_key.clone(),
            request_digest: self.header.request_digest.clone(),
            description: self.header.description.clone(),
            read_only: false,
            // A saga's parts are its steps: listings count them here.
            branch_count: u32::try_from(self.steps.len()).unwrap_or(u32::MAX),
            branches: Vec::new(),
            steps,
            needs_attention: inner.machine.needs_attention(),
            operator_actions: if with_steps {
                inner.operator_actions.clone()
            } else {
                Vec::new()
            },
            producer: None,
            ordering_key: None,
        }
    }
}

pub fn state_of(machine: &Saga) -> TxnState {
    match machine.phase() {
        SagaPhase::Running => TxnState::Running,
        SagaPhase::Compensating => TxnState::Compensating,
        SagaPhase::Completed => TxnState::Completed,
        SagaPhase::Compensated => TxnState::Compensated,
        SagaPhase::Failed => TxnState::Failed,
    }
}

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

impl LiveSaga {
    /// The outcome an operator gave step `step`, if any.
    pub fn resolution(&self, step: usize) -> Option<Resolution> {
        let name = &self.steps.get(step)?.name;
        self.lock()
            .operator_actions
            .iter()
            .rev()
            .find(|action| &action.branch == name)
            .map(|action| action.outcome)
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

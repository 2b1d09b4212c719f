//! A saga in memory: its definition, its state machine under one lock,
//! each step's calls so far, and what its waiting clients learn. Touched
//! by the saga's entry points and its driver (`super`), read by the
//! listings; it knows nothing of the runtime's shared state.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::{Notify, watch};

use crate::model::{
    OperatorAction, Preview, Resolution, SagaStepDef, StepStatus, StepView, TxnKind, TxnState,
    TxnView,
};
use crate::protocol::saga::{Effect, Saga, SagaPhase};
use crate::runtime::mailbox::Mailbox;
use crate::runtime::requests::TxnHeader;
use crate::store::StepProgress;

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
    pub(in crate::runtime) mailbox: Mailbox<Effect>,
    /// Operators' decisions for steps (`concord txn resolve`), durable.
    pub operator_actions: Vec<OperatorAction>,
    /// Each step's progress as this node last made it durable with a step
    /// record; None where unknown (not written yet, or the saga was loaded
    /// by recovery). The end record leaves out the steps whose progress is
    /// already in the log as it is: a completed saga's end rewrites only
    /// its last step, not every step (fewer rows for the single log writer,
    /// which bounds saga throughput: docs/performance.md).
    pub(in crate::runtime) recorded: Vec<Option<StepProgress>>,
}

pub struct LiveSaga {
    pub header: TxnHeader,
    pub steps: Vec<SagaStepDef>,
    pub(in crate::runtime) inner: Mutex<SagaInner>,
    pub(in crate::runtime) wake: Notify,
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
    /// Whether its description or a step's endpoint contains `text`
    /// ([`crate::model::any_mentions`]), read without making a view.
    pub fn mentions(&self, text: &str) -> bool {
        crate::model::any_mentions(
            (self.header.description.iter().map(String::as_str))
                .chain(self.steps.iter().map(|step| step.participant.as_str())),
            text,
        )
    }

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

    pub(in crate::runtime) fn note(&self, step: usize, compensation: bool, error: Option<String>) {
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

    pub(in crate::runtime) fn note_error(&self, step: usize, error: String) {
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
    pub(in crate::runtime) fn step_progress(
        inner: &SagaInner,
        step: usize,
        status: StepStatus,
    ) -> StepProgress {
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

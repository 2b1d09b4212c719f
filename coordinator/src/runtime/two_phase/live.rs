//! A transaction the coordinator is working on: its protocol state machine,
//! what the machine does not hold (branch endpoints, payloads, attempts,
//! errors), and the channels through which waiting clients learn the outcome.
//!
//! The machine is only touched under [`LiveTxn::lock`], briefly, never across
//! an `.await`; the effects it returns are queued for the transaction's
//! driver (`runtime::driver`) under that same lock, so they run in the order
//! the protocol produced them.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::model::{
    BranchState, BranchView, OperatorAction, Preview, TxnKind, TxnState, TxnView, VoteKind,
};
use crate::protocol::two_phase::{BranchPhase, Decision, Effect, Outcome, Phase, TwoPhase};
use crate::store::{BranchEnd, Record};

use crate::runtime::mailbox::Mailbox;
use crate::runtime::participants::BranchCall;
use crate::runtime::requests::TxnHeader;

/// What the machine does not know about a branch.
#[derive(Debug, Clone)]
pub struct BranchInfo {
    pub name: String,
    pub participant: String,
    pub payload: Vec<u8>,
    pub vote: Option<VoteKind>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// The mutable part of a live transaction.
pub struct Inner {
    pub machine: TwoPhase,
    pub branches: Vec<BranchInfo>,
    pub decided_at_ms: Option<u64>,
    /// When the driver took the machine's end in hand: the time its Ended
    /// record carries.
    pub ended_at_ms: Option<u64>,
    pub prepare_timeout: Duration,
    /// Effects waiting for the transaction's driver.
    pub mailbox: Mailbox<Effect>,
    /// Operators' decisions for branches (`concord txn resolve`), durable.
    pub operator_actions: Vec<OperatorAction>,
    /// The Begun record of a transaction committed in its own Begin, while
    /// it is being written (lazily, with two or more branches): prepares go
    /// out meanwhile (safe under presumed abort, R2: a crash before it is
    /// durable leaves an id nobody knows, so aborted), and the decision
    /// counts only once it is durable too (the decision must follow it in
    /// the log, R1; `driver::write_decision`).
    pub begin_write: Option<crate::runtime::log::Durable>,
    /// Loaded from the log by recovery or takeover: its deliveries may
    /// repeat ones a participant acknowledged before the restart, since
    /// acknowledgements are not logged (docs/decisions.md, "Redelivery").
    pub recovered: bool,
    /// Why a forced write keeps failing (see [`LiveTxn::undurable`]).
    pub undurable: Option<String>,
}

/// What a live transaction's waiting clients are told (`LiveTxn::progress`).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The announced outcome, once announced.
    pub outcome: Option<Outcome>,
    /// True once the transaction ended and its end record is durable.
    pub ended: bool,
}

pub struct LiveTxn {
    pub header: TxnHeader,
    inner: Mutex<Inner>,
    /// Wakes the driver when effects land in its inbox.
    pub wake: Notify,
    /// What its waiting clients learn: the outcome once announced, the end
    /// once durable. One channel for both (a `watch` is about 400 bytes,
    /// held for the transaction's life: docs/performance.md, memory).
    pub progress: watch::Sender<Progress>,
    /// Its phase-2 retries' backoff, which an operator can cut short.
    pub retries: crate::runtime::wait::Retries,
    /// Set once a forced write of this transaction failed
    /// `log_write_attempts` times in a row (the reason is in
    /// `Inner::undurable`): its waiting clients are answered UNAVAILABLE
    /// while the driver goes on writing.
    pub undurable: std::sync::atomic::AtomicBool,
    /// Its Begun record is durable: only then may a Begin retried with its
    /// key be given its id (R7; a Begin answers once its record is).
    pub recorded: std::sync::atomic::AtomicBool,
}

impl LiveTxn {
    /// Whether its description or a branch's endpoint contains `text`
    /// ([`crate::model::any_mentions`]), read without making a view.
    pub fn mentions(&self, text: &str) -> bool {
        let inner = self.lock();
        crate::model::any_mentions(
            (self.header.description.iter().map(String::as_str))
                .chain(inner.branches.iter().map(|b| b.participant.as_str())),
            text,
        )
    }

    pub fn new(
        header: TxnHeader,
        machine: TwoPhase,
        branches: Vec<BranchInfo>,
        prepare_timeout: Duration,
    ) -> Self {
        Self {
            header,
            inner: Mutex::new(Inner {
                machine,
                branches,
                decided_at_ms: None,
                ended_at_ms: None,
                prepare_timeout,
                mailbox: Mailbox::default(),
                operator_actions: Vec::new(),
                begin_write: None,
                recovered: false,
                undurable: None,
            }),
            wake: Notify::new(),
            progress: watch::channel(Progress::default()).0,
            retries: crate::runtime::wait::Retries::default(),
            undurable: std::sync::atomic::AtomicBool::new(false),
            recorded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The transaction's state. A poisoned lock means a panic while holding
    /// it, which the protocol code never does on input; recover the data
    /// rather than spread the panic.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The records a Begin wrote for this transaction (its header and the
    /// branches it has now), to write them again after a failed write.
    pub fn begin_records(&self) -> Vec<Record> {
        let inner = self.lock();
        let mut records = Vec::with_capacity(1 + inner.branches.len());
        records.push(Record::Begun {
            id: self.header.id,
            created_at_ms: self.header.created_at_ms,
            deadline_ms: self.header.deadline_ms,
            idempotency_key: self.header.idempotency_key.clone(),
            request_digest: self.header.request_digest.clone(),
            description: self.header.description.clone(),
        });
        for (idx, branch) in inner.branches.iter().enumerate() {
            records.push(Record::Enlisted {
                id: self.header.id,
                idx: u32::try_from(idx).unwrap_or(u32::MAX),
                name: branch.name.clone(),
                participant: branch.participant.clone(),
                payload: branch.payload.clone(),
            });
        }
        records
    }

    pub fn call(&self, idx: usize) -> Option<BranchCall> {
        let inner = self.lock();
        inner.branches.get(idx).map(|b| BranchCall {
            transaction_id: self.header.id.to_string(),
            branch: b.name.clone(),
            participant: b.participant.clone(),
            payload: b.payload.clone(),
        })
    }

    /// Counts a call made to a branch.
    pub fn note_attempt(&self, idx: usize) {
        let mut inner = self.lock();
        if let Some(branch) = inner.branches.get_mut(idx) {
            branch.attempts = branch.attempts.saturating_add(1);
        }
    }

    /// Remembers the last failure talking to a branch, for operators.
    pub fn note_error(&self, idx: usize, error: String) {
        let mut inner = self.lock();
        if let Some(branch) = inner.branches.get_mut(idx) {
            branch.last_error = Some(error);
        }
    }

    pub fn note_vote(&self, idx: usize, vote: VoteKind) {
        let mut inner = self.lock();
        if let Some(branch) = inner.branches.get_mut(idx) {
            branch.vote = Some(vote);
        }
    }

    /// The view clients and operators get.
    pub fn view(&self, with_branches: bool) -> TxnView {
        let inner = self.lock();
        let machine = &inner.machine;
        // A terminal state comes with its end time (types.proto): until the
        // driver has stamped the end, the transaction shows as still
        // delivering its outcome.
        let state = match (state_of(machine), inner.ended_at_ms) {
            (TxnState::Committed, None) => TxnState::Committing,
            (TxnState::Aborted, None) => TxnState::Aborting,
            (state, _) => state,
        };
        TxnView {
            id: self.header.id,
            kind: TxnKind::TwoPhase,
            state,
            created_at_ms: self.header.created_at_ms,
            deadline_ms: self.header.deadline_ms,
            decided_at_ms: inner.decided_at_ms,
            ended_at_ms: inner.ended_at_ms,
            reason: machine.reason().map(str::to_owned),
            idempotency_key: self.header.idempotency_key.clone(),
            request_digest: self.header.request_digest.clone(),
            description: self.header.description.clone(),
            read_only: machine.read_only(),
            branch_count: u32::try_from(inner.branches.len()).unwrap_or(u32::MAX),
            branches: if with_branches {
                inner
                    .branches
                    .iter()
                    .zip(machine.branches())
                    .map(|(info, phase)| BranchView {
                        name: info.name.clone(),
                        participant: info.participant.clone(),
                        state: branch_state(*phase),
                        vote: info.vote,
                        attempts: info.attempts,
                        last_error: info.last_error.clone(),
                        payload: Preview::of(&info.payload),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            steps: Vec::new(),
            needs_attention: false,
            operator_actions: if with_branches {
                inner.operator_actions.clone()
            } else {
                Vec::new()
            },
            producer: None,
            ordering_key: None,
        }
    }

    /// Whether the delivery of `decision` to branch `idx` can stop as if
    /// acknowledged: an operator resolved the branch (`concord txn
    /// resolve`), or the protocol no longer owes it the decision (its
    /// Prepare turned out never to have left, `Event::PrepareNotSent`).
    /// One lock, taken before each attempt of a phase-2 delivery.
    pub fn delivery_settled(&self, idx: usize, decision: Decision) -> bool {
        let inner = self.lock();
        if inner.machine.branches().get(idx) != Some(&BranchPhase::Delivering(decision)) {
            return true;
        }
        inner.branches.get(idx).is_some_and(|branch| {
            inner
                .operator_actions
                .iter()
                .any(|action| action.branch == branch.name)
        })
    }

    /// A forced write of this transaction failed `attempts` times: wake its
    /// waiting clients to tell them so (they must not wait unbounded on a
    /// log that takes no writes, nor hear an outcome that is not durable).
    pub fn report_undurable(&self, attempts: u32, error: &str) {
        self.lock().undurable = Some(format!(
            "the log could not record transaction {} after {attempts} attempts: {error}; \
             the coordinator keeps trying (participants that prepared wait in doubt): ask \
             GetTransaction for its outcome",
            self.header.id
        ));
        self.undurable
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Unchanged values, but the waiters look at `undurable` again.
        self.progress.send_modify(|_| {});
    }

    /// Tells waiting clients the outcome (once it is durable, R1).
    pub fn announce(&self, outcome: Outcome) {
        self.progress
            .send_modify(|progress| progress.outcome = Some(outcome));
    }

    /// Tells waiting clients the transaction ended (or left this node).
    pub fn mark_ended(&self) {
        self.progress.send_modify(|progress| progress.ended = true);
    }

    /// Its Begun record (and those of the branches named with it) is
    /// durable.
    pub fn mark_recorded(&self) {
        self.recorded
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Why its log writes keep failing, once reported.
    pub fn undurable_reason(&self) -> Option<String> {
        if !self.undurable.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        self.lock().undurable.clone()
    }

    /// How each branch ended, for the end record.
    pub fn branch_ends(&self) -> Vec<BranchEnd> {
        let inner = self.lock();
        inner
            .branches
            .iter()
            .zip(inner.machine.branches())
            .enumerate()
            .map(|(idx, (info, phase))| BranchEnd {
                idx: u32::try_from(idx).unwrap_or(u32::MAX),
                state: branch_state(*phase),
                vote: info.vote,
                attempts: info.attempts,
                last_error: info.last_error.clone(),
            })
            .collect()
    }
}

/// The client-visible state of a machine.
pub fn state_of(machine: &TwoPhase) -> TxnState {
    match machine.phase() {
        Phase::Active => TxnState::Active,
        Phase::Preparing | Phase::Deciding => TxnState::Preparing,
        Phase::Committing => TxnState::Committing,
        Phase::Aborting => TxnState::Aborting,
        Phase::Committed => TxnState::Committed,
        Phase::Aborted => TxnState::Aborted,
    }
}

pub fn branch_state(phase: BranchPhase) -> BranchState {
    match phase {
        BranchPhase::Enlisted => BranchState::Enlisted,
        BranchPhase::Preparing => BranchState::Preparing,
        BranchPhase::Prepared => BranchState::Prepared,
        BranchPhase::ReadOnly => BranchState::ReadOnly,
        BranchPhase::Delivering(_) => BranchState::Delivering,
        BranchPhase::Committed => BranchState::Committed,
        BranchPhase::Aborted => BranchState::Aborted,
    }
}

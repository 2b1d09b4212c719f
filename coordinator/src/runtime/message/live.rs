//! A transactional message in memory: its destinations, its state machine
//! under one lock, each delivery's attempts and errors, what its waiting
//! clients learn; and each ordering key's unfinished messages in order
//! (M5, [`Orders`]). Touched by the message's entry points and its driver
//! (`super`); it knows nothing of the runtime's shared state.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};

use crate::model::{
    BranchState, BranchView, Destination, MessageVia, OperatorAction, Preview, TxnKind, TxnState,
    TxnView, message_via_str,
};
use crate::protocol::message::{DestinationPhase, Message, Phase};
use crate::runtime::log::Durable;
use crate::runtime::requests::TxnHeader;
use crate::store::Record;

/// The name an operator gives a message's producer in `concord txn
/// resolve` (a destination may not be called so).
pub const PRODUCER: &str = "producer";

/// Failed check-backs, or failed deliveries to one destination, after which
/// the message is flagged NEEDS_ATTENTION (it goes on being retried: M3,
/// M6).
pub(in crate::runtime) const ATTENTION_AFTER: u32 = 5;

/// The mutable part of a live message.
pub struct MessageInner {
    pub machine: Message,
    /// Delivery attempts and the last failure, per destination.
    pub(in crate::runtime) attempts: Vec<u32>,
    pub(in crate::runtime) last_errors: Vec<Option<String>>,
    pub(in crate::runtime) check_attempts: u32,
    pub(in crate::runtime) check_error: Option<String>,
    pub(in crate::runtime) reason: Option<String>,
    pub(in crate::runtime) decided_at_ms: Option<u64>,
    pub(in crate::runtime) needs_attention: bool,
    /// The flag's record was queued (it is written once).
    pub(in crate::runtime) attention_recorded: bool,
    /// Its place among its key's unfinished messages, once decided (M5).
    pub(in crate::runtime) ordering_seq: Option<u64>,
    /// The decision's record, queued and not yet known durable.
    pub(in crate::runtime) decision_write: Option<(Durable, Record)>,
    /// Operators' decisions for its producer or destinations, durable.
    pub operator_actions: Vec<OperatorAction>,
}

/// A message the coordinator is working on.
pub struct LiveMessage {
    /// `deadline_ms` is when the check-back is due (M6).
    pub header: TxnHeader,
    pub producer: String,
    pub ordering_key: Option<String>,
    pub destinations: Vec<Destination>,
    pub(in crate::runtime) inner: Mutex<MessageInner>,
    /// Wakes the driver: the producer submitted.
    pub(in crate::runtime) wake: Notify,
    /// True once the message ended and its end record is durable, or once
    /// another node took it over.
    pub ended: watch::Sender<bool>,
    /// Bumped when a destination acknowledges and when the message ends:
    /// what the later messages of its key wait on (M5).
    pub(in crate::runtime) progress: watch::Sender<u64>,
    pub taken_over: AtomicBool,
    /// Its PREPARED record is durable: only then may a PrepareMessage
    /// retried with its key be answered with it.
    pub recorded: AtomicBool,
    /// Its retry backoff, which an operator can cut short.
    pub retries: crate::runtime::wait::Retries,
}

impl LiveMessage {
    pub fn new(
        header: TxnHeader,
        producer: String,
        ordering_key: Option<String>,
        destinations: Vec<Destination>,
        machine: Message,
    ) -> Self {
        let count = destinations.len();
        Self {
            header,
            producer,
            ordering_key,
            destinations,
            inner: Mutex::new(MessageInner {
                machine,
                attempts: vec![0; count],
                last_errors: vec![None; count],
                check_attempts: 0,
                check_error: None,
                reason: None,
                decided_at_ms: None,
                needs_attention: false,
                attention_recorded: false,
                ordering_seq: None,
                decision_write: None,
                operator_actions: Vec::new(),
            }),
            wake: Notify::new(),
            ended: watch::channel(false).0,
            progress: watch::channel(0).0,
            taken_over: AtomicBool::new(false),
            recorded: AtomicBool::new(false),
            retries: crate::runtime::wait::Retries::default(),
        }
    }

    /// See `LiveTxn::lock`: the machine never panics on input, so a
    /// poisoned lock's data is still consistent.
    pub fn lock(&self) -> MutexGuard<'_, MessageInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> TxnState {
        state_of(self.lock().machine.phase())
    }

    /// As it was when loaded from the log: decided or not, its reason, its
    /// place among its key's messages, and the NEEDS_ATTENTION flag.
    pub fn restore(&self, view: &TxnView, seq: Option<u64>, actions: Vec<OperatorAction>) {
        let mut inner = self.lock();
        inner.operator_actions = actions;
        inner.decided_at_ms = view.decided_at_ms;
        inner.reason = view.reason.clone();
        inner.ordering_seq = seq;
        inner.needs_attention = view.needs_attention;
        inner.attention_recorded = view.needs_attention;
    }

    /// Returns once every destination acknowledged, or the message was
    /// dropped or let go (taken over, shutting down: `ended`). Not once its
    /// end record is durable: that record is lazy, and nothing a caller
    /// learns depends on it (a lost end means deliveries made again).
    pub async fn settled(&self) {
        let mut progress = self.progress.subscribe();
        let mut ended = self.ended.subscribe();
        loop {
            if self.lock().machine.phase().is_terminal() || *ended.borrow_and_update() {
                return;
            }
            tokio::select! {
                changed = progress.changed() => if changed.is_err() { return },
                changed = ended.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Whether this message still owes a delivery to `participant` (M5: a
    /// later message of its key waits for it there).
    pub(in crate::runtime) fn owes(&self, participant: &str) -> bool {
        let inner = self.lock();
        !inner.machine.phase().is_terminal()
            && self.destinations.iter().enumerate().any(|(idx, d)| {
                d.participant == participant
                    && inner.machine.destination(idx) != Some(DestinationPhase::Acknowledged)
            })
    }

    pub fn view(&self, with_branches: bool) -> TxnView {
        let inner = self.lock();
        let phase = inner.machine.phase();
        let branches = if with_branches {
            self.destinations
                .iter()
                .enumerate()
                .map(|(idx, destination)| BranchView {
                    name: destination.name.clone(),
                    participant: destination.participant.clone(),
                    state: destination_state(phase, inner.machine.destination(idx)),
                    vote: None,
                    attempts: inner.attempts[idx],
                    last_error: inner.last_errors[idx].clone(),
                    payload: Preview::of(&destination.payload),
                })
                .collect()
        } else {
            Vec::new()
        };
        let reason = match (&inner.reason, &inner.check_error) {
            (None, Some(error)) if phase == Phase::Prepared => Some(format!(
                "check-back failed {} time(s): {error}",
                inner.check_attempts
            )),
            (reason, _) => reason.clone(),
        };
        TxnView {
            id: self.header.id,
            kind: TxnKind::Message,
            state: state_of(phase),
            created_at_ms: self.header.created_at_ms,
            deadline_ms: self.header.deadline_ms,
            decided_at_ms: inner.decided_at_ms,
            ended_at_ms: None,
            reason,
            idempotency_key: self.header.idempotency_key.clone(),
            request_digest: self.header.request_digest.clone(),
            description: self.header.description.clone(),
            read_only: false,
            branch_count: u32::try_from(self.destinations.len()).unwrap_or(u32::MAX),
            branches,
            steps: Vec::new(),
            needs_attention: inner.needs_attention,
            operator_actions: if with_branches {
                inner.operator_actions.clone()
            } else {
                Vec::new()
            },
            producer: Some(self.producer.clone()),
            ordering_key: self.ordering_key.clone(),
        }
    }
}

pub fn state_of(phase: Phase) -> TxnState {
    match phase {
        Phase::Prepared => TxnState::Prepared,
        Phase::Delivering => TxnState::Delivering,
        Phase::Delivered => TxnState::Delivered,
        Phase::Dropped => TxnState::Dropped,
    }
}

pub(in crate::runtime) fn destination_state(
    phase: Phase,
    destination: Option<DestinationPhase>,
) -> BranchState {
    match (phase, destination) {
        (Phase::Dropped, _) => BranchState::Aborted,
        (_, Some(DestinationPhase::Acknowledged)) => BranchState::Delivered,
        (_, Some(DestinationPhase::Owed)) => BranchState::Delivering,
        _ => BranchState::Enlisted,
    }
}

/// The unfinished, decided messages of each ordering key, in the order
/// they were decided (M5). Only this node's: on several nodes sharing one
/// PostgreSQL, the order holds among the messages decided on one node.
#[derive(Default)]
pub struct Orders {
    pub(in crate::runtime) keys: Mutex<HashMap<String, KeyOrder>>,
}

/// One key's unfinished, decided messages with their places, in order.
pub(in crate::runtime) type KeyOrder = Vec<(u64, Arc<LiveMessage>)>;

impl Orders {
    pub(in crate::runtime) fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyOrder>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Places a message just decided last in its key's order and queues
    /// its decision's record (`write`, given the place) under the same
    /// lock: the log then holds a key's decisions in their order, so a
    /// crash keeps a prefix of them. Numbers restart when a key has nothing
    /// unfinished: only the order among unfinished messages matters.
    pub(in crate::runtime) fn enqueue<T>(
        &self,
        key: &str,
        message: &Arc<LiveMessage>,
        write: impl FnOnce(u64) -> T,
    ) -> T {
        let mut keys = self.lock();
        let queue = keys.entry(key.to_owned()).or_default();
        let seq = queue.last().map_or(1, |(seq, _)| seq + 1);
        queue.push((seq, Arc::clone(message)));
        write(seq)
    }

    /// Places a message loaded from the log by its recorded place.
    pub fn restore(&self, key: &str, seq: u64, message: &Arc<LiveMessage>) {
        let mut keys = self.lock();
        let queue = keys.entry(key.to_owned()).or_default();
        let at = queue.partition_point(|(s, m)| (*s, m.header.id) < (seq, message.header.id));
        queue.insert(at, (seq, Arc::clone(message)));
    }

    pub(in crate::runtime) fn remove(&self, key: &str, message: &LiveMessage) {
        let mut keys = self.lock();
        if let Some(queue) = keys.get_mut(key) {
            queue.retain(|(_, m)| m.header.id != message.header.id);
            if queue.is_empty() {
                keys.remove(key);
            }
        }
    }

    /// The first message decided before `message` in its key's order that
    /// still owes `participant` a delivery. The messages are looked at
    /// after this lock is let go: where a decision is queued (`decided`) a
    /// message's own lock is held while this one is taken, so taking a
    /// message's lock under this one could deadlock.
    pub(in crate::runtime) fn blocker(
        &self,
        key: &str,
        message: &LiveMessage,
        participant: &str,
    ) -> Option<Arc<LiveMessage>> {
        let earlier: Vec<Arc<LiveMessage>> = {
            let keys = self.lock();
            keys.get(key)?
                .iter()
                .take_while(|(_, m)| m.header.id != message.header.id)
                .map(|(_, m)| Arc::clone(m))
                .collect()
        };
        earlier.into_iter().find(|m| m.owes(participant))
    }
}

/// How a message loaded from the log was decided, from the reason its
/// decision was recorded with.
pub fn via_of(reason: Option<&str>) -> MessageVia {
    [MessageVia::CheckBack, MessageVia::Operator]
        .into_iter()
        .find(|via| reason == Some(message_via_str(*via)))
        .unwrap_or(MessageVia::Submit)
}

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

mod send;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::metrics;
use crate::model::{
    BranchState, BranchView, Destination, MessageVia, OperatorAction, Preview, Resolution, TxnKind,
    TxnState, TxnView, message_via_str,
};
use crate::protocol::message::{CheckAnswer, DestinationPhase, Effect, Event, Message, Phase};
use crate::store::{BranchEnd, Record};

use crate::runtime::durable::{Urgency, Written, write_until_durable_as};
use crate::runtime::log::Durable;
use crate::runtime::participants::BranchCall;
use crate::runtime::requests::TxnHeader;
use crate::runtime::shared::Shared;

/// The name an operator gives a message's producer in `concord txn
/// resolve` (a destination may not be called so).
pub const PRODUCER: &str = "producer";

/// Failed check-backs, or failed deliveries to one destination, after which
/// the message is flagged NEEDS_ATTENTION (it goes on being retried: M3,
/// M6).
const ATTENTION_AFTER: u32 = 5;

/// The mutable part of a live message.
pub struct MessageInner {
    pub machine: Message,
    /// Delivery attempts and the last failure, per destination.
    attempts: Vec<u32>,
    last_errors: Vec<Option<String>>,
    check_attempts: u32,
    check_error: Option<String>,
    reason: Option<String>,
    decided_at_ms: Option<u64>,
    needs_attention: bool,
    /// The flag's record was queued (it is written once).
    attention_recorded: bool,
    /// Its place among its key's unfinished messages, once decided (M5).
    ordering_seq: Option<u64>,
    /// The decision's record, queued and not yet known durable.
    decision_write: Option<(Durable, Record)>,
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
    inner: Mutex<MessageInner>,
    /// Wakes the driver: the producer submitted.
    wake: Notify,
    /// True once the message ended and its end record is durable, or once
    /// another node took it over.
    pub ended: watch::Sender<bool>,
    /// Bumped when a destination acknowledges and when the message ends:
    /// what the later messages of its key wait on (M5).
    progress: watch::Sender<u64>,
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
    fn owes(&self, participant: &str) -> bool {
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

fn destination_state(phase: Phase, destination: Option<DestinationPhase>) -> BranchState {
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
    keys: Mutex<HashMap<String, KeyOrder>>,
}

/// One key's unfinished, decided messages with their places, in order.
type KeyOrder = Vec<(u64, Arc<LiveMessage>)>;

impl Orders {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyOrder>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Places a message just decided last in its key's order and queues
    /// its decision's record (`write`, given the place) under the same
    /// lock: the log then holds a key's decisions in their order, so a
    /// crash keeps a prefix of them. Numbers restart when a key has nothing
    /// unfinished: only the order among unfinished messages matters.
    fn enqueue<T>(&self, key: &str, message: &Arc<LiveMessage>, write: impl FnOnce(u64) -> T) -> T {
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

    fn remove(&self, key: &str, message: &LiveMessage) {
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
    fn blocker(
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

/// How a message loaded from the log was decided, from the reason its
/// decision was recorded with.
pub fn via_of(reason: Option<&str>) -> MessageVia {
    [MessageVia::CheckBack, MessageVia::Operator]
        .into_iter()
        .find(|via| reason == Some(message_via_str(*via)))
        .unwrap_or(MessageVia::Submit)
}

//! The in-memory log, for deterministic simulation only (DESIGN §5); never
//! a default and not reachable from `concord serve`.
//!
//! A simulated coordinator host loses its memory when it crashes, but this
//! store lives outside the host (the simulation holds it), so what was
//! appended survives like an fsynced file. [`Store::append`] waits its write
//! latency (the fsync), then applies the batch in one step with no await
//! inside, so a crash lands before or after the whole batch, never in the
//! middle: the same atomicity SQLite gives.
//!
//! It keeps the SQLite store's semantics exactly; the store contract tests
//! (`store::contract`) run against both.
//!
//! A simulation's nemesis can also make it misbehave as a disk does
//! ([`MemoryStore::faults`]): fail every write for a while (a full disk),
//! write slowly, or fail one commit as a failed fsync reports itself —
//! applied or not, nobody can tell — after which it takes no write until
//! the coordinator restarts (`StoreError::SyncFailed`, crash-only).
//!
//! It keeps the SQL stores' change feed too (`feed`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use futures::future::BoxFuture;

mod feed;

use super::{Appended, BranchEnd, ListQuery, Record, StepProgress, Store, StoreError, Unfinished};
use crate::model::{
    BranchState, BranchView, Change, Cursor, Preview, RequestDigest, SagaStepDef, StepStatus,
    StepView, TxnId, TxnKind, TxnState, TxnView,
};

/// The in-memory log. Clones share the same contents.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// How long an append takes before it applies, like an fsync: a crash
    /// in that time loses the batch. Timed with `tokio::time`, which a
    /// simulation controls.
    write_latency: std::time::Duration,
    faults: Arc<StoreFaults>,
}

/// Faults a simulation injects into a [`MemoryStore`]; shared by clones.
#[derive(Debug, Default)]
pub struct StoreFaults {
    /// Every write fails, applying nothing (a full disk).
    pub failing: AtomicBool,
    /// Added to every write's latency, in microseconds (a slow disk).
    pub extra_latency_us: AtomicU64,
    /// The next write fails as a failed fsync does; whether it was applied
    /// is decided by the batch count (deterministic, and either way).
    pub lose_next: AtomicBool,
    /// A write was lost: nothing is written until [`StoreFaults::reopen`]
    /// (the coordinator must restart, as `concord serve` exits).
    pub lost: AtomicBool,
}

impl StoreFaults {
    /// A restarted coordinator opens the log anew.
    pub fn reopen(&self) {
        self.lose_next.store(false, Ordering::SeqCst);
        self.lost.store(false, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct State {
    /// Ordered by id, which is ordered by creation time (R7).
    transactions: BTreeMap<TxnId, Row>,
    keys: HashMap<String, TxnId>,
    /// Batches appended so far; the simulation reports it.
    batches: u64,
    /// The change feed, oldest first, as the SQL stores' triggers write it.
    changes: std::collections::VecDeque<Change>,
    /// The last change's seq (never reused, as SQLite's AUTOINCREMENT).
    last_seq: u64,
}

#[derive(Clone, Debug)]
struct Row {
    view: TxnView,
    payloads: Vec<Vec<u8>>,
    steps: Vec<SagaStepDef>,
    /// A decided message's place among its key's (M5).
    ordering_seq: Option<u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose appends take `latency` before they apply.
    pub fn with_write_latency(latency: std::time::Duration) -> Self {
        Self {
            write_latency: latency,
            ..Self::default()
        }
    }

    /// The faults this store can be told to show.
    pub fn faults(&self) -> &StoreFaults {
        &self.faults
    }

    /// Batches appended since the store was made.
    pub fn batches(&self) -> u64 {
        self.lock().batches
    }

    /// Every transaction with its branches and steps, oldest first: what a
    /// simulation checks its invariants against.
    pub fn snapshot(&self) -> Vec<TxnView> {
        let state = self.lock();
        state.transactions.keys().map(|id| state.view(id)).collect()
    }

    /// The change feed, oldest first: what a simulation checks against
    /// the final states.
    pub fn change_feed(&self) -> Vec<crate::model::Change> {
        self.lock().changes.iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Refuses a batch that would break a uniqueness rule the SQLite schema
    /// enforces (primary keys, idempotency keys), before changing anything.
    fn check(&self, batch: &[Record]) -> Result<(), StoreError> {
        let mut new_ids = Vec::new();
        let mut new_keys = Vec::new();
        let mut new_branches = Vec::new();
        for record in batch {
            let (id, key) = match record {
                Record::Begun {
                    id,
                    idempotency_key,
                    ..
                }
                | Record::SagaSubmitted {
                    id,
                    idempotency_key,
                    ..
                }
                | Record::MessagePrepared {
                    id,
                    idempotency_key,
                    ..
                } => (id, idempotency_key),
                Record::Enlisted { id, idx, .. } => {
                    let taken = self
                        .transactions
                        .get(id)
                        .is_some_and(|row| row.view.branches.len() > *idx as usize);
                    if taken || new_branches.contains(&(*id, *idx)) {
                        return Err(conflict(format!("branch {idx} of {id} exists")));
                    }
                    new_branches.push((*id, *idx));
                    continue;
                }
                _ => continue,
            };
            if self.transactions.contains_key(id) || new_ids.contains(id) {
                return Err(conflict(format!("transaction {id} exists")));
            }
            new_ids.push(*id);
            if let Some(key) = key {
                if self.keys.contains_key(key) || new_keys.contains(key) {
                    return Err(conflict(format!("idempotency key {key:?} is taken")));
                }
                new_keys.push(key.clone());
            }
        }
        Ok(())
    }

    fn apply(&mut self, record: &Record) {
        match record {
            Record::OperatorResolved { id, action } => {
                if let Some(row) = self.transactions.get_mut(id) {
                    row.view.operator_actions.push(action.clone());
                }
            }
            Record::Begun {
                id,
                created_at_ms,
                deadline_ms,
                idempotency_key,
                request_digest,
                description,
            } => self.insert(
                *id,
                (TxnKind::TwoPhase, TxnState::Active),
                (*created_at_ms, *deadline_ms),
                (idempotency_key, request_digest),
                description,
                Vec::new(),
            ),
            Record::SagaSubmitted {
                id,
                created_at_ms,
                idempotency_key,
                request_digest,
                description,
                steps,
            } => self.insert(
                *id,
                (TxnKind::Saga, TxnState::Running),
                (*created_at_ms, 0),
                (idempotency_key, request_digest),
                description,
                steps.clone(),
            ),
            Record::Enlisted {
                id,
                name,
                participant,
                payload,
                ..
            } => self.enlist(id, name, participant, payload),
            Record::MessagePrepared {
                id,
                created_at_ms,
                check_at_ms,
                idempotency_key,
                request_digest,
                description,
                producer,
                ordering_key,
                destinations,
            } => {
                self.insert(
                    *id,
                    (TxnKind::Message, TxnState::Prepared),
                    (*created_at_ms, *check_at_ms),
                    (idempotency_key, request_digest),
                    description,
                    Vec::new(),
                );
                if let Some(row) = self.transactions.get_mut(id) {
                    row.view.producer = Some(producer.clone());
                    row.view.ordering_key = ordering_key.clone();
                }
                for destination in destinations {
                    self.enlist(
                        id,
                        &destination.name,
                        &destination.participant,
                        &destination.payload,
                    );
                }
            }
            Record::MessageDecided {
                id,
                at_ms,
                via,
                ordering_seq,
            } => {
                if let Some(row) = self
                    .transactions
                    .get_mut(id)
                    .filter(|row| row.view.state == TxnState::Prepared)
                {
                    row.view.state = TxnState::Delivering;
                    row.view.decided_at_ms = Some(*at_ms);
                    row.view.reason = Some(crate::model::message_via_str(*via).to_owned());
                    row.ordering_seq = *ordering_seq;
                }
            }
            Record::Decided { id, at_ms } => {
                if let Some(row) = self.active(id) {
                    row.view.state = TxnState::Committing;
                    row.view.decided_at_ms = Some(*at_ms);
                }
            }
            Record::Aborting { id, at_ms, reason } => {
                if let Some(row) = self.active(id) {
                    row.view.state = TxnState::Aborting;
                    row.view.decided_at_ms = Some(*at_ms);
                    row.view.reason = Some(reason.clone());
                }
            }
            Record::Ended {
                id,
                state,
                at_ms,
                read_only,
                reason,
                branches,
                steps,
            } => {
                let Some(row) = self.transactions.get_mut(id) else {
                    return;
                };
                let view = &mut row.view;
                view.state = *state;
                view.ended_at_ms = Some(*at_ms);
                view.read_only = *read_only;
                view.reason = reason.clone();
                view.decided_at_ms = view.decided_at_ms.or(Some(*at_ms));
                view.needs_attention = *state == TxnState::Failed;
                for BranchEnd {
                    idx,
                    state,
                    vote,
                    attempts,
                    last_error,
                } in branches
                {
                    if let Some(branch) = view.branches.get_mut(*idx as usize) {
                        branch.state = *state;
                        branch.vote = *vote;
                        branch.attempts = *attempts;
                        branch.last_error = last_error.clone();
                    }
                }
                for step in steps {
                    record_step(view, step);
                }
            }
            Record::StepRecorded {
                id,
                saga_state,
                reason,
                step,
            } => {
                if let Some(row) = self.transactions.get_mut(id) {
                    row.view.state = *saga_state;
                    row.view.reason = reason.clone();
                    record_step(&mut row.view, step);
                }
            }
            Record::NeedsAttention { id } => {
                if let Some(row) = self.transactions.get_mut(id) {
                    row.view.needs_attention = true;
                }
            }
        }
    }

    fn enlist(&mut self, id: &TxnId, name: &str, participant: &str, payload: &[u8]) {
        if let Some(row) = self.transactions.get_mut(id) {
            row.view.branches.push(BranchView {
                name: name.to_owned(),
                participant: participant.to_owned(),
                state: BranchState::Enlisted,
                vote: None,
                attempts: 0,
                last_error: None,
                payload: Preview::of(payload),
            });
            row.view.branch_count += 1;
            row.payloads.push(payload.to_vec());
        }
    }

    /// Grouped in pairs: what it is and its state; when it was created and
    /// its deadline; its idempotency key and that request's digest.
    fn insert(
        &mut self,
        id: TxnId,
        (kind, state): (TxnKind, TxnState),
        (created_at_ms, deadline_ms): (u64, u64),
        (idempotency_key, request_digest): (&Option<String>, &Option<RequestDigest>),
        description: &Option<String>,
        steps: Vec<SagaStepDef>,
    ) {
        if let Some(key) = idempotency_key {
            self.keys.insert(key.clone(), id);
        }
        let step_views: Vec<StepView> = steps
            .iter()
            .map(|def| StepView {
                name: def.name.clone(),
                participant: def.participant.clone(),
                kind: def.kind,
                status: StepStatus::Pending,
                depends_on: def
                    .depends_on
                    .iter()
                    .filter_map(|dep| steps.get(*dep).map(|d| d.name.clone()))
                    .collect(),
                attempts: 0,
                compensation_attempts: 0,
                last_error: None,
                action: Preview::of(&def.action),
                compensation: Preview::of(def.compensation.as_deref().unwrap_or_default()),
            })
            .collect();
        let view = TxnView {
            id,
            kind,
            state,
            created_at_ms,
            deadline_ms,
            decided_at_ms: None,
            ended_at_ms: None,
            reason: None,
            idempotency_key: idempotency_key.clone(),
            request_digest: request_digest.clone(),
            description: description.clone(),
            read_only: false,
            // A saga's parts are its steps: listings count them here.
            branch_count: u32::try_from(step_views.len()).unwrap_or(u32::MAX),
            branches: Vec::new(),
            steps: step_views,
            needs_attention: false,
            operator_actions: Vec::new(),
            producer: None,
            ordering_key: None,
        };
        self.transactions.insert(
            id,
            Row {
                view,
                payloads: Vec::new(),
                steps,
                ordering_seq: None,
            },
        );
    }

    /// A decision applies only to a transaction still active, as in SQLite.
    fn active(&mut self, id: &TxnId) -> Option<&mut Row> {
        self.transactions
            .get_mut(id)
            .filter(|row| row.view.state == TxnState::Active)
    }

    fn view(&self, id: &TxnId) -> TxnView {
        self.transactions[id].view.clone()
    }

    /// A listing shows no branches or steps.
    fn summary(row: &Row) -> TxnView {
        TxnView {
            branches: Vec::new(),
            steps: Vec::new(),
            operator_actions: Vec::new(),
            ..row.view.clone()
        }
    }
}

fn record_step(view: &mut TxnView, step: &StepProgress) {
    if let Some(target) = view.steps.get_mut(step.idx as usize) {
        target.status = step.status;
        target.attempts = step.attempts;
        target.compensation_attempts = step.compensation_attempts;
        target.last_error = step.last_error.clone();
    }
}

fn conflict(what: String) -> StoreError {
    StoreError::Refused(format!("constraint violated: {what}"))
}

impl Store for MemoryStore {
    fn append<'a>(&'a self, batch: &'a [Record]) -> BoxFuture<'a, Result<Appended, StoreError>> {
        async move {
            let faults = &self.faults;
            let latency = self.write_latency
                + std::time::Duration::from_micros(faults.extra_latency_us.load(Ordering::SeqCst));
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if faults.lost.load(Ordering::SeqCst) {
                return Err(StoreError::WriterStopped);
            }
            if faults.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Corrupt(
                    "database or disk is full (injected)".into(),
                ));
            }
            let mut state = self.lock();
            let lose = faults.lose_next.swap(false, Ordering::SeqCst);
            if !lose || state.batches.is_multiple_of(2) {
                state.check(batch)?;
                for record in batch {
                    let before = state.observed(&record.txn_id());
                    state.apply(record);
                    state.note_changes(record, before);
                }
                state.batches += 1;
            }
            if lose {
                faults.lost.store(true, Ordering::SeqCst);
                return Err(StoreError::SyncFailed {
                    path: "memory".into(),
                    cause: "fsync failed (injected)".into(),
                });
            }
            Ok(Appended::default())
        }
        .boxed()
    }

    fn transaction<'a>(
        &'a self,
        id: &'a TxnId,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        let state = self.lock();
        let view = state.transactions.contains_key(id).then(|| state.view(id));
        futures::future::ready(Ok(view)).boxed()
    }

    fn by_idempotency_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        let state = self.lock();
        let view = state.keys.get(key).map(|id| state.view(id));
        futures::future::ready(Ok(view)).boxed()
    }

    fn list<'a>(&'a self, query: &'a ListQuery) -> BoxFuture<'a, Result<Vec<TxnView>, StoreError>> {
        let state = self.lock();
        let upper = match query.before {
            Some(before) => std::ops::Bound::Excluded(before),
            None => std::ops::Bound::Unbounded,
        };
        let lower = match query.since {
            // A floor at or above the cursor leaves nothing (and a range
            // whose ends cross would panic).
            Some(since) if query.before.is_some_and(|before| since >= before) => {
                return futures::future::ready(Ok(Vec::new())).boxed();
            }
            Some(since) => std::ops::Bound::Included(since),
            None => std::ops::Bound::Unbounded,
        };
        let views = state
            .transactions
            .range((lower, upper))
            .rev()
            .map(|(_, row)| row)
            .filter(|row| query.states.is_empty() || query.states.contains(&row.view.state))
            .filter(|row| !query.needs_attention || row.view.needs_attention)
            .filter(|row| {
                query
                    .text
                    .as_deref()
                    .is_none_or(|text| row.view.mentions(text))
            })
            .take(query.limit as usize)
            .map(State::summary)
            .collect();
        futures::future::ready(Ok(views)).boxed()
    }

    fn prune<'a>(
        &'a self,
        begun_before: &'a TxnId,
        ended_before_ms: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut state = self.lock();
        for _ in 0..limit {
            match state.changes.front() {
                Some(oldest) if oldest.at_ms < ended_before_ms => state.changes.pop_front(),
                _ => break,
            };
        }
        let doomed: Vec<TxnId> = state
            .transactions
            .range(..*begun_before)
            .filter(|(_, row)| {
                let view = &row.view;
                view.state.is_terminal()
                    && view.ended_at_ms.is_some_and(|at| at < ended_before_ms)
                    && !view.needs_attention
                    && view.operator_actions.is_empty()
            })
            .map(|(id, _)| *id)
            .take(limit as usize)
            .collect();
        for id in &doomed {
            if let Some(row) = state.transactions.remove(id)
                && let Some(key) = &row.view.idempotency_key
            {
                state.keys.remove(key);
            }
        }
        futures::future::ready(Ok(doomed.len() as u64)).boxed()
    }

    fn changes<'a>(
        &'a self,
        after: Option<Cursor>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
        let state = self.lock();
        let after = after.unwrap_or_default();
        let changes = state
            .changes
            .iter()
            .filter(|change| change.cursor > after)
            .take(limit as usize)
            .cloned()
            .collect();
        futures::future::ready(Ok(changes)).boxed()
    }

    fn id_floor(
        &self,
        before: Option<TxnId>,
        n: u32,
    ) -> BoxFuture<'_, Result<Option<TxnId>, StoreError>> {
        let state = self.lock();
        let upper = match before {
            Some(before) => std::ops::Bound::Excluded(before),
            None => std::ops::Bound::Unbounded,
        };
        let floor = n.checked_sub(1).and_then(|skip| {
            (state.transactions)
                .range((std::ops::Bound::Unbounded, upper))
                .rev()
                .nth(skip as usize)
                .map(|(id, _)| *id)
        });
        futures::future::ready(Ok(floor)).boxed()
    }

    fn newest_change(&self) -> BoxFuture<'_, Result<Option<Cursor>, StoreError>> {
        let newest = self.lock().changes.back().map(|change| change.cursor);
        futures::future::ready(Ok(newest)).boxed()
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        let state = self.lock();
        let unfinished = state
            .transactions
            .values()
            .filter(|row| !row.view.state.is_terminal())
            .map(|row| Unfinished {
                view: row.view.clone(),
                payloads: row.payloads.clone(),
                steps: row.steps.clone(),
                ordering_seq: row.ordering_seq,
            })
            .collect();
        futures::future::ready(Ok(unfinished)).boxed()
    }
}

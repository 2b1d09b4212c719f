//! One batch of records, written with a fixed number of statements.
//!
//! Every statement sqlx runs on SQLite is a round trip to the connection's
//! worker thread, and that round trip — not SQLite's own work — was the
//! writer's largest cost (~35 µs per statement, seven statements per 2PC
//! transaction: docs/performance.md). So a batch is regrouped by kind of
//! row, and each group goes to SQLite as one JSON array that `json_each`
//! spreads over the rows: a batch of 500 transactions costs the same five or
//! so statements as a batch of one.
//!
//! Regrouping keeps the log's meaning because the protocol orders each
//! transaction's records the same way the statements run: inserts first
//! (`Begun`, `SagaSubmitted`, `Enlisted`), then decisions, then saga and
//! step progress (the last record of a step or a saga wins, as replaying
//! them in order would), then the attention flag, then `Ended`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::super::{BranchEnd, Record, StepProgress, StoreError};
use super::{duration_ms, to_i64};
use crate::model::{TxnId, VoteKind, step_kind_str, step_status_str};

/// The rows of one batch, grouped by the statement that writes them.
#[derive(Default)]
pub(super) struct Grouped {
    transactions: Vec<Value>,
    branches: Vec<Value>,
    steps: Vec<Value>,
    decided: Vec<Value>,
    aborting: Vec<Value>,
    saga_states: Latest<TxnId>,
    step_progress: Latest<(TxnId, u32)>,
    attention: Vec<Value>,
    ended: Vec<Value>,
    branch_ends: Vec<Value>,
}

/// Rows keyed so that a later one replaces an earlier one.
struct Latest<K> {
    rows: Vec<Value>,
    at: HashMap<K, usize>,
}

impl<K> Default for Latest<K> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            at: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Latest<K> {
    fn put(&mut self, key: K, row: Value) {
        match self.at.get(&key) {
            Some(&idx) => self.rows[idx] = row,
            None => {
                self.at.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }
}

impl Grouped {
    pub(super) fn new(batch: &[Record]) -> Self {
        let mut grouped = Self::default();
        for record in batch {
            grouped.add(record);
        }
        grouped
    }

    fn add(&mut self, record: &Record) {
        match record {
            Record::Begun {
                id,
                created_at_ms,
                deadline_ms,
                idempotency_key,
                description,
            } => self.transactions.push(json!({
                "id": id.to_string(),
                "kind": "two_phase",
                "state": "active",
                "created": to_i64(*created_at_ms),
                "deadline": to_i64(*deadline_ms),
                "key": idempotency_key,
                "description": description,
            })),
            Record::SagaSubmitted {
                id,
                created_at_ms,
                idempotency_key,
                description,
                steps,
            } => {
                self.transactions.push(json!({
                    "id": id.to_string(),
                    "kind": "saga",
                    "state": "running",
                    "created": to_i64(*created_at_ms),
                    "deadline": 0,
                    "key": idempotency_key,
                    "description": description,
                }));
                for (idx, step) in steps.iter().enumerate() {
                    let depends_on: Vec<String> =
                        step.depends_on.iter().map(ToString::to_string).collect();
                    self.steps.push(json!({
                        "txn": id.to_string(),
                        "idx": idx,
                        "name": step.name,
                        "participant": step.participant,
                        "kind": step_kind_str(step.kind),
                        "action": hex(&step.action),
                        "compensation": step.compensation.as_deref().map(hex),
                        "depends_on": depends_on.join(","),
                        "timeout": duration_ms(step.attempt_timeout),
                        "initial": duration_ms(step.retry.initial_delay),
                        "multiplier": step.retry.multiplier,
                        "max": duration_ms(step.retry.max_delay),
                        "attempts": step.retry.max_attempts,
                        "jitter": step.retry.jitter,
                    }));
                }
            }
            Record::Enlisted {
                id,
                idx,
                name,
                participant,
                payload,
            } => self.branches.push(json!({
                "txn": id.to_string(),
                "idx": idx,
                "name": name,
                "participant": participant,
                "payload": hex(payload),
            })),
            Record::Decided { id, at_ms } => self.decided.push(json!({
                "id": id.to_string(),
                "at": to_i64(*at_ms),
            })),
            Record::Aborting { id, at_ms, reason } => self.aborting.push(json!({
                "id": id.to_string(),
                "at": to_i64(*at_ms),
                "reason": reason,
            })),
            Record::StepRecorded {
                id,
                saga_state,
                reason,
                step,
            } => {
                self.saga_states.put(
                    *id,
                    json!({
                        "id": id.to_string(),
                        "state": saga_state.as_str(),
                        "reason": reason,
                    }),
                );
                self.progress(id, step);
            }
            Record::NeedsAttention { id } => self.attention.push(json!(id.to_string())),
            Record::Ended {
                id,
                state,
                at_ms,
                read_only,
                reason,
                branches,
                steps,
            } => {
                self.ended.push(json!({
                    "id": id.to_string(),
                    "state": state.as_str(),
                    "at": to_i64(*at_ms),
                    "read_only": read_only,
                    "reason": reason,
                }));
                for BranchEnd {
                    idx,
                    state,
                    vote,
                    attempts,
                    last_error,
                } in branches
                {
                    self.branch_ends.push(json!({
                        "txn": id.to_string(),
                        "idx": idx,
                        "state": state.as_str(),
                        "vote": vote.map(VoteKind::as_str),
                        "attempts": attempts,
                        "error": last_error,
                    }));
                }
                for step in steps {
                    self.progress(id, step);
                }
            }
        }
    }

    fn progress(&mut self, id: &TxnId, step: &StepProgress) {
        self.step_progress.put(
            (*id, step.idx),
            json!({
                "txn": id.to_string(),
                "idx": step.idx,
                "state": step_status_str(step.status),
                "attempts": step.attempts,
                "compensations": step.compensation_attempts,
                "error": step.last_error,
            }),
        );
    }

    /// Runs the statements of every non-empty group, in the order the module
    /// documentation gives, inside the caller's database transaction.
    pub(super) async fn write(
        self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        let groups: [(&Vec<Value>, &'static str); 10] = [
            (&self.transactions, INSERT_TRANSACTIONS),
            (&self.branches, INSERT_BRANCHES),
            (&self.steps, INSERT_STEPS),
            (&self.decided, DECIDE),
            (&self.aborting, ABORT),
            (&self.saga_states.rows, SAGA_STATE),
            (&self.step_progress.rows, STEP_PROGRESS),
            (&self.attention, NEEDS_ATTENTION),
            (&self.ended, END),
            (&self.branch_ends, BRANCH_END),
        ];
        for (rows, statement) in groups {
            if rows.is_empty() {
                continue;
            }
            let rows = serde_json::to_string(rows)
                .map_err(|e| StoreError::Corrupt(format!("cannot encode a batch: {e}")))?;
            sqlx::query(statement).bind(rows).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

const INSERT_TRANSACTIONS: &str = "
    INSERT INTO transactions
      (id, kind, state, created_at_ms, deadline_ms, idempotency_key, description)
    SELECT j.value ->> 'id', j.value ->> 'kind', j.value ->> 'state', j.value ->> 'created',
           j.value ->> 'deadline', j.value ->> 'key', j.value ->> 'description'
    FROM json_each(?1) AS j";

// `unhex('')` is NULL, not an empty blob: an empty payload stays empty.
const INSERT_BRANCHES: &str = "
    INSERT INTO branches (txn_id, idx, name, participant, payload, state)
    SELECT j.value ->> 'txn', j.value ->> 'idx', j.value ->> 'name', j.value ->> 'participant',
           COALESCE(unhex(j.value ->> 'payload'), X''), 'enlisted'
    FROM json_each(?1) AS j";

const INSERT_STEPS: &str = "
    INSERT INTO saga_steps
      (txn_id, idx, name, participant, kind, action, compensation, depends_on,
       attempt_timeout_ms, retry_initial_ms, retry_multiplier, retry_max_ms,
       retry_max_attempts, retry_jitter)
    SELECT j.value ->> 'txn', j.value ->> 'idx', j.value ->> 'name', j.value ->> 'participant',
           j.value ->> 'kind', COALESCE(unhex(j.value ->> 'action'), X''),
           CASE WHEN j.value ->> 'compensation' IS NULL THEN NULL
                ELSE COALESCE(unhex(j.value ->> 'compensation'), X'') END,
           j.value ->> 'depends_on', j.value ->> 'timeout', j.value ->> 'initial',
           j.value ->> 'multiplier', j.value ->> 'max', j.value ->> 'attempts',
           j.value ->> 'jitter'
    FROM json_each(?1) AS j";

// R1/R2: a decision applies only to a transaction still active.
const DECIDE: &str = "
    UPDATE transactions SET state = 'committing', decided_at_ms = j.value ->> 'at'
    FROM json_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id' AND transactions.state = 'active'";

const ABORT: &str = "
    UPDATE transactions
    SET state = 'aborting', decided_at_ms = j.value ->> 'at', reason = j.value ->> 'reason'
    FROM json_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id' AND transactions.state = 'active'";

const SAGA_STATE: &str = "
    UPDATE transactions SET state = j.value ->> 'state', reason = j.value ->> 'reason'
    FROM json_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id'";

const STEP_PROGRESS: &str = "
    UPDATE saga_steps
    SET state = j.value ->> 'state', attempts = j.value ->> 'attempts',
        compensation_attempts = j.value ->> 'compensations', last_error = j.value ->> 'error'
    FROM json_each(?1) AS j
    WHERE saga_steps.txn_id = j.value ->> 'txn' AND saga_steps.idx = j.value ->> 'idx'";

const NEEDS_ATTENTION: &str = "
    UPDATE transactions SET needs_attention = 1
    WHERE id IN (SELECT value FROM json_each(?1))";

// The decided_at stamp stays the decision's; an abort decided and ended in
// one step gets both. A saga that needed attention while retrying no longer
// does once it ended, unless it FAILED.
const END: &str = "
    UPDATE transactions
    SET state = j.value ->> 'state', ended_at_ms = j.value ->> 'at',
        read_only = j.value ->> 'read_only', reason = j.value ->> 'reason',
        decided_at_ms = COALESCE(transactions.decided_at_ms, j.value ->> 'at'),
        needs_attention = (j.value ->> 'state' = 'failed')
    FROM json_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id'";

const BRANCH_END: &str = "
    UPDATE branches
    SET state = j.value ->> 'state', vote = j.value ->> 'vote',
        attempts = j.value ->> 'attempts', last_error = j.value ->> 'error'
    FROM json_each(?1) AS j
    WHERE branches.txn_id = j.value ->> 'txn' AND branches.idx = j.value ->> 'idx'";

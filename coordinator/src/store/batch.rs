//! One batch of records, regrouped so that the PostgreSQL store writes it
//! with one call whatever its size.
//!
//! Every statement is a round trip to the server, which costs more than the
//! server's work on a row. So a batch is regrouped by kind of row, and each
//! group goes to the database as one JSON array that `concord_append`
//! spreads over the rows (`jsonb_array_elements`): a batch of 500
//! transactions costs the same one call as a batch of one. (The SQLite
//! store, whose database lives in the process, binds each record's values
//! to prepared statements instead: `store::sqlite_writer`.)
//!
//! Regrouping keeps the log's meaning because the protocol orders each
//! transaction's records the same way the statements run: inserts first
//! (`Begun`, `SagaSubmitted`, `Enlisted`), then decisions, then saga and
//! step progress (the last record of a step or a saga wins, as replaying
//! them in order would), then the attention flag, then `Ended`.

use std::collections::HashMap;

use serde::Serialize;

use super::rows::{duration_ms, to_i64};
use super::{BranchEnd, Record, StepProgress, StoreError};
use crate::model::{
    TxnId, TxnKind, TxnState, VoteKind, message_via_str, step_kind_str, step_status_str,
};

/// The rows of one batch, grouped by the statement that writes them. Rows
/// are typed and borrow from the batch: each group is serialised straight
/// into its JSON array, with none of the per-field maps and strings that
/// `serde_json::Value` rows cost (the log writer encodes every batch on
/// its own critical path).
#[derive(Default)]
pub(crate) struct Grouped<'a> {
    transactions: Vec<TransactionRow<'a>>,
    branches: Vec<BranchRow<'a>>,
    steps: Vec<StepRow<'a>>,
    decided: Vec<DecidedRow>,
    aborting: Vec<AbortingRow<'a>>,
    saga_states: Latest<TxnId, SagaStateRow<'a>>,
    step_progress: Latest<(TxnId, u32), ProgressRow<'a>>,
    attention: Vec<String>,
    ended: Vec<EndedRow<'a>>,
    branch_ends: Vec<BranchEndRow<'a>>,
    operator_actions: Vec<OperatorActionRow<'a>>,
}

// One struct per statement's rows; the field names are the keys the
// statements read (`j.value ->> 'id'`, ...).

#[derive(Serialize)]
struct TransactionRow<'a> {
    id: String,
    kind: &'static str,
    state: &'static str,
    created: i64,
    deadline: i64,
    key: Option<&'a str>,
    digest: Option<&'a str>,
    description: Option<&'a str>,
    producer: Option<&'a str>,
    ordering_key: Option<&'a str>,
}

#[derive(Serialize)]
struct BranchRow<'a> {
    txn: String,
    idx: u32,
    name: &'a str,
    participant: &'a str,
    payload: String,
}

#[derive(Serialize)]
struct StepRow<'a> {
    txn: String,
    idx: usize,
    name: &'a str,
    participant: &'a str,
    kind: &'static str,
    action: String,
    compensation: Option<String>,
    depends_on: String,
    timeout: i64,
    initial: i64,
    multiplier: f64,
    max: i64,
    attempts: u32,
    jitter: bool,
}

/// A decision: R1's 'active' -> 'committing', or a message's 'prepared'
/// -> 'delivering' (applied only from `from`).
#[derive(Serialize)]
struct DecidedRow {
    id: String,
    at: i64,
    from: &'static str,
    state: &'static str,
    reason: Option<&'static str>,
    seq: Option<i64>,
}

#[derive(Serialize)]
struct AbortingRow<'a> {
    id: String,
    at: i64,
    reason: &'a str,
}

#[derive(Serialize)]
struct SagaStateRow<'a> {
    id: String,
    state: &'static str,
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ProgressRow<'a> {
    txn: String,
    idx: u32,
    state: &'static str,
    attempts: u32,
    compensations: u32,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct OperatorActionRow<'a> {
    txn: String,
    at: i64,
    branch: &'a str,
    outcome: &'static str,
    reason: &'a str,
    operator: &'a str,
}

#[derive(Serialize)]
struct EndedRow<'a> {
    id: String,
    state: &'static str,
    at: i64,
    read_only: bool,
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct BranchEndRow<'a> {
    txn: String,
    idx: u32,
    state: &'static str,
    vote: Option<&'static str>,
    attempts: u32,
    error: Option<&'a str>,
}

/// Rows keyed so that a later one replaces an earlier one.
struct Latest<K, R> {
    rows: Vec<R>,
    at: HashMap<K, usize>,
}

impl<K, R> Default for Latest<K, R> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            at: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, R> Latest<K, R> {
    fn put(&mut self, key: K, row: R) {
        match self.at.get(&key) {
            Some(&idx) => self.rows[idx] = row,
            None => {
                self.at.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }
}

impl<'a> Grouped<'a> {
    pub(crate) fn new(batch: &'a [Record]) -> Self {
        let mut grouped = Self::default();
        for record in batch {
            grouped.add(record);
        }
        grouped
    }

    fn add(&mut self, record: &'a Record) {
        match record {
            Record::Begun {
                id,
                created_at_ms,
                deadline_ms,
                idempotency_key,
                request_digest,
                description,
            } => self.transactions.push(TransactionRow {
                id: id.to_string(),
                kind: "two_phase",
                state: "active",
                created: to_i64(*created_at_ms),
                deadline: to_i64(*deadline_ms),
                key: idempotency_key.as_deref(),
                digest: request_digest.as_deref(),
                description: description.as_deref(),
                producer: None,
                ordering_key: None,
            }),
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
                self.transactions.push(TransactionRow {
                    id: id.to_string(),
                    kind: TxnKind::Message.as_str(),
                    state: TxnState::Prepared.as_str(),
                    created: to_i64(*created_at_ms),
                    deadline: to_i64(*check_at_ms),
                    key: idempotency_key.as_deref(),
                    digest: request_digest.as_deref(),
                    description: description.as_deref(),
                    producer: Some(producer),
                    ordering_key: ordering_key.as_deref(),
                });
                for (idx, destination) in destinations.iter().enumerate() {
                    self.branches.push(BranchRow {
                        txn: id.to_string(),
                        idx: u32::try_from(idx).unwrap_or(u32::MAX),
                        name: &destination.name,
                        participant: &destination.participant,
                        payload: hex(&destination.payload),
                    });
                }
            }
            Record::MessageDecided {
                id,
                at_ms,
                via,
                ordering_seq,
            } => self.decided.push(DecidedRow {
                id: id.to_string(),
                at: to_i64(*at_ms),
                from: TxnState::Prepared.as_str(),
                state: TxnState::Delivering.as_str(),
                reason: Some(message_via_str(*via)),
                seq: ordering_seq.map(to_i64),
            }),
            Record::SagaSubmitted {
                id,
                created_at_ms,
                idempotency_key,
                request_digest,
                description,
                steps,
            } => {
                self.transactions.push(TransactionRow {
                    id: id.to_string(),
                    kind: "saga",
                    state: "running",
                    created: to_i64(*created_at_ms),
                    deadline: 0,
                    key: idempotency_key.as_deref(),
                    digest: request_digest.as_deref(),
                    description: description.as_deref(),
                    producer: None,
                    ordering_key: None,
                });
                for (idx, step) in steps.iter().enumerate() {
                    let depends_on: Vec<String> =
                        step.depends_on.iter().map(ToString::to_string).collect();
                    self.steps.push(StepRow {
                        txn: id.to_string(),
                        idx,
                        name: &step.name,
                        participant: &step.participant,
                        kind: step_kind_str(step.kind),
                        action: hex(&step.action),
                        compensation: step.compensation.as_deref().map(hex),
                        depends_on: depends_on.join(","),
                        timeout: duration_ms(step.attempt_timeout),
                        initial: duration_ms(step.retry.initial_delay),
                        multiplier: step.retry.multiplier,
                        max: duration_ms(step.retry.max_delay),
                        attempts: step.retry.max_attempts,
                        jitter: step.retry.jitter,
                    });
                }
            }
            Record::Enlisted {
                id,
                idx,
                name,
                participant,
                payload,
            } => self.branches.push(BranchRow {
                txn: id.to_string(),
                idx: *idx,
                name,
                participant,
                payload: hex(payload),
            }),
            Record::Decided { id, at_ms } => self.decided.push(DecidedRow {
                id: id.to_string(),
                at: to_i64(*at_ms),
                from: TxnState::Active.as_str(),
                state: TxnState::Committing.as_str(),
                reason: None,
                seq: None,
            }),
            Record::Aborting { id, at_ms, reason } => self.aborting.push(AbortingRow {
                id: id.to_string(),
                at: to_i64(*at_ms),
                reason,
            }),
            Record::StepRecorded {
                id,
                saga_state,
                reason,
                step,
            } => {
                self.saga_states.put(
                    *id,
                    SagaStateRow {
                        id: id.to_string(),
                        state: saga_state.as_str(),
                        reason: reason.as_deref(),
                    },
                );
                self.progress(id, step);
            }
            Record::NeedsAttention { id } => self.attention.push(id.to_string()),
            Record::OperatorResolved { id, action } => {
                self.operator_actions.push(OperatorActionRow {
                    txn: id.to_string(),
                    at: to_i64(action.at_ms),
                    branch: &action.branch,
                    outcome: action.outcome.as_str(),
                    reason: &action.reason,
                    operator: &action.operator,
                })
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
                self.ended.push(EndedRow {
                    id: id.to_string(),
                    state: state.as_str(),
                    at: to_i64(*at_ms),
                    read_only: *read_only,
                    reason: reason.as_deref(),
                });
                for BranchEnd {
                    idx,
                    state,
                    vote,
                    attempts,
                    last_error,
                } in branches
                {
                    self.branch_ends.push(BranchEndRow {
                        txn: id.to_string(),
                        idx: *idx,
                        state: state.as_str(),
                        vote: vote.map(VoteKind::as_str),
                        attempts: *attempts,
                        error: last_error.as_deref(),
                    });
                }
                for step in steps {
                    self.progress(id, step);
                }
            }
        }
    }

    fn progress(&mut self, id: &TxnId, step: &'a StepProgress) {
        self.step_progress.put(
            (*id, step.idx),
            ProgressRow {
                txn: id.to_string(),
                idx: step.idx,
                state: step_status_str(step.status),
                attempts: step.attempts,
                compensations: step.compensation_attempts,
                error: step.last_error.as_deref(),
            },
        );
    }

    /// Every non-empty group as a JSON array, in the order the module
    /// documentation gives; each backend runs one statement per group.
    pub(crate) fn encoded(&self) -> Result<Vec<(Group, String)>, StoreError> {
        let mut encoded = Vec::new();
        for group in Group::ALL {
            let json = match group {
                Group::Transactions => array(&self.transactions),
                Group::Branches => array(&self.branches),
                Group::Steps => array(&self.steps),
                Group::Decided => array(&self.decided),
                Group::Aborting => array(&self.aborting),
                Group::SagaStates => array(&self.saga_states.rows),
                Group::StepProgress => array(&self.step_progress.rows),
                Group::Attention => array(&self.attention),
                Group::OperatorActions => array(&self.operator_actions),
                Group::Ended => array(&self.ended),
                Group::BranchEnds => array(&self.branch_ends),
            };
            if let Some(json) = json {
                encoded.push((group, json?));
            }
        }
        Ok(encoded)
    }
}

/// A group's rows as one JSON array; None for a group with no rows.
fn array<R: Serialize>(rows: &[R]) -> Option<Result<String, StoreError>> {
    (!rows.is_empty()).then(|| {
        serde_json::to_string(rows)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode a batch: {e}")))
    })
}

impl Group {
    /// Every group, in the order their statements run.
    pub(crate) const ALL: [Group; 11] = [
        Group::Transactions,
        Group::Branches,
        Group::Steps,
        Group::Decided,
        Group::Aborting,
        Group::SagaStates,
        Group::StepProgress,
        Group::Attention,
        Group::OperatorActions,
        Group::Ended,
        Group::BranchEnds,
    ];
}

/// What one statement writes; see [`Group::ALL`] for their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    /// New transactions, sagas and messages (`Begun`, `SagaSubmitted`,
    /// `MessagePrepared`).
    Transactions,
    /// New branches (`Enlisted`) and message destinations.
    Branches,
    /// New saga steps (`SagaSubmitted`).
    Steps,
    /// R1: COMMITTED decisions, applied only to active transactions; a
    /// message's decision (`MessageDecided`), only to a prepared one.
    Decided,
    /// R2: ABORTED decisions, applied only to active transactions.
    Aborting,
    /// A saga's state and reason, from its latest `StepRecorded`.
    SagaStates,
    /// Each step's latest progress (`StepRecorded`, `Ended`).
    StepProgress,
    /// NEEDS_ATTENTION flags: a JSON array of ids.
    Attention,
    /// Operators' decisions (`OperatorResolved`), before the end they allow.
    OperatorActions,
    /// Ends; `decided_at` keeps the decision's stamp, `needs_attention`
    /// stays only for FAILED.
    Ended,
    /// Each branch's end (`Ended`).
    BranchEnds,
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

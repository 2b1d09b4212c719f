//! Rows as both SQL backends read them, and the conversions between the
//! log's values and column values. The SQLite and PostgreSQL schemas use
//! the same column names and compatible types (64-bit integers, text,
//! blobs/bytea, booleans), so one set of `FromRow` structs serves both.

use std::time::Duration;

use sqlx::FromRow;

use super::StoreError;
use crate::model::{
    BranchState, BranchView, Change, Cursor, OperatorAction, Preview, Resolution, RetryPolicy,
    SagaStepDef, StepView, TxnId, TxnKind, TxnState, TxnView, VoteKind, parse_step_kind,
    parse_step_status,
};

pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Store timestamps are i64; anything past i64::MAX ms is clamped (that is
/// ~292 million years away).
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn parse_id(id: &str) -> Result<TxnId, StoreError> {
    id.parse()
        .map_err(|e| StoreError::Corrupt(format!("transaction id {id:?} {e}")))
}

#[derive(FromRow)]
pub(crate) struct TxnRow {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) needs_attention: bool,
    pub(crate) state: String,
    pub(crate) created_at_ms: i64,
    pub(crate) deadline_ms: i64,
    pub(crate) decided_at_ms: Option<i64>,
    pub(crate) ended_at_ms: Option<i64>,
    pub(crate) reason: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) request_digest: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) read_only: bool,
    pub(crate) branch_count: i64,
    pub(crate) producer: Option<String>,
    pub(crate) ordering_key: Option<String>,
    pub(crate) ordering_seq: Option<i64>,
}

impl TxnRow {
    pub(crate) fn into_view(self) -> Result<TxnView, StoreError> {
        let state = TxnState::parse(&self.state)
            .ok_or_else(|| StoreError::Corrupt(format!("transaction state {:?}", self.state)))?;
        let kind = TxnKind::parse(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("transaction kind {:?}", self.kind)))?;
        Ok(TxnView {
            id: parse_id(&self.id)?,
            kind,
            state,
            created_at_ms: to_u64(self.created_at_ms),
            deadline_ms: to_u64(self.deadline_ms),
            decided_at_ms: self.decided_at_ms.map(to_u64),
            ended_at_ms: self.ended_at_ms.map(to_u64),
            reason: self.reason,
            idempotency_key: self.idempotency_key,
            request_digest: self.request_digest,
            description: self.description,
            read_only: self.read_only,
            branch_count: u32::try_from(self.branch_count).unwrap_or(u32::MAX),
            branches: Vec::new(),
            steps: Vec::new(),
            needs_attention: self.needs_attention,
            operator_actions: Vec::new(),
            producer: self.producer,
            ordering_key: self.ordering_key,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct BranchRow {
    #[allow(dead_code)]
    pub(crate) idx: i64,
    pub(crate) name: String,
    pub(crate) participant: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) state: String,
    pub(crate) vote: Option<String>,
    pub(crate) attempts: i64,
    pub(crate) last_error: Option<String>,
}

impl BranchRow {
    /// The branch as operators see it, and its payload.
    pub(crate) fn into_parts(self) -> Result<(BranchView, Vec<u8>), StoreError> {
        let state = BranchState::parse(&self.state)
            .ok_or_else(|| StoreError::Corrupt(format!("branch state {:?}", self.state)))?;
        let vote = match self.vote.as_deref() {
            None => None,
            Some(v) => {
                Some(VoteKind::parse(v).ok_or_else(|| StoreError::Corrupt(format!("vote {v:?}")))?)
            }
        };
        let view = BranchView {
            name: self.name,
            participant: self.participant,
            state,
            vote,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            last_error: self.last_error,
            payload: Preview::of(&self.payload),
        };
        Ok((view, self.payload))
    }
}

#[derive(FromRow)]
pub(crate) struct StepRow {
    pub(crate) name: String,
    pub(crate) participant: String,
    pub(crate) kind: String,
    pub(crate) action: Vec<u8>,
    pub(crate) compensation: Option<Vec<u8>>,
    pub(crate) depends_on: String,
    pub(crate) attempt_timeout_ms: i64,
    pub(crate) retry_initial_ms: i64,
    pub(crate) retry_multiplier: f64,
    pub(crate) retry_max_ms: i64,
    pub(crate) retry_max_attempts: i64,
    pub(crate) retry_jitter: bool,
    pub(crate) state: String,
    pub(crate) attempts: i64,
    pub(crate) compensation_attempts: i64,
    pub(crate) last_error: Option<String>,
}

impl StepRow {
    pub(crate) fn def(&self) -> Result<SagaStepDef, StoreError> {
        let kind = parse_step_kind(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("step kind {:?}", self.kind)))?;
        let depends_on = if self.depends_on.is_empty() {
            Vec::new()
        } else {
            self.depends_on
                .split(',')
                .map(|dep| dep.parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| StoreError::Corrupt(format!("depends_on {:?}", self.depends_on)))?
        };
        let ms = |value: i64| Duration::from_millis(to_u64(value));
        Ok(SagaStepDef {
            name: self.name.clone(),
            participant: self.participant.clone(),
            kind,
            action: self.action.clone(),
            compensation: self.compensation.clone(),
            depends_on,
            attempt_timeout: ms(self.attempt_timeout_ms),
            retry: RetryPolicy {
                initial_delay: ms(self.retry_initial_ms),
                multiplier: self.retry_multiplier,
                max_delay: ms(self.retry_max_ms),
                max_attempts: u32::try_from(self.retry_max_attempts).unwrap_or(u32::MAX),
                jitter: self.retry_jitter,
            },
        })
    }
}

/// A saga's step definitions and views, from its step rows in order.
pub(crate) fn steps_from_rows(
    rows: Vec<StepRow>,
) -> Result<(Vec<SagaStepDef>, Vec<StepView>), StoreError> {
    let defs = rows
        .iter()
        .map(StepRow::def)
        .collect::<Result<Vec<_>, _>>()?;
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        let status = parse_step_status(&row.state)
            .ok_or_else(|| StoreError::Corrupt(format!("step state {:?}", row.state)))?;
        let def = row.def()?;
        views.push(StepView {
            name: def.name,
            participant: def.participant,
            kind: def.kind,
            status,
            depends_on: def
                .depends_on
                .iter()
                .filter_map(|dep| defs.get(*dep).map(|d| d.name.clone()))
                .collect(),
            attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
            compensation_attempts: u32::try_from(row.compensation_attempts).unwrap_or(u32::MAX),
            last_error: row.last_error,
            action: Preview::of(&def.action),
            compensation: Preview::of(def.compensation.as_deref().unwrap_or_default()),
        });
    }
    Ok((defs, views))
}

/// A branch row with its transaction's id, for loading many at once.
#[derive(FromRow)]
pub(crate) struct OwnedBranchRow {
    pub(crate) txn_id: String,
    #[sqlx(flatten)]
    pub(crate) row: BranchRow,
}

/// A step row with its saga's id, for loading many at once.
#[derive(FromRow)]
pub(crate) struct OwnedStepRow {
    pub(crate) txn_id: String,
    #[sqlx(flatten)]
    pub(crate) row: StepRow,
}

/// One transaction from its row, its branch rows and its step rows (both
/// in index order): what `Store::transaction` answers (its `view`) and what
/// recovery needs.
pub(crate) fn assemble(
    row: TxnRow,
    branches: Vec<BranchRow>,
    steps: Vec<StepRow>,
) -> Result<super::Unfinished, StoreError> {
    let ordering_seq = row.ordering_seq.map(to_u64);
    let mut view = row.into_view()?;
    let mut payloads = Vec::with_capacity(branches.len());
    for branch in branches {
        let (branch, payload) = branch.into_parts()?;
        view.branches.push(branch);
        payloads.push(payload);
    }
    let mut defs = Vec::new();
    if view.kind == TxnKind::Saga {
        let (step_defs, step_views) = steps_from_rows(steps)?;
        defs = step_defs;
        view.steps = step_views;
    }
    Ok(super::Unfinished {
        view,
        payloads,
        steps: defs,
        ordering_seq,
    })
}

/// Every unfinished transaction from three result sets — transactions,
/// their branches and their steps, each ordered by transaction id then
/// index — so that recovery reads the store with three queries, not one or
/// two per transaction.
pub(crate) fn assemble_unfinished(
    rows: Vec<TxnRow>,
    branches: Vec<OwnedBranchRow>,
    steps: Vec<OwnedStepRow>,
) -> Result<Vec<super::Unfinished>, StoreError> {
    let mut branches = branches.into_iter().peekable();
    let mut steps = steps.into_iter().peekable();
    let mut unfinished = Vec::with_capacity(rows.len());
    for row in rows {
        // Rows of transactions that ended between the queries have no
        // transaction row here: skip them.
        while branches.peek().is_some_and(|b| b.txn_id < row.id) {
            branches.next();
        }
        let mut own_branches = Vec::new();
        while let Some(branch) = branches.next_if(|b| b.txn_id == row.id) {
            own_branches.push(branch.row);
        }
        while steps.peek().is_some_and(|s| s.txn_id < row.id) {
            steps.next();
        }
        let mut own_steps = Vec::new();
        while let Some(step) = steps.next_if(|s| s.txn_id == row.id) {
            own_steps.push(step.row);
        }
        unfinished.push(assemble(row, own_branches, own_steps)?);
    }
    Ok(unfinished)
}

/// One row of `operator_actions`.
#[derive(FromRow)]
pub(crate) struct ActionRow {
    pub txn_id: String,
    pub at_ms: i64,
    pub branch: String,
    pub outcome: String,
    pub reason: String,
    pub operator: String,
}

impl ActionRow {
    fn into_action(self) -> Result<(TxnId, OperatorAction), StoreError> {
        let outcome = Resolution::parse(&self.outcome).ok_or_else(|| {
            StoreError::Corrupt(format!("operator action outcome {:?}", self.outcome))
        })?;
        Ok((
            parse_id(&self.txn_id)?,
            OperatorAction {
                branch: self.branch,
                outcome,
                reason: self.reason,
                operator: self.operator,
                at_ms: to_u64(self.at_ms),
            },
        ))
    }
}

/// The actions of one transaction, in the order given.
pub(crate) fn actions(rows: Vec<ActionRow>) -> Result<Vec<OperatorAction>, StoreError> {
    rows.into_iter()
        .map(|row| row.into_action().map(|(_, action)| action))
        .collect()
}

/// Hands each action row (any order) to its unfinished transaction.
pub(crate) fn attach_actions(
    unfinished: &mut [super::Unfinished],
    rows: Vec<ActionRow>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let at: std::collections::HashMap<TxnId, usize> = unfinished
        .iter()
        .enumerate()
        .map(|(idx, u)| (u.view.id, idx))
        .collect();
    for row in rows {
        let (id, action) = row.into_action()?;
        if let Some(&idx) = at.get(&id) {
            unfinished[idx].view.operator_actions.push(action);
        }
    }
    Ok(())
}

/// One row of `txn_changes`; `epoch` is the writing transaction's id on
/// PostgreSQL and 0 on SQLite.
#[derive(FromRow)]
pub(crate) struct ChangeRow {
    pub epoch: i64,
    pub seq: i64,
    pub txn_id: String,
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub subject: String,
    pub detail: String,
    pub needs_attention: bool,
    pub at_ms: i64,
}

impl ChangeRow {
    pub(crate) fn into_change(self) -> Result<Change, StoreError> {
        let state = |name: &str| {
            TxnState::parse(name)
                .ok_or_else(|| StoreError::Corrupt(format!("change to state {name:?}")))
        };
        Ok(Change {
            cursor: Cursor {
                epoch: to_u64(self.epoch),
                seq: to_u64(self.seq),
            },
            id: parse_id(&self.txn_id)?,
            kind: TxnKind::parse(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("change of kind {:?}", self.kind)))?,
            from: self.from_state.as_deref().map(state).transpose()?,
            to: state(&self.to_state)?,
            subject: self.subject,
            detail: self.detail,
            needs_attention: self.needs_attention,
            at_ms: to_u64(self.at_ms),
        })
    }
}

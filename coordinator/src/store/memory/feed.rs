//! The memory store's change feed, kept as the SQL stores' triggers keep
//! theirs (migrations/sqlite/0006_changes.sql): each record's changes found
//! by comparing its transaction before and after it.

use super::State;
use crate::model::{Change, Cursor, StepStatus, TxnId, TxnState};
use crate::store::Record;

/// What the change feed follows of one transaction.
pub(super) struct Observed {
    pub(super) state: TxnState,
    needs_attention: bool,
    steps: Vec<StepStatus>,
    actions: usize,
}

impl State {
    /// What the change feed follows of one transaction, if it exists.
    pub(super) fn observed(&self, id: &TxnId) -> Option<Observed> {
        self.transactions.get(id).map(|row| Observed {
            state: row.view.state,
            needs_attention: row.view.needs_attention,
            steps: row.view.steps.iter().map(|step| step.status).collect(),
            actions: row.view.operator_actions.len(),
        })
    }

    /// Adds the changes `record` made to the feed, as the SQL stores'
    /// triggers do (migrations/sqlite/0006_changes.sql): a new
    /// transaction, a new state, a step's new status, the flag raised, an
    /// operator action.
    pub(super) fn note_changes(&mut self, record: &Record, before: Option<Observed>) {
        let id = record.txn_id();
        let Some(row) = self.transactions.get(&id) else {
            return;
        };
        let view = &row.view;
        // The records' own times: deterministic under simulation.
        let at_ms = view
            .ended_at_ms
            .or(view.decided_at_ms)
            .unwrap_or(view.created_at_ms);
        let change = |from, subject: &str, detail: &str, at_ms| Change {
            cursor: Cursor::default(),
            id,
            kind: view.kind,
            from,
            to: view.state,
            subject: subject.to_owned(),
            detail: detail.to_owned(),
            needs_attention: view.needs_attention,
            at_ms,
        };
        let mut noted = Vec::new();
        match &before {
            None => noted.push(change(None, "", "", view.created_at_ms)),
            Some(before) => {
                // In the order the SQL stores write them: the transaction's
                // row first, then its steps' (sqlite_writer, concord_append),
                // so a step's change finds the transaction in its new state.
                if view.state != before.state {
                    let reason = view.reason.as_deref().unwrap_or_default();
                    noted.push(change(Some(before.state), "", reason, at_ms));
                }
                for (step, old) in view.steps.iter().zip(&before.steps) {
                    if step.status != *old {
                        let status = crate::model::step_status_str(step.status);
                        noted.push(change(Some(view.state), &step.name, status, at_ms));
                    }
                }
                // A flag raised with a new state rides on that state's
                // change (its `needs_attention`), as in the SQL stores.
                if view.needs_attention && !before.needs_attention && view.state == before.state {
                    noted.push(change(Some(view.state), "", "needs attention", at_ms));
                }
                for action in view.operator_actions.iter().skip(before.actions) {
                    let detail = format!(
                        "resolved {} by {}: {}",
                        action.outcome.as_str(),
                        action.operator,
                        action.reason
                    );
                    noted.push(change(
                        Some(view.state),
                        &action.branch,
                        &detail,
                        action.at_ms,
                    ));
                }
            }
        }
        for mut change in noted {
            self.last_seq += 1;
            change.cursor = Cursor {
                epoch: 0,
                seq: self.last_seq,
            };
            self.changes.push_back(change);
        }
    }
}

//! The Coordinator service's answers as the console page reads them:
//! plain JSON with enum values by their short lowercase names
//! (`committing`, not `TRANSACTION_STATE_COMMITTING`).

use concord_proto::v1 as pb;
use serde_json::{Value, json};

/// `TRANSACTION_STATE_COMMITTING` -> `committing`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

pub fn state_name(value: i32) -> String {
    pb::TransactionState::try_from(value).map_or_else(
        |_| value.to_string(),
        |state| short(state.as_str_name(), "TRANSACTION_STATE_"),
    )
}

/// The wire state a page names (`committing`).
pub fn state_from_name(name: &str) -> Option<pb::TransactionState> {
    pb::TransactionState::from_str_name(&format!("TRANSACTION_STATE_{}", name.to_ascii_uppercase()))
        .filter(|state| *state != pb::TransactionState::Unspecified)
}

fn kind_name(value: i32) -> &'static str {
    match pb::TransactionKind::try_from(value) {
        Ok(pb::TransactionKind::Saga) => "saga",
        Ok(pb::TransactionKind::TwoPhase) => "2pc",
        Ok(pb::TransactionKind::Message) => "message",
        _ => "",
    }
}

fn enum_name<E>(value: i32, name: impl Fn(&E) -> &'static str, prefix: &str) -> String
where
    E: TryFrom<i32>,
{
    E::try_from(value).map_or_else(|_| value.to_string(), |e| short(name(&e), prefix))
}

pub fn transaction(txn: &pb::Transaction) -> Value {
    json!({
        "id": txn.id,
        "kind": kind_name(txn.kind),
        "state": state_name(txn.state),
        "group": txn.group,
        "shard": txn.shard,
        "created_at_ms": txn.created_at_ms,
        "decided_at_ms": txn.decided_at_ms,
        "ended_at_ms": txn.ended_at_ms,
        "deadline_ms": txn.deadline_ms,
        "reason": txn.reason,
        "idempotency_key": txn.idempotency_key,
        "description": txn.description,
        "read_only": txn.read_only,
        "needs_attention": txn.needs_attention,
        "branch_count": txn.branch_count,
        "producer": txn.producer,
        "ordering_key": txn.ordering_key,
        "branches": txn.branches.iter().map(|b| json!({
            "name": b.name,
            "participant": b.participant,
            "state": enum_name(b.state, pb::BranchState::as_str_name, "BRANCH_STATE_"),
            "vote": enum_name(b.vote, pb::Vote::as_str_name, "VOTE_"),
            "attempts": b.attempts,
            "last_error": b.last_error,
            "payload": payload(&b.payload, b.payload_bytes),
        })).collect::<Vec<_>>(),
        "steps": txn.steps.iter().map(|s| json!({
            "name": s.name,
            "participant": s.participant,
            "kind": enum_name(s.kind, pb::StepKind::as_str_name, "STEP_KIND_"),
            "state": enum_name(s.state, pb::StepState::as_str_name, "STEP_STATE_"),
            "depends_on": s.depends_on,
            "attempts": s.attempts,
            "compensation_attempts": s.compensation_attempts,
            "last_error": s.last_error,
            "action": payload(&s.action, s.action_bytes),
            "compensation": payload(&s.compensation, s.compensation_bytes),
        })).collect::<Vec<_>>(),
        "operator_actions": txn.operator_actions.iter().map(|a| json!({
            "branch": a.branch,
            "outcome": enum_name(a.outcome, pb::Resolution::as_str_name, "RESOLUTION_"),
            "reason": a.reason,
            "operator": a.operator,
            "at_ms": a.at_ms,
        })).collect::<Vec<_>>(),
    })
}

/// A payload as the page shows it: its size, and when its head was asked
/// for (GetTransaction's include_payloads), that head as `text` (UTF-8) or
/// `hex`; `shown` says how many bytes of it that is.
fn payload(head: &[u8], bytes: u64) -> Value {
    if head.is_empty() {
        return json!({ "bytes": bytes });
    }
    let (form, value) = match crate::model::Readable::of(head, bytes) {
        crate::model::Readable::Text(text) => ("text", text),
        crate::model::Readable::Hex(hex) => ("hex", hex),
    };
    json!({ "bytes": bytes, "shown": head.len(), form: value })
}

pub fn page(page: pb::ListTransactionsResponse) -> Value {
    json!({
        "transactions": page.transactions.iter().map(transaction).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
        "skipped_groups": page.skipped_groups.iter().map(|g| json!({
            "group": g.group,
            "reason": g.reason,
        })).collect::<Vec<_>>(),
    })
}

pub fn change(change: &pb::TransactionChange) -> Value {
    json!({
        "id": change.transaction_id,
        "kind": kind_name(change.kind),
        "old_state": if change.old_state == 0 { String::new() } else { state_name(change.old_state) },
        "new_state": state_name(change.new_state),
        "subject": change.subject,
        "detail": change.detail,
        "needs_attention": change.needs_attention,
        "at_ms": change.at_ms,
        "cursor": change.cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_go_by_their_short_names_both_ways() {
        assert_eq!(
            state_name(pb::TransactionState::Compensating as i32),
            "compensating"
        );
        assert_eq!(
            state_from_name("committing"),
            Some(pb::TransactionState::Committing)
        );
        assert_eq!(state_from_name("unspecified"), None);
        assert_eq!(state_from_name("nope"), None);
        assert_eq!(state_name(99), "99");
    }
}

//! How `concord txn` prints for people: a listing's table, one
//! transaction's fields, branches, steps and payloads, times in UTC and
//! relative, and any text from the wire with its control characters
//! escaped (a terminal must not take a participant's error for commands).

use concord_proto::v1 as pb;

pub(super) fn resolution_name(outcome: i32) -> String {
    pb::Resolution::try_from(outcome)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("RESOLUTION_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("outcome {outcome}"))
}

pub(super) fn state_name(state: i32) -> String {
    pb::TransactionState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TRANSACTION_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("state {state}"))
}

pub(super) fn kind_name(kind: i32) -> &'static str {
    match pb::TransactionKind::try_from(kind) {
        Ok(pb::TransactionKind::Saga) => "saga",
        Ok(pb::TransactionKind::TwoPhase) => "2pc",
        Ok(pb::TransactionKind::Message) => "message",
        _ => "?",
    }
}

/// "3m12s" for a span of milliseconds.
pub(super) fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// An instant (ms since the Unix epoch) in UTC, RFC 3339, and how long ago.
pub(in crate::cli) fn moment(ms: u64, now: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let days = i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX);
    let rest = ms % 86_400_000;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let when = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        (rest / 60_000) % 60,
        (rest / 1000) % 60,
        rest % 1000
    );
    if now >= ms {
        format!("{when} ({} ago)", span(now - ms))
    } else {
        format!("{when} (in {})", span(ms - now))
    }
}

/// Text a client or participant supplied, as a terminal may show it: a
/// control character (a newline that forges a line, an escape sequence
/// that rewrites the screen) or a bidirectional override is printed as
/// its escape (`\n`, `\u{1b}`), never acted on (DESIGN §12).
/// A payload's line under its branch or step, when its head was asked for
/// (`--payloads`): its text (control characters escaped, as [`shown`]
/// does) or hex, and how much of it that is.
pub(super) fn payload_lines(what: &str, head: &[u8], bytes: u64) -> String {
    if head.is_empty() {
        return String::new();
    }
    let cut = if (head.len() as u64) < bytes {
        format!(" (first {} of {bytes} bytes)", head.len())
    } else {
        String::new()
    };
    match crate::model::Readable::of(head, bytes) {
        crate::model::Readable::Text(text) => {
            format!("  {:<16}{what}{cut}: {}\n", "", shown(&text))
        }
        crate::model::Readable::Hex(hex) => format!("  {:<16}{what} (hex){cut}: {hex}\n", ""),
    }
}

pub(super) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if hidden(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

pub(super) fn list_text(page: &pb::ListTransactionsResponse, now: u64) -> String {
    // The GROUP column only in a deployment of several groups (DESIGN §11).
    let grouped = page.transactions.iter().any(|txn| !txn.group.is_empty());
    let group = |name: &str| {
        if grouped {
            format!("{name:<10}  ")
        } else {
            String::new()
        }
    };
    let mut out = format!(
        "{:<36}  {}{:<7}  {:<12}  {:>7}  {:>5}  {:<4}  {}\n",
        "ID",
        group("GROUP"),
        "KIND",
        "STATE",
        "AGE",
        "PARTS",
        "ATTN",
        "REASON"
    );
    for txn in &page.transactions {
        let parts = txn.branch_count as usize;
        out.push_str(&format!(
            "{:<36}  {}{:<7}  {:<12}  {:>7}  {:>5}  {:<4}  {}\n",
            txn.id,
            group(&txn.group),
            kind_name(txn.kind),
            state_name(txn.state),
            span(now.saturating_sub(txn.created_at_ms)),
            parts,
            if txn.needs_attention { "yes" } else { "-" },
            shown(&txn.reason)
        ));
    }
    if page.transactions.is_empty() {
        out.push_str("(none)\n");
    }
    for skipped in &page.skipped_groups {
        out.push_str(&format!(
            "missing: group {} did not answer ({}); its transactions are not listed\n",
            shown(&skipped.group),
            shown(&skipped.reason)
        ));
    }
    if !page.next_page_token.is_empty() {
        out.push_str(&format!("more: --page-token {}\n", page.next_page_token));
    }
    out
}

pub(super) fn show_text(txn: &pb::Transaction, now: u64) -> String {
    let mut out = format!("transaction {}\n", txn.id);
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("  {name:<16}{value}\n"));
        }
    };
    field("kind", kind_name(txn.kind).into());
    field("state", state_name(txn.state));
    field(
        "needs attention",
        if txn.needs_attention {
            "YES".into()
        } else {
            String::new()
        },
    );
    field("begun", moment(txn.created_at_ms, now));
    let message = txn.kind == pb::TransactionKind::Message as i32;
    // Past its end a deadline says nothing: shown only while it can still
    // pass.
    if txn.deadline_ms > 0 && txn.ended_at_ms == 0 {
        // A message's deadline is when its check-back is due (M6).
        let label = if message {
            "check-back due"
        } else {
            "deadline"
        };
        field(label, moment(txn.deadline_ms, now));
    }
    if !txn.group.is_empty() {
        field("group", format!("{} (shard {})", txn.group, txn.shard));
    }
    field("producer", shown(&txn.producer).into_owned());
    field("ordering key", shown(&txn.ordering_key).into_owned());
    field("decided", moment(txn.decided_at_ms, now));
    field("ended", moment(txn.ended_at_ms, now));
    field("reason", shown(&txn.reason).into_owned());
    field("description", shown(&txn.description).into_owned());
    field("idempotency key", shown(&txn.idempotency_key).into_owned());
    if txn.read_only {
        field("read only", "yes".into());
    }
    if !txn.branches.is_empty() {
        out.push_str(if message {
            "destinations:\n"
        } else {
            "branches:\n"
        });
        for branch in &txn.branches {
            let state = pb::BranchState::try_from(branch.state)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("BRANCH_STATE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            let vote = pb::Vote::try_from(branch.vote)
                .ok()
                .filter(|v| *v != pb::Vote::Unspecified)
                .map(|v| {
                    v.as_str_name()
                        .trim_start_matches("VOTE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|| "-".into());
            if message {
                out.push_str(&format!(
                    "  {:<16}{:<12} attempts {:<4} {}\n",
                    shown(&branch.name),
                    state,
                    branch.attempts,
                    shown(&branch.participant)
                ));
            } else {
                out.push_str(&format!(
                    "  {:<16}{:<12} vote {:<9} attempts {:<4} {}\n",
                    shown(&branch.name),
                    state,
                    vote,
                    branch.attempts,
                    shown(&branch.participant)
                ));
            }
            if !branch.last_error.is_empty() {
                out.push_str(&format!(
                    "  {:<16}last error: {}\n",
                    "",
                    shown(&branch.last_error)
                ));
            }
            out.push_str(&payload_lines(
                "payload",
                &branch.payload,
                branch.payload_bytes,
            ));
        }
    }
    if !txn.operator_actions.is_empty() {
        out.push_str("operator decisions:\n");
        for action in &txn.operator_actions {
            out.push_str(&format!(
                "  {:<16}{} by {} at {}\n  {:<16}reason: {}\n",
                shown(&action.branch),
                resolution_name(action.outcome),
                shown(&action.operator),
                moment(action.at_ms, now),
                "",
                shown(&action.reason)
            ));
        }
    }
    if !txn.steps.is_empty() {
        out.push_str("steps:\n");
        for step in &txn.steps {
            let state = pb::StepState::try_from(step.state)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("STEP_STATE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            let kind = pb::StepKind::try_from(step.kind)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("STEP_KIND_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<16}{:<14} {:<13} attempts {:<4} compensations {:<4} {}\n",
                shown(&step.name),
                state,
                kind,
                step.attempts,
                step.compensation_attempts,
                shown(&step.participant)
            ));
            if !step.last_error.is_empty() {
                out.push_str(&format!(
                    "  {:<16}last error: {}\n",
                    "",
                    shown(&step.last_error)
                ));
            }
            out.push_str(&payload_lines("action", &step.action, step.action_bytes));
            out.push_str(&payload_lines(
                "compensation",
                &step.compensation,
                step.compensation_bytes,
            ));
        }
    }
    out
}

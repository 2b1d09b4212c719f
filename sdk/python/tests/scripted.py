"""The scripted participant the ledger cases run against (the payload says
what each handler does; sdk/ledger-cases.json), as the Rust tests' own
(tests/tests/support: `Scripted`, `StepParticipant`)."""

from __future__ import annotations

import sqlite3

from concord_participant import BranchContext, StepResult, Vote


def effect(tx: sqlite3.Connection, branch: BranchContext, op: str) -> None:
    tx.execute(
        "INSERT INTO effects (txn_id, branch, op) VALUES (?, ?, ?)",
        (branch.transaction_id, branch.branch, op),
    )


def install(path: str) -> None:
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS effects "
        "(seq INTEGER PRIMARY KEY, txn_id TEXT NOT NULL, branch TEXT NOT NULL, op TEXT NOT NULL)"
    )
    db.commit()
    db.close()


class Scripted:
    """2PC: 'commit' votes COMMIT, 'abort' votes ABORT, 'readonly' READ_ONLY."""

    def prepare(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> Vote:
        effect(tx, branch, "prepare")
        script = payload.decode()
        if script == "abort":
            return Vote.abort("scripted refusal")
        if script == "readonly":
            return Vote.read_only()
        return Vote.commit()

    def commit(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> None:
        effect(tx, branch, "commit")

    def abort(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> None:
        effect(tx, branch, "abort")


class Steps:
    """Saga steps: 'ok' succeeds, 'refuse' is refused."""

    def action(self, tx: sqlite3.Connection, step: BranchContext, payload: bytes) -> StepResult:
        effect(tx, step, "action")
        if payload == b"refuse":
            return StepResult.refused("scripted refusal")
        return StepResult.succeeded()

    def compensate(self, tx: sqlite3.Connection, step: BranchContext, payload: bytes) -> None:
        effect(tx, step, "compensate")

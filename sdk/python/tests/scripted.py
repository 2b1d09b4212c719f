"""The scripted participant the ledger cases run against (the payload says
what each handler does; sdk/ledger-cases.json), as the Rust tests' own
(tests/tests/support: `Scripted`, `StepParticipant`)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from concord_participant import BranchContext, StepResult, Unavailable, Vote

#: A PostgreSQL database for the PostgreSQL ledger's runs: the Rust test
#: that runs this suite (tests/tests/python) starts a server and sets it.
POSTGRES = os.environ.get("CONCORD_TEST_POSTGRES_URL", "")

EFFECTS = (
    "CREATE TABLE IF NOT EXISTS effects "
    "(seq {key}, txn_id TEXT NOT NULL, branch TEXT NOT NULL, op TEXT NOT NULL)"
)


def effect(tx: Any, branch: BranchContext, op: str) -> None:
    """One handler run, in the call's local transaction (either database)."""
    sql = "INSERT INTO effects (txn_id, branch, op) VALUES (?, ?, ?)"
    if not isinstance(tx, sqlite3.Connection):
        sql = sql.replace("?", "%s")
    tx.execute(sql, (branch.transaction_id, branch.branch, op))


def read(ledger: Any, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
    """Rows of `sql` (written with `?`) from the ledger's database, read
    apart from the service."""
    from concord_participant import SqliteLedger

    if isinstance(ledger, SqliteLedger):
        with sqlite3.connect(ledger.path) as db:
            return db.execute(sql, args).fetchall()
    import psycopg

    with psycopg.connect(POSTGRES) as db:
        return db.execute(sql.replace("?", "%s"), args).fetchall()


def install_sqlite(path: str) -> None:
    db = sqlite3.connect(path)
    db.execute(EFFECTS.format(key="INTEGER PRIMARY KEY"))
    db.commit()
    db.close()


def install_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(EFFECTS.format(key="BIGSERIAL PRIMARY KEY"))


class Scripted:
    """2PC: 'commit' votes COMMIT, 'abort' votes ABORT, 'readonly' READ_ONLY."""

    def prepare(self, tx: Any, branch: BranchContext, payload: bytes) -> Vote:
        effect(tx, branch, "prepare")
        script = payload.decode()
        if script == "abort":
            return Vote.abort("scripted refusal")
        if script == "readonly":
            return Vote.read_only()
        return Vote.commit()

    def commit(self, tx: Any, branch: BranchContext, payload: bytes) -> None:
        effect(tx, branch, "commit")

    def abort(self, tx: Any, branch: BranchContext, payload: bytes) -> None:
        effect(tx, branch, "abort")


class Steps:
    """Saga steps: 'ok' succeeds, 'refuse' is refused."""

    def action(self, tx: Any, step: BranchContext, payload: bytes) -> StepResult:
        effect(tx, step, "action")
        if payload == b"refuse":
            return StepResult.refused("scripted refusal")
        return StepResult.succeeded()

    def compensate(self, tx: Any, step: BranchContext, payload: bytes) -> None:
        effect(tx, step, "compensate")


class Inbox:
    """A message destination: each delivery is one 'deliver' effect; a
    payload 'down' fails it (UNAVAILABLE, the coordinator delivers again)."""

    def deliver(self, tx: Any, message: BranchContext, payload: bytes) -> None:
        if payload == b"down":
            raise Unavailable("scripted: the destination is down")
        effect(tx, message, "deliver")

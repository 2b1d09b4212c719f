"""The exactly-once ledger (docs/design.md §4) in the participant's own
SQLite database: one row per (transaction, branch, operation), written in
the same local transaction as the business change it guards.

It gives the service (`concord_participant.server`) what the Rust SDK's
ledger gives its own (participant/src/ledger, participant/src/server/guarded.rs),
case for case (the shared list: sdk/ledger-cases.json):

- a duplicate call finds its row and gets the first answer, and the handler
  does not run again (I5);
- an Abort that arrives before its Prepare leaves a tombstone, and the late
  Prepare is refused (it votes ABORT);
- a COMMIT vote is durable: its row commits with what the handler reserved;
- the same for saga steps: an action runs once, a compensation that arrives
  first leaves a tombstone and the late action is refused.

The table is the Rust SDK's (`concord_ledger`), so either SDK can read a
ledger the other wrote. Calls about one branch are serialised by the local
transaction itself: `BEGIN IMMEDIATE` takes SQLite's write lock at once.
Everything here is synchronous: the service runs it on worker threads, one
connection per call.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterator, Protocol, TypeVar
from contextlib import contextmanager

T = TypeVar("T")


class Op(str, Enum):
    """The operations the ledger records."""

    PREPARE = "prepare"
    COMMIT = "commit"
    ABORT = "abort"
    ACTION = "action"
    COMPENSATE = "compensate"
    DELIVER = "deliver"


@dataclass(frozen=True)
class BranchContext:
    """Which branch a call is about."""

    transaction_id: str
    branch: str
    #: Where to ask about the transaction's outcome; may be empty.
    coordinator: str = ""
    #: True inside a one-phase commit (R6): prepare and commit run in the
    #: same local transaction and the participant's commit is the decision.
    one_phase: bool = False
    #: The W3C trace context of the coordinator's call, when it has one.
    traceparent: str | None = None


@dataclass(frozen=True)
class Vote:
    """A participant's answer to Prepare."""

    kind: str  # "commit", "read_only" or "abort"
    reason: str = ""

    @staticmethod
    def commit() -> Vote:
        return Vote("commit")

    @staticmethod
    def read_only() -> Vote:
        return Vote("read_only")

    @staticmethod
    def abort(reason: str) -> Vote:
        return Vote("abort", reason)


@dataclass(frozen=True)
class StepResult:
    """A saga step's answer to Execute."""

    done: bool
    reason: str = ""

    @staticmethod
    def succeeded() -> StepResult:
        return StepResult(True)

    @staticmethod
    def refused(reason: str) -> StepResult:
        return StepResult(False, reason)


class ParticipantError(Exception):
    """A handler's failure, with the gRPC status it is answered with."""

    code = "UNAVAILABLE"


class Unavailable(ParticipantError):
    """A passing failure: the coordinator retries (phase 2 until it
    succeeds, R3)."""

    code = "UNAVAILABLE"


class InvalidPayload(ParticipantError):
    """The payload cannot be understood; retrying will not help."""

    code = "INVALID_ARGUMENT"


class FailedPrecondition(ParticipantError):
    """The call does not fit what the ledger holds (a Commit for a branch
    that voted ABORT, say)."""

    code = "FAILED_PRECONDITION"


class TwoPhaseParticipant(Protocol):
    """What a service implements to take part in two-phase commit. Each
    method runs inside the local transaction `tx` its ledger row is written
    in: write the business change with `tx` and do not commit it."""

    def prepare(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> Vote: ...

    def commit(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> None: ...

    def abort(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> None: ...


class SagaStep(Protocol):
    """What a service implements to be a step of sagas."""

    def action(self, tx: sqlite3.Connection, step: BranchContext, payload: bytes) -> StepResult: ...

    def compensate(self, tx: sqlite3.Connection, step: BranchContext, payload: bytes) -> None: ...


@dataclass(frozen=True)
class Entry:
    """What a ledger row says happened. For prepare: `commit`, `abort` or
    `read_only` (the vote); for commit: `done` or `one_phase`; for abort and
    compensate: `done` or `tombstone`; for action: `done` or `refused`."""

    result: str
    reason: str | None


@dataclass(frozen=True)
class InDoubt:
    """A branch that voted COMMIT and has heard neither Commit nor Abort."""

    transaction_id: str
    branch: str
    coordinator: str | None
    payload: bytes | None
    created_at_ms: int


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SqliteLedger:
    """The ledger in the SQLite database at `path` (the service's own)."""

    def __init__(self, path: str, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s

    def connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode: each call begins its own local
        transaction."""
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def install(self) -> None:
        """Creates the ledger table if it is missing (the Rust SDK's schema)."""
        with self._connection() as db:
            db.execute(
                """CREATE TABLE IF NOT EXISTS concord_ledger (
                    txn_id        TEXT NOT NULL,
                    branch        TEXT NOT NULL,
                    op            TEXT NOT NULL,
                    result        TEXT NOT NULL,
                    reason        TEXT,
                    coordinator   TEXT,
                    payload       BLOB,
                    created_at_ms INTEGER NOT NULL,
                    PRIMARY KEY (txn_id, branch, op)
                )"""
            )

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = self.connect()
        try:
            yield db
        finally:
            db.close()

    def local(self, branch: BranchContext, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `work` in a local transaction about `branch`, serialised
        with every other: committed if it returns, rolled back if it
        raises. `work` may end the transaction early itself (`ROLLBACK`
        then `BEGIN IMMEDIATE`, as a refused vote does)."""
        del branch  # SQLite has one writer: BEGIN IMMEDIATE serialises all.
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if db.in_transaction:
                db.execute("COMMIT")
            return result

    @staticmethod
    def rows(tx: sqlite3.Connection, branch: BranchContext) -> dict[Op, Entry]:
        """Every row written for `branch`, by operation."""
        found = tx.execute(
            "SELECT op, result, reason FROM concord_ledger WHERE txn_id = ? AND branch = ?",
            (branch.transaction_id, branch.branch),
        ).fetchall()
        return {Op(op): Entry(result, reason) for op, result, reason in found if op in _OPS}

    @staticmethod
    def record(
        tx: sqlite3.Connection,
        branch: BranchContext,
        op: Op,
        result: str,
        reason: str | None = None,
        payload: bytes | None = None,
    ) -> None:
        """Writes the row for `op` on `branch`. Prepare rows keep the
        payload and the coordinator's address, so an in-doubt branch can be
        resolved after a restart."""
        tx.execute(
            """INSERT INTO concord_ledger
                 (txn_id, branch, op, result, reason, coordinator, payload, created_at_ms)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                branch.transaction_id,
                branch.branch,
                op.value,
                result,
                reason,
                branch.coordinator,
                payload,
                now_ms(),
            ),
        )

    def in_doubt(self, prepared_before_ms: int) -> list[InDoubt]:
        """Branches that voted COMMIT at or before `prepared_before_ms` and
        heard neither Commit nor Abort, oldest first."""
        with self._connection() as db:
            found = db.execute(
                """SELECT p.txn_id, p.branch, p.coordinator, p.payload, p.created_at_ms
                   FROM concord_ledger p
                   WHERE p.op = 'prepare' AND p.result = 'commit' AND p.created_at_ms <= ?
                     AND NOT EXISTS (
                       SELECT 1 FROM concord_ledger d
                       WHERE d.txn_id = p.txn_id AND d.branch = p.branch
                         AND d.op IN ('commit', 'abort'))
                   ORDER BY p.created_at_ms""",
                (prepared_before_ms,),
            ).fetchall()
        return [InDoubt(*row) for row in found]

    def prune(self, older_than_ms: int) -> int:
        """Deletes every row of a (transaction, branch) whose newest row is
        at or before `older_than_ms`, except branches still in doubt."""
        with self._connection() as db:
            done = db.execute(
                """DELETE FROM concord_ledger
                   WHERE (txn_id, branch) IN (
                       SELECT txn_id, branch FROM concord_ledger
                       GROUP BY txn_id, branch
                       HAVING MAX(created_at_ms) <= ?
                          AND NOT (SUM(op = 'prepare' AND result = 'commit') > 0
                                   AND SUM(op IN ('commit', 'abort')) = 0))""",
                (older_than_ms,),
            )
            return done.rowcount


_OPS = {op.value for op in Op}

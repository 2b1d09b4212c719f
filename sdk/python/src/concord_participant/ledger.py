"""The exactly-once ledger (docs/design.md §4) in the participant's own
database (SQLite through the standard library, or PostgreSQL through
psycopg 3): one row per (transaction, branch, operation), written in the
same local transaction as the business change it guards.

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
transaction itself: `BEGIN IMMEDIATE` takes SQLite's write lock at once;
on PostgreSQL a transaction-scoped advisory lock on the branch (the Rust
SDK's own), so calls about other branches run in parallel. Everything here
is synchronous: the service runs it on worker threads.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Protocol, TypeVar

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")
#: The local transaction handlers are given: the connection it runs on
#: (`sqlite3.Connection`, or `psycopg.Connection` on PostgreSQL).
Tx = TypeVar("Tx")
Tx_contra = TypeVar("Tx_contra", contravariant=True)


class Op(str, Enum):
    """The operations the ledger records."""

    PREPARE = "prepare"
    COMMIT = "commit"
    ABORT = "abort"
    ACTION = "action"
    COMPENSATE = "compensate"
    #: A transactional message's outbox row (branch "message"), or the
    #: tombstone a check-back left in its place.
    PUBLISH = "publish"
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


class Unsupported(ParticipantError):
    """The call asks for something this participant does not take part in
    (a Deliver to a service without a message destination)."""

    code = "UNIMPLEMENTED"


class FailedPrecondition(ParticipantError):
    """The call does not fit what the ledger holds (a Commit for a branch
    that voted ABORT, say)."""

    code = "FAILED_PRECONDITION"


class TwoPhaseParticipant(Protocol[Tx_contra]):
    """What a service implements to take part in two-phase commit. Each
    method runs inside the local transaction `tx` its ledger row is written
    in: write the business change with `tx` and do not commit it."""

    def prepare(self, tx: Tx_contra, branch: BranchContext, payload: bytes) -> Vote: ...

    def commit(self, tx: Tx_contra, branch: BranchContext, payload: bytes) -> None: ...

    def abort(self, tx: Tx_contra, branch: BranchContext, payload: bytes) -> None: ...


class SagaStep(Protocol[Tx_contra]):
    """What a service implements to be a step of sagas."""

    def action(self, tx: Tx_contra, step: BranchContext, payload: bytes) -> StepResult: ...

    def compensate(self, tx: Tx_contra, step: BranchContext, payload: bytes) -> None: ...


class MessageDestination(Protocol[Tx_contra]):
    """What a service implements to receive transactional messages
    (docs/design.md §10): apply one message's payload with `tx`, the local
    transaction its ledger row is written in, so that a redelivery finds
    the row and runs nothing (M4). Raise `Unavailable` for passing trouble:
    the coordinator delivers again until it succeeds."""

    def deliver(self, tx: Tx_contra, message: BranchContext, payload: bytes) -> None: ...


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


#: The ledger's table, the Rust SDK's (participant/src/ledger), with each
#: database's names for bytes and 64-bit integers.
TABLE = """CREATE TABLE IF NOT EXISTS concord_ledger (
    txn_id        TEXT NOT NULL,
    branch        TEXT NOT NULL,
    op            TEXT NOT NULL,
    result        TEXT NOT NULL,
    reason        TEXT,
    coordinator   TEXT,
    payload       {blob},
    created_at_ms {integer} NOT NULL,
    PRIMARY KEY (txn_id, branch, op)
)"""


class Ledger(abc.ABC, Generic[Tx]):
    """A ledger in one database: the statements are the same on every
    database but for their placeholders and the few that differ."""

    #: How a statement names its parameters (`?` or `%s`).
    placeholder = "?"

    @abc.abstractmethod
    def install(self) -> None:
        """Creates the ledger table if it is missing (the Rust SDK's schema)."""

    @abc.abstractmethod
    def local(self, branch: BranchContext, work: Callable[[Tx], T]) -> T:
        """Runs `work` in a local transaction about `branch`, serialised
        with every other call about it: committed if `work` returns, rolled
        back if it raises."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]:
        """A local transaction of your own, for a business change that
        publishes a message (`PreparedMessage.publish_with`): committed when
        the `with` block ends, rolled back if it raises. On SQLite it begins
        IMMEDIATE (holding the write lock from its first statement)."""

    @abc.abstractmethod
    def lock(self, tx: Tx, branch: BranchContext) -> None:
        """Serialises `tx` with every call about `branch` until it ends."""

    @abc.abstractmethod
    def unique_violation(self, error: BaseException) -> bool:
        """Whether `error` is this database refusing a second row with the
        same key."""

    @abc.abstractmethod
    def restart(self, tx: Tx, branch: BranchContext) -> None:
        """Rolls back what `tx` did and begins again, still serialised: a
        refused vote or step keeps only its ledger row."""

    @abc.abstractmethod
    def _query(self, tx: Tx, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """Runs `sql` (written with `?`) in `tx`; its rows."""

    @abc.abstractmethod
    def _pooled(self, sql: str, args: tuple[object, ...]) -> tuple[list[tuple[Any, ...]], int]:
        """Runs `sql` alone, in a transaction of its own; its rows and how
        many rows it changed."""

    def rows(self, tx: Tx, branch: BranchContext) -> dict[Op, Entry]:
        """Every row written for `branch`, by operation."""
        found = self._query(
            tx,
            "SELECT op, result, reason FROM concord_ledger WHERE txn_id = ? AND branch = ?",
            (branch.transaction_id, branch.branch),
        )
        return {Op(op): Entry(result, reason) for op, result, reason in found if op in _OPS}

    def record(
        self,
        tx: Tx,
        branch: BranchContext,
        op: Op,
        result: str,
        reason: str | None = None,
        payload: bytes | None = None,
    ) -> None:
        """Writes the row for `op` on `branch`. Prepare rows keep the
        payload and the coordinator's address, so an in-doubt branch can be
        resolved after a restart."""
        self._query(
            tx,
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
        found, _ = self._pooled(
            """SELECT p.txn_id, p.branch, p.coordinator, p.payload, p.created_at_ms
               FROM concord_ledger p
               WHERE p.op = 'prepare' AND p.result = 'commit' AND p.created_at_ms <= ?
                 AND NOT EXISTS (
                   SELECT 1 FROM concord_ledger d
                   WHERE d.txn_id = p.txn_id AND d.branch = p.branch
                     AND d.op IN ('commit', 'abort'))
               ORDER BY p.created_at_ms""",
            (prepared_before_ms,),
        )
        return [
            InDoubt(txn, branch, coordinator, None if payload is None else bytes(payload), at)
            for txn, branch, coordinator, payload, at in found
        ]

    #: Deletes every row of a (transaction, branch) whose newest row is at
    #: or before `?`, except branches still in doubt.
    PRUNE = ""

    def prune(self, older_than_ms: int) -> int:
        """Deletes the rows of branches finished at or before
        `older_than_ms`, except those still in doubt; how many went."""
        _, changed = self._pooled(self.PRUNE, (older_than_ms,))
        return changed

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)


class SqliteLedger(Ledger[sqlite3.Connection]):
    """The ledger in the SQLite database at `path` (the service's own); one
    connection per call."""

    PRUNE = """DELETE FROM concord_ledger
       WHERE (txn_id, branch) IN (
           SELECT txn_id, branch FROM concord_ledger
           GROUP BY txn_id, branch
           HAVING MAX(created_at_ms) <= ?
              AND NOT (SUM(op = 'prepare' AND result = 'commit') > 0
                       AND SUM(op IN ('commit', 'abort')) = 0))"""

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

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = self.connect()
        try:
            yield db
        finally:
            db.close()

    def install(self) -> None:
        with self._connection() as db:
            db.execute(TABLE.format(blob="BLOB", integer="INTEGER"))

    def local(self, branch: BranchContext, work: Callable[[sqlite3.Connection], T]) -> T:
        del branch  # SQLite has one writer: BEGIN IMMEDIATE serialises all.
        with self.transaction() as db:
            return work(db)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if db.in_transaction:
                db.execute("COMMIT")

    def lock(self, tx: sqlite3.Connection, branch: BranchContext) -> None:
        # One writer: a transaction that wrote, or began IMMEDIATE, holds
        # the lock every call about any branch takes.
        if not tx.in_transaction:
            raise FailedPrecondition(
                "publish in the local transaction of the business change: begin it "
                "(ledger.transaction(), or BEGIN IMMEDIATE) before publishing"
            )

    def unique_violation(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.IntegrityError)

    def restart(self, tx: sqlite3.Connection, branch: BranchContext) -> None:
        tx.execute("ROLLBACK")
        tx.execute("BEGIN IMMEDIATE")

    def _query(
        self, tx: sqlite3.Connection, sql: str, args: tuple[object, ...]
    ) -> list[tuple[Any, ...]]:
        return tx.execute(sql, args).fetchall()

    def _pooled(self, sql: str, args: tuple[object, ...]) -> tuple[list[tuple[Any, ...]], int]:
        with self._connection() as db:
            cursor = db.execute(sql, args)
            return cursor.fetchall(), cursor.rowcount


class PostgresLedger(Ledger["psycopg.Connection[Any]"]):
    """The ledger in a PostgreSQL database (psycopg 3; `pip install
    "./sdk/python[postgres]"`), over a small pool of connections kept open
    between calls. Each call's local transaction first takes a
    transaction-scoped advisory lock on its branch, the same lock the Rust
    SDK takes, so the two may even serve one database."""

    placeholder = "%s"
    PRUNE = """DELETE FROM concord_ledger
       WHERE (txn_id, branch) IN (
           SELECT txn_id, branch FROM concord_ledger
           GROUP BY txn_id, branch
           HAVING MAX(created_at_ms) <= %s
              AND NOT (bool_or(op = 'prepare' AND result = 'commit')
                       AND NOT bool_or(op IN ('commit', 'abort'))))"""

    def __init__(self, url: str, pool_size: int = 8, connect_timeout_s: int = 10) -> None:
        import psycopg  # an optional dependency: only PostgreSQL needs it

        self._psycopg = psycopg
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            db = self._idle.pop() if self._idle else None
        if db is None or db.closed:
            db = self._psycopg.connect(
                self.url, autocommit=True, connect_timeout=self.connect_timeout_s
            )
            # A vote or an applied decision is durable when its answer
            # leaves (design §4, §12), whatever the server's default: with
            # `off` it would answer before the commit reached the disk.
            db.execute("SET synchronous_commit = on")
        healthy = False
        try:
            yield db
            healthy = True
        finally:
            # A connection that failed mid-call is not trusted again.
            with self._lock:
                if healthy and not db.closed and len(self._idle) < self.pool_size:
                    self._idle.append(db)
                    db = None
            if db is not None:
                db.close()

    def close(self) -> None:
        """Closes the pooled connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    def install(self) -> None:
        with self._connection() as db:
            db.execute(TABLE.format(blob="BYTEA", integer="BIGINT"))

    def _lock_branch(self, db: psycopg.Connection[Any], branch: BranchContext) -> None:
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s || '/' || %s, 0))",
            (branch.transaction_id, branch.branch),
        )

    def local(self, branch: BranchContext, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self.transaction() as db:
            self._lock_branch(db, branch)
            return work(db)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as db:
            db.execute("BEGIN")
            try:
                yield db
            except BaseException:
                if not db.closed:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def lock(self, tx: psycopg.Connection[Any], branch: BranchContext) -> None:
        self._lock_branch(tx, branch)

    def unique_violation(self, error: BaseException) -> bool:
        return isinstance(error, self._psycopg.errors.UniqueViolation)

    def restart(self, tx: psycopg.Connection[Any], branch: BranchContext) -> None:
        tx.execute("ROLLBACK")
        tx.execute("BEGIN")
        self._lock_branch(tx, branch)

    def _query(
        self, tx: psycopg.Connection[Any], sql: str, args: tuple[object, ...]
    ) -> list[tuple[Any, ...]]:
        cursor = tx.execute(self._sql(sql), args)
        return cursor.fetchall() if cursor.description else []

    def _pooled(self, sql: str, args: tuple[object, ...]) -> tuple[list[tuple[Any, ...]], int]:
        with self._connection() as db:
            cursor = db.execute(self._sql(sql), args)
            return (cursor.fetchall() if cursor.description else []), cursor.rowcount


_OPS = {op.value for op in Op}

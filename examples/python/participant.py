"""A Concord participant in Python, on the Python SDK (sdk/python).

A loyalty-points service: accounts with a balance in its own SQLite
database. It takes part in two-phase commit (Prepare holds the points,
Commit applies them, Abort releases them; a single branch commits in one
phase) and in sagas (Execute applies a change, Compensate reverses it).

The SDK's ledger makes every call exactly-once, in the same SQLite
transaction as the change (docs/design.md §4): a duplicate gets the first
answer; an Abort or Compensate that arrives before its Prepare or Execute
leaves a tombstone, and the late call is refused. Its resolver asks the
coordinator about a branch left prepared across a restart.

It obeys only calls signed by the coordinator's key (`--coordinator-key
FILE`: the public key, PEM, as `concord keys public` prints it; a file may
hold several keys), or, with `--accept-unsigned-calls`, anyone who reaches
its port (warned at every start). Given neither, it does not start.

Payload: JSON {"account": "ada", "delta": -5} (points; negative spends).

    ./setup.sh
    .venv/bin/python participant.py --listen 127.0.0.1:7601 --db points.db --open ada=100 \
        --coordinator http://127.0.0.1:7400 --coordinator-key ../../concord-data/signing.key.pub
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sqlite3
import sys

from concord_participant import (
    BranchContext,
    InvalidPayload,
    ParticipantService,
    KeyFileError,
    ResolverConfig,
    SqliteLedger,
    StepResult,
    TrustedKeys,
    Vote,
    serve,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    txn_id TEXT NOT NULL, branch TEXT NOT NULL, account TEXT NOT NULL, delta INTEGER NOT NULL,
    PRIMARY KEY (txn_id, branch));
"""


def change(payload: bytes) -> tuple[str, int]:
    try:
        parsed = json.loads(payload)
        return str(parsed["account"]), int(parsed["delta"])
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidPayload(f"payload: {error}") from error


def refusal(tx: sqlite3.Connection, account: str, delta: int) -> str | None:
    """Why `delta` cannot be applied to `account` now, if it cannot."""
    row = tx.execute("SELECT balance FROM accounts WHERE name = ?", (account,)).fetchone()
    if row is None:
        return f"no account {account}"
    (held,) = tx.execute(
        "SELECT COALESCE(SUM(delta), 0) FROM holds WHERE account = ? AND delta < 0", (account,)
    ).fetchone()
    if row[0] + held + delta < 0:
        return f"{account} has {row[0] + held} points, needs {-delta}"
    return None


class Points:
    """The handlers: each runs inside the local transaction `tx` the SDK
    writes its ledger row in, and never commits it."""

    def prepare(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> Vote:
        account, delta = change(payload)
        why = refusal(tx, account, delta)
        if why:
            return Vote.abort(why)
        tx.execute(
            "INSERT INTO holds (txn_id, branch, account, delta) VALUES (?, ?, ?, ?)",
            (branch.transaction_id, branch.branch, account, delta),
        )
        return Vote.commit()

    def commit(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> None:
        key = (branch.transaction_id, branch.branch)
        hold = tx.execute(
            "SELECT account, delta FROM holds WHERE txn_id = ? AND branch = ?", key
        ).fetchone()
        if hold is not None:
            tx.execute("UPDATE accounts SET balance = balance + ? WHERE name = ?", (hold[1], hold[0]))
            tx.execute("DELETE FROM holds WHERE txn_id = ? AND branch = ?", key)

    def abort(self, tx: sqlite3.Connection, branch: BranchContext, payload: bytes) -> None:
        tx.execute(
            "DELETE FROM holds WHERE txn_id = ? AND branch = ?",
            (branch.transaction_id, branch.branch),
        )

    def action(self, tx: sqlite3.Connection, step: BranchContext, payload: bytes) -> StepResult:
        account, delta = change(payload)
        why = refusal(tx, account, delta)
        if why:
            return StepResult.refused(why)
        tx.execute("UPDATE accounts SET balance = balance + ? WHERE name = ?", (delta, account))
        return StepResult.succeeded()

    def compensate(self, tx: sqlite3.Connection, step: BranchContext, payload: bytes) -> None:
        account, delta = change(payload)
        tx.execute("UPDATE accounts SET balance = balance - ? WHERE name = ?", (delta, account))


def callers(key_file: str | None, accept_unsigned: bool) -> TrustedKeys | None:
    """Whose calls to obey: the keys in `key_file`, or anyone (None) when
    --accept-unsigned-calls was typed; exits saying what to give when
    neither or both were (DESIGN §12: an open door is a flag someone
    typed)."""
    if key_file and accept_unsigned:
        sys.exit("--coordinator-key and --accept-unsigned-calls contradict each other: give one")
    if accept_unsigned:
        return None
    if not key_file:
        sys.exit(
            "whose calls should this participant obey? Give --coordinator-key FILE (the "
            "coordinator's public key: `concord keys public`), or --accept-unsigned-calls to "
            "obey anyone who reaches its port"
        )
    try:
        return TrustedKeys.from_file(key_file)
    except OSError as error:
        sys.exit(f"cannot read the coordinator key file {key_file}: {error}")
    except KeyFileError as error:
        sys.exit(str(error))


async def main() -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:7601")
    parser.add_argument("--db", default="points.db")
    parser.add_argument("--open", action="append", default=[], help="account=points")
    parser.add_argument(
        "--coordinator", default="", help="where to ask about branches left in doubt"
    )
    parser.add_argument("--in-doubt-after", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--coordinator-key",
        metavar="FILE",
        help="obey only calls signed by these coordinator keys (PEM, PUBLIC KEY blocks)",
    )
    parser.add_argument(
        "--accept-unsigned-calls",
        action="store_true",
        help="obey anyone who reaches the port (a network only the coordinator reaches)",
    )
    args = parser.parse_args()
    trusted = callers(args.coordinator_key, args.accept_unsigned_calls)
    db = sqlite3.connect(args.db)
    db.executescript(SCHEMA)
    for opening in args.open:
        name, balance = opening.split("=", 1)
        db.execute(
            "INSERT OR IGNORE INTO accounts (name, balance) VALUES (?, ?)", (name, int(balance))
        )
    db.commit()
    db.close()
    points = Points()
    serving = await serve(
        ParticipantService(
            SqliteLedger(args.db),
            points,
            points,
            trusted_keys=trusted,
            accept_unsigned=trusted is None,
        ),
        args.listen,
        ResolverConfig(coordinator=args.coordinator, in_doubt_after_s=args.in_doubt_after),
    )
    print(f"points participant serving on {args.listen}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await serving.stop(2)


if __name__ == "__main__":
    asyncio.run(main())

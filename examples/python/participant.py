"""A Concord participant in Python, built only from the proto files.

A loyalty-points service: accounts with a balance in its own SQLite
database. It takes part in two-phase commit (Prepare holds the points,
Commit applies them, Abort releases them; a single branch commits in one
phase) and in sagas (Execute applies a change, Compensate reverses it).

Every call is exactly-once through a ledger kept in the same SQLite
transaction as the change (DESIGN §4): a duplicate returns the first answer;
an Abort or Compensate that arrives before its Prepare or Execute leaves a
tombstone, and the late call is refused.

Payload: JSON {"account": "ada", "delta": -5} (points; negative spends).

    ./setup.sh
    .venv/bin/python participant.py --listen 127.0.0.1:7601 --db points.db --open ada=100
"""

import argparse
import json
import signal
import sqlite3
import sys
import threading
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "gen"))

import grpc  # noqa: E402
from concord.v1 import participant_pb2 as pb  # noqa: E402
from concord.v1 import participant_pb2_grpc as rpc  # noqa: E402
from concord.v1 import types_pb2 as types  # noqa: E402

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    txn_id TEXT NOT NULL, branch TEXT NOT NULL, account TEXT NOT NULL, delta INTEGER NOT NULL,
    PRIMARY KEY (txn_id, branch));
CREATE TABLE IF NOT EXISTS ledger (
    txn_id TEXT NOT NULL, branch TEXT NOT NULL, op TEXT NOT NULL, result TEXT NOT NULL,
    reason TEXT, PRIMARY KEY (txn_id, branch, op));
"""


class Points(rpc.ParticipantServicer):
    def __init__(self, db_path):
        self.db_path = db_path
        # SQLite serialises writers; one lock keeps each call's read-check-write whole.
        self.lock = threading.Lock()
        with self.connect() as db:
            db.executescript(SCHEMA)

    def connect(self):
        db = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # --- one local transaction per call, ledger and change together ---

    def call(self, branch, work):
        with self.lock:
            db = self.connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                answer = work(db, branch.transaction_id, branch.branch)
                db.execute("COMMIT")
                return answer
            except Exception:
                db.execute("ROLLBACK")
                raise
            finally:
                db.close()

    @staticmethod
    def entry(db, txn, branch, op):
        return db.execute(
            "SELECT result, reason FROM ledger WHERE txn_id=? AND branch=? AND op=?",
            (txn, branch, op),
        ).fetchone()

    @staticmethod
    def record(db, txn, branch, op, result, reason=None):
        db.execute(
            "INSERT INTO ledger (txn_id, branch, op, result, reason) VALUES (?, ?, ?, ?, ?)",
            (txn, branch, op, result, reason),
        )

    @staticmethod
    def change(payload, context):
        try:
            change = json.loads(payload)
            return str(change["account"]), int(change["delta"])
        except (ValueError, KeyError, TypeError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"payload: {error}")

    @staticmethod
    def balance(db, account):
        row = db.execute("SELECT balance FROM accounts WHERE name=?", (account,)).fetchone()
        return None if row is None else row[0]

    def can_apply(self, db, account, delta):
        balance = self.balance(db, account)
        if balance is None:
            return f"no account {account}"
        held = db.execute(
            "SELECT COALESCE(SUM(delta), 0) FROM holds WHERE account=? AND delta < 0", (account,)
        ).fetchone()[0]
        if balance + held + delta < 0:
            return f"{account} has {balance + held} points, needs {-delta}"
        return None

    # --- two-phase commit ---

    def Prepare(self, request, context):
        account, delta = self.change(request.payload, context)

        def work(db, txn, branch):
            done = self.entry(db, txn, branch, "prepare")
            if done:
                return done
            if self.entry(db, txn, branch, "abort"):
                # Aborted before it arrived: refuse, as DESIGN §4 says.
                self.record(db, txn, branch, "prepare", "abort", "aborted before prepare")
                return ("abort", "aborted before prepare")
            refusal = self.can_apply(db, account, delta)
            if refusal:
                self.record(db, txn, branch, "prepare", "abort", refusal)
                return ("abort", refusal)
            db.execute(
                "INSERT INTO holds (txn_id, branch, account, delta) VALUES (?, ?, ?, ?)",
                (txn, branch, account, delta),
            )
            self.record(db, txn, branch, "prepare", "commit")
            return ("commit", None)

        result, reason = self.call(request.branch, work)
        vote = types.VOTE_COMMIT if result == "commit" else types.VOTE_ABORT
        return pb.PrepareResponse(vote=vote, reason=reason or "")

    def Commit(self, request, context):
        def work(db, txn, branch):
            if self.entry(db, txn, branch, "commit"):
                return
            hold = db.execute(
                "SELECT account, delta FROM holds WHERE txn_id=? AND branch=?", (txn, branch)
            ).fetchone()
            if hold is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "commit without a prepare")
            db.execute(
                "UPDATE accounts SET balance = balance + ? WHERE name=?", (hold[1], hold[0])
            )
            db.execute("DELETE FROM holds WHERE txn_id=? AND branch=?", (txn, branch))
            self.record(db, txn, branch, "commit", "ok")

        self.call(request.branch, work)
        return pb.CommitBranchResponse()

    def Abort(self, request, context):
        def work(db, txn, branch):
            if self.entry(db, txn, branch, "commit"):
                return True
            if not self.entry(db, txn, branch, "abort"):
                db.execute("DELETE FROM holds WHERE txn_id=? AND branch=?", (txn, branch))
                self.record(db, txn, branch, "abort", "ok")
            return False

        already = self.call(request.branch, work)
        return pb.AbortBranchResponse(already_committed=already)

    def CommitOnePhase(self, request, context):
        account, delta = self.change(request.payload, context)

        def work(db, txn, branch):
            done = self.entry(db, txn, branch, "commit")
            if done:
                return ("commit", None)
            if self.entry(db, txn, branch, "abort"):
                return ("abort", "aborted before it arrived")
            refusal = self.can_apply(db, account, delta)
            if refusal:
                self.record(db, txn, branch, "abort", "ok", refusal)
                return ("abort", refusal)
            db.execute("UPDATE accounts SET balance = balance + ? WHERE name=?", (delta, account))
            self.record(db, txn, branch, "commit", "ok")
            return ("commit", None)

        result, reason = self.call(request.branch, work)
        outcome = types.OUTCOME_COMMITTED if result == "commit" else types.OUTCOME_ABORTED
        return pb.CommitOnePhaseResponse(outcome=outcome, reason=reason or "")

    # --- sagas ---

    def Execute(self, request, context):
        account, delta = self.change(request.payload, context)

        def work(db, txn, branch):
            done = self.entry(db, txn, branch, "action")
            if done:
                return done
            if self.entry(db, txn, branch, "compensate"):
                self.record(db, txn, branch, "action", "failed", "compensated before it ran")
                return ("failed", "compensated before it ran")
            refusal = self.can_apply(db, account, delta)
            if refusal:
                self.record(db, txn, branch, "action", "failed", refusal)
                return ("failed", refusal)
            db.execute("UPDATE accounts SET balance = balance + ? WHERE name=?", (delta, account))
            self.record(db, txn, branch, "action", "done")
            return ("done", None)

        result, reason = self.call(request.branch, work)
        if result == "done":
            return pb.ExecuteResponse(result=pb.ExecuteResponse.RESULT_SUCCEEDED)
        return pb.ExecuteResponse(result=pb.ExecuteResponse.RESULT_FAILED, reason=reason or "")

    def Compensate(self, request, context):
        account, delta = self.change(request.payload, context)

        def work(db, txn, branch):
            if self.entry(db, txn, branch, "compensate"):
                return
            action = self.entry(db, txn, branch, "action")
            if action and action[0] == "done":
                db.execute(
                    "UPDATE accounts SET balance = balance - ? WHERE name=?", (delta, account)
                )
            # Without a completed action this is a tombstone: a late
            # Execute is refused.
            self.record(db, txn, branch, "compensate", "ok")

        self.call(request.branch, work)
        return pb.CompensateResponse()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:7601")
    parser.add_argument("--db", default="points.db")
    parser.add_argument("--open", action="append", default=[], help="account=points")
    args = parser.parse_args()
    points = Points(args.db)
    with points.connect() as db:
        for opening in args.open:
            name, balance = opening.split("=", 1)
            db.execute(
                "INSERT OR IGNORE INTO accounts (name, balance) VALUES (?, ?)", (name, int(balance))
            )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_ParticipantServicer_to_server(points, server)
    server.add_insecure_port(args.listen)
    server.start()
    print(f"points participant serving on {args.listen}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()

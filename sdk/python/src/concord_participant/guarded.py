"""The ledger-guarded paths every call takes: each (transaction, branch,
operation) runs its handler at most once, inside the same local transaction
as its ledger row; duplicates get the first answer, an abort or
compensation that comes first leaves a tombstone (docs/design.md §4). The
Rust SDK's participant/src/server/guarded.rs, path for path.

Synchronous: `concord_participant.server` runs each call on a worker
thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic

from . import crash, outbox
from .ledger import (
    BranchContext,
    Entry,
    FailedPrecondition,
    Ledger,
    MessageDestination,
    Op,
    SagaStep,
    StepResult,
    TwoPhaseParticipant,
    Tx,
    Unsupported,
    Vote,
)


@dataclass(frozen=True)
class OnePhase:
    """What a one-phase commit did."""

    committed: bool
    reason: str = ""
    read_only: bool = False


def _recorded_vote(entry: Entry) -> Vote:
    if entry.result == "commit":
        return Vote.commit()
    if entry.result == "read_only":
        return Vote.read_only()
    return Vote.abort(entry.reason or "voted abort")


class Guarded(Generic[Tx]):
    """The paths, over one ledger and the service's handlers."""

    def __init__(
        self,
        ledger: Ledger[Tx],
        two_phase: TwoPhaseParticipant[Tx] | None,
        steps: SagaStep[Tx] | None,
        messages: MessageDestination[Tx] | None = None,
    ) -> None:
        self.ledger = ledger
        self.two_phase = two_phase
        self.steps = steps
        self.messages = messages

    def _handler(self) -> TwoPhaseParticipant[Tx]:
        if self.two_phase is None:
            raise FailedPrecondition("this participant takes no part in two-phase commit")
        return self.two_phase

    def _steps(self) -> SagaStep[Tx]:
        if self.steps is None:
            raise FailedPrecondition("this participant runs no saga steps")
        return self.steps

    def prepare(self, branch: BranchContext, payload: bytes) -> Vote:
        handler = self._handler()

        def work(tx: Tx) -> Vote:
            rows = self.ledger.rows(tx, branch)
            if Op.ABORT in rows:
                # Hanging prevention: the abort came first and won.
                return Vote.abort("branch was already aborted")
            if Op.PREPARE in rows:
                return _recorded_vote(rows[Op.PREPARE])
            vote = handler.prepare(tx, branch, payload)
            if vote.kind == "abort":
                # The refusal undoes whatever the handler wrote; only the
                # ledger row remains, so a duplicate Prepare gets the same no.
                self.ledger.restart(tx, branch)
            self.ledger.record(
                tx, branch, Op.PREPARE, vote.kind, vote.reason or None, payload
            )
            return vote

        vote = self.ledger.local(branch, work)
        crash.point("participant-after-prepare")
        return vote

    def commit(self, branch: BranchContext, payload: bytes) -> None:
        handler = self._handler()
        name, txn = branch.branch, branch.transaction_id

        def work(tx: Tx) -> None:
            rows = self.ledger.rows(tx, branch)
            if Op.COMMIT in rows:
                return  # a duplicate: applied once already (I5)
            if Op.ABORT in rows:
                raise FailedPrecondition(f"branch {name} of {txn} was aborted; it cannot commit")
            prepared = rows.get(Op.PREPARE)
            if prepared is None:
                raise FailedPrecondition(f"branch {name} of {txn} was never prepared here")
            if prepared.result == "read_only":
                return
            if prepared.result == "abort":
                raise FailedPrecondition(f"branch {name} of {txn} voted ABORT; it cannot commit")
            crash.point("participant-before-commit")
            handler.commit(tx, branch, payload)
            self.ledger.record(tx, branch, Op.COMMIT, "done")

        self.ledger.local(branch, work)
        crash.point("participant-after-commit")

    def abort(self, branch: BranchContext, payload: bytes) -> bool:
        """True when the branch had committed already (one-phase)."""
        handler = self._handler()

        def work(tx: Tx) -> bool:
            rows = self.ledger.rows(tx, branch)
            if Op.ABORT in rows:
                return False
            if Op.COMMIT in rows:
                return True
            prepared = rows.get(Op.PREPARE)
            if prepared is None:
                # Abort before prepare: a tombstone, so the late Prepare is
                # refused.
                result = "tombstone"
            elif prepared.result == "commit":
                handler.abort(tx, branch, payload)
                result = "done"
            else:
                # It voted ABORT or READ_ONLY: nothing of it is held.
                result = "done"
            self.ledger.record(tx, branch, Op.ABORT, result)
            return False

        return self.ledger.local(branch, work)

    def commit_one_phase(self, branch: BranchContext, payload: bytes) -> OnePhase:
        handler = self._handler()

        def work(tx: Tx) -> OnePhase:
            rows = self.ledger.rows(tx, branch)
            if Op.COMMIT in rows:
                return OnePhase(committed=True)
            if Op.ABORT in rows:
                return OnePhase(committed=False, reason="branch was already aborted")
            if Op.PREPARE in rows:
                vote = _recorded_vote(rows[Op.PREPARE])
                if vote.kind == "abort":
                    return OnePhase(committed=False, reason=vote.reason)
                if vote.kind == "read_only":
                    return OnePhase(committed=True, read_only=True)
                handler.commit(tx, branch, payload)
                self.ledger.record(tx, branch, Op.COMMIT, "done")
                return OnePhase(committed=True)
            vote = handler.prepare(tx, branch, payload)
            if vote.kind == "commit":
                # R6: prepare and commit in one local transaction.
                handler.commit(tx, branch, payload)
                self.ledger.record(tx, branch, Op.PREPARE, "commit", None, payload)
                self.ledger.record(tx, branch, Op.COMMIT, "one_phase")
                return OnePhase(committed=True)
            if vote.kind == "read_only":
                self.ledger.record(tx, branch, Op.PREPARE, "read_only")
                return OnePhase(committed=True, read_only=True)
            self.ledger.restart(tx, branch)
            self.ledger.record(tx, branch, Op.PREPARE, "abort", vote.reason)
            return OnePhase(committed=False, reason=vote.reason)

        return self.ledger.local(branch, work)

    def execute(self, step: BranchContext, payload: bytes) -> StepResult:
        steps = self._steps()

        def work(tx: Tx) -> StepResult:
            rows = self.ledger.rows(tx, step)
            if Op.COMPENSATE in rows:
                # Hanging prevention: the compensation came first and won.
                return StepResult.refused("step was already compensated")
            if Op.ACTION in rows:
                entry = rows[Op.ACTION]
                if entry.result == "done":
                    return StepResult.succeeded()
                return StepResult.refused(entry.reason or "refused")
            result = steps.action(tx, step, payload)
            if result.done:
                self.ledger.record(tx, step, Op.ACTION, "done")
            else:
                self.ledger.restart(tx, step)
                self.ledger.record(tx, step, Op.ACTION, "refused", result.reason)
            return result

        return self.ledger.local(step, work)

    def compensate(self, step: BranchContext, payload: bytes) -> None:
        steps = self._steps()

        def work(tx: Tx) -> None:
            rows = self.ledger.rows(tx, step)
            if Op.COMPENSATE in rows:
                return  # a duplicate (I5)
            action = rows.get(Op.ACTION)
            if action is None:
                # Compensation before the action: a tombstone, so the late
                # action is refused.
                result = "tombstone"
            elif action.result == "done":
                steps.compensate(tx, step, payload)
                result = "done"
            else:
                # The action was refused: nothing of it to undo.
                result = "done"
            self.ledger.record(tx, step, Op.COMPENSATE, result)

        self.ledger.local(step, work)

    def deliver(self, message: BranchContext, payload: bytes) -> None:
        """A message delivered to this destination: its handler runs once
        per (message, destination), in the local transaction of its ledger
        row (M4); a duplicate answers as the first did."""
        if self.messages is None:
            raise Unsupported("this participant receives no transactional messages")
        destination = self.messages

        def work(tx: Tx) -> None:
            if Op.DELIVER in self.ledger.rows(tx, message):
                return  # a duplicate: applied once already (M4)
            destination.deliver(tx, message, payload)
            self.ledger.record(tx, message, Op.DELIVER, "done")

        self.ledger.local(message, work)

    def check_message(self, message_id: str) -> str:
        """The coordinator's check-back for a message this service produced
        (M2; `concord_participant.outbox`): "committed" or "rolled_back"."""
        return outbox.check(self.ledger, message_id)

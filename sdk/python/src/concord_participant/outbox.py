"""The producer's side of a transactional message (docs/design.md §10): the
outbox row that commits with the business change, and the answer to the
coordinator's check-back. The Rust SDK's participant/src/outbox.rs, row for
row, so either SDK reads the other's outbox.

The outbox row is a ledger row, `(message id, "message", "publish")`,
written by `publish` in the producer's own local transaction. The
check-back (`check`) looks for it in a local transaction of its own,
serialised with a publish of the same message as any two ledger calls about
one branch are; when it finds none it writes a tombstone in its place
(result `rolled_back`) before answering. A local transaction that then
tries to publish fails on the tombstone and must roll back, so the producer
never commits a change whose message was dropped, and the coordinator never
drops one whose change committed (M2).
"""

from __future__ import annotations

from .ledger import BranchContext, Ledger, Op, Tx

#: The branch outbox rows go under, and their results.
OUTBOX = "message"
PUBLISHED = "committed"
TOMBSTONE = "rolled_back"


class MessageDropped(Exception):
    """The coordinator asked about this message, found no outbox row, and
    dropped it: the local transaction that tried to publish it must roll
    back (leaving a `with ledger.transaction()` block by this exception
    does)."""

    def __init__(self, message_id: str) -> None:
        super().__init__(
            f"message {message_id} was dropped: the coordinator's check-back found it "
            "unpublished; roll back this local transaction"
        )
        self.message_id = message_id


class AlreadyPublished(Exception):
    """Another local transaction already published this message."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id} was already published by another local transaction")
        self.message_id = message_id


def outbox(message_id: str) -> BranchContext:
    return BranchContext(transaction_id=message_id, branch=OUTBOX)


def publish(ledger: Ledger[Tx], tx: Tx, message_id: str) -> None:
    """Writes the outbox row of `message_id` in `tx`, the local transaction
    that makes the business change: the message is published if and only
    if `tx` commits. Raises `MessageDropped` when a check-back came first;
    then roll `tx` back."""
    row = outbox(message_id)
    # Serialised with a check-back of the same message, so that the two
    # never both think they came first.
    ledger.lock(tx, row)
    found = ledger.rows(tx, row).get(Op.PUBLISH)
    if found is not None:
        if found.result == TOMBSTONE:
            raise MessageDropped(message_id)
        raise AlreadyPublished(message_id)
    try:
        ledger.record(tx, row, Op.PUBLISH, PUBLISHED)
    except Exception as error:
        # A row committed after our look (a check-back's tombstone): this
        # transaction must not commit.
        if ledger.unique_violation(error):
            raise MessageDropped(message_id) from error
        raise


def check(ledger: Ledger[Tx], message_id: str) -> str:
    """Answers the coordinator's check-back for `message_id`: "committed"
    if its outbox row is there; otherwise writes the tombstone, commits it,
    and answers "rolled_back". Asking again gives the same answer."""
    row = outbox(message_id)

    def work(tx: Tx) -> str:
        found = ledger.rows(tx, row).get(Op.PUBLISH)
        if found is not None:
            return "rolled_back" if found.result == TOMBSTONE else "committed"
        ledger.record(tx, row, Op.PUBLISH, TOMBSTONE)
        return "rolled_back"

    try:
        return ledger.local(row, work)
    except Exception as error:
        # A publish committed between our look and our write: look again.
        if ledger.unique_violation(error):
            return ledger.local(row, work)
        raise

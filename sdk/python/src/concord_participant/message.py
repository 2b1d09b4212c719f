"""The producer's side of a transactional message (docs/design.md §10), as
the Rust SDK's (participant/src/message.rs): build it, prepare it at the
coordinator, publish it in the same local transaction as the business
change, then submit it.

    message = await (
        Message("http://bank:7501")  # this service: it answers the check-back
        .to(Destination("audit", "http://audit:7602", b"acct-42 -100"))
        .to(Destination("notify", "http://notify:7603", b"acct-42 -100"))
        .ordering_key("acct-42")
        .prepare(client)
    )
    with ledger.transaction() as tx:
        tx.execute("UPDATE accounts SET balance = balance - 100 WHERE id = 42")
        message.publish_with(ledger, tx)  # the outbox row, in the same transaction
    await message.submit(client)
    # Delivered from here on. Were this process to die before submitting,
    # the coordinator would ask (the check-back), find the outbox row and
    # deliver all the same.

What is guaranteed: each destination sees the message once in effect (its
ledger absorbs redeliveries) if and only if the local transaction
committed. With an ordering key, a destination sees a key's messages in the
order they were submitted (or confirmed by check-back), each after the one
before it acknowledged there.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from ._proto.concord.v1 import coordinator_pb2 as pb
from .client import CoordinatorClient, CoordinatorError
from .ledger import Ledger, Tx
from .outbox import publish


@dataclass(frozen=True)
class Destination:
    """One destination: its name (unique within the message; its ledger
    key with the message id), its participant's URI (a service with a
    `MessageDestination`), and what it is sent."""

    name: str
    participant: str
    payload: bytes = b""


class Message:
    """A message being built, from the producer whose service answers
    check-backs at `producer` (a `ParticipantService` does, from its
    outbox, whatever else it serves)."""

    def __init__(self, producer: str) -> None:
        self.request = pb.PrepareMessageRequest(producer=producer)

    def to(self, destination: Destination) -> Message:
        """Adds a destination."""
        self.request.destinations.append(
            pb.MessageDestination(
                name=destination.name,
                participant=destination.participant,
                payload=destination.payload,
            )
        )
        return self

    def ordering_key(self, key: str) -> Message:
        """Delivers this message to each destination after the earlier ones
        with the same key (M5)."""
        self.request.ordering_key = key
        return self

    def check_after_ms(self, after_ms: int) -> Message:
        """How long the coordinator waits for `submit` before it asks the
        producer (1 000 ms to one day; 5 000 ms by default)."""
        self.request.check_after_ms = after_ms
        return self

    def idempotency_key(self, key: str) -> Message:
        """Makes `prepare` idempotent: a retry answers the same message."""
        self.request.idempotency_key = key
        return self

    def description(self, text: str) -> Message:
        """Free text shown to operators."""
        self.request.description = text
        return self

    async def prepare(self, client: CoordinatorClient) -> PreparedMessage:
        """Records the message at the coordinator (durably). Nothing is
        delivered until it is published and submitted."""
        answer = await client.prepare_message(self.request)
        if answer.state == "dropped":
            raise CoordinatorError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the idempotency key names message {answer.transaction_id}, which was "
                "dropped; prepare a new one with a new key",
            )
        return PreparedMessage(answer.transaction_id)


@dataclass(frozen=True)
class PreparedMessage:
    """A message the coordinator has recorded (or one prepared earlier, by
    its id): publish it in the local transaction that makes the change, then
    submit it."""

    id: str

    def publish_with(self, ledger: Ledger[Tx], tx: Tx) -> None:
        """Writes the outbox row in `tx`: the message is published if and
        only if `tx` commits. `MessageDropped` means the coordinator's
        check-back came first and dropped it: roll `tx` back."""
        publish(ledger, tx, self.id)

    async def submit(self, client: CoordinatorClient, wait: bool = False) -> str:
        """Tells the coordinator the local transaction committed: it
        delivers at once (not after `check_after_ms`). With `wait`, answers
        once every destination acknowledged. "delivering" or "delivered".
        Safe to retry; if it never gets through, the check-back delivers
        all the same."""
        return await client.submit_message(self.id, wait)

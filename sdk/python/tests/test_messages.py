"""Transactional messages (docs/design.md §10) in the Python SDK: the
outbox on both ledgers (a publish and a check-back, whichever comes first,
agree), and a Python producer and destination against a real coordinator
(the Rust test that runs this suite starts one): a submitted message is
delivered once; one published but never submitted is delivered after the
coordinator's check-back; one never published is dropped, and its late
publish rolls back its local transaction. The producer and the
destination trust the real coordinator's key: its check-backs and
deliveries are signed."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from concord_participant import (
    AlreadyPublished,
    CoordinatorClient,
    Destination,
    Ledger,
    Message,
    MessageDropped,
    ParticipantService,
    PreparedMessage,
    SqliteLedger,
    serve,
)
from concord_participant._proto.concord.v1 import types_pb2 as types
from concord_participant.ledger import BranchContext

from scripted import Inbox, effect, install_sqlite, read
from signing import coordinator_keys

COORDINATOR = os.environ.get("CONCORD_TEST_COORDINATOR_URL", "")


def changes(ledger: Ledger[Any], txn: str) -> list[str]:
    """The business changes the producer's local transactions committed."""
    return [op for (op,) in read(ledger, "SELECT op FROM effects WHERE txn_id = ?", (txn,))]


def change_and_publish(ledger: Ledger[Any], message: PreparedMessage) -> None:
    """The producer's business change and its outbox row, in one local
    transaction."""
    with ledger.transaction() as tx:
        effect(tx, BranchContext(message.id, "business"), "debit")
        message.publish_with(ledger, tx)


def test_a_published_message_is_confirmed_and_cannot_be_published_twice(
    ledger: Ledger[Any],
) -> None:
    message = PreparedMessage(str(uuid.uuid4()))
    change_and_publish(ledger, message)
    assert ParticipantService(ledger).guarded.check_message(message.id) == "committed"
    with pytest.raises(AlreadyPublished):
        change_and_publish(ledger, message)
    # The second local transaction rolled back: one debit.
    assert changes(ledger, message.id) == ["debit"]


def test_a_check_back_that_comes_first_drops_the_message_and_its_change(
    ledger: Ledger[Any],
) -> None:
    message = PreparedMessage(str(uuid.uuid4()))
    service = ParticipantService(ledger)
    assert service.guarded.check_message(message.id) == "rolled_back"
    with pytest.raises(MessageDropped):
        change_and_publish(ledger, message)
    assert changes(ledger, message.id) == []
    assert service.guarded.check_message(message.id) == "rolled_back"


def test_publishing_outside_a_local_transaction_is_refused_on_sqlite(tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / "producer.db")
    ledger = SqliteLedger(db)
    ledger.install()
    with pytest.raises(Exception, match="local transaction"):
        PreparedMessage("m1").publish_with(ledger, ledger.connect())


class World:
    def __init__(self, client: CoordinatorClient, producer: str, destination: str) -> None:
        self.client = client
        self.producer = producer
        self.destination = destination


@pytest.fixture
async def world(tmp_path: pathlib.Path) -> AsyncIterator[tuple[World, SqliteLedger, str]]:
    if not COORDINATOR:
        pytest.skip("CONCORD_TEST_COORDINATOR_URL is not set (cargo test sets it)")
    producer_db = str(tmp_path / "producer.db")
    inbox_db = str(tmp_path / "inbox.db")
    install_sqlite(producer_db)
    install_sqlite(inbox_db)
    producer_ledger = SqliteLedger(producer_db)
    keys = coordinator_keys()
    # The producer answers check-backs; the destination takes deliveries.
    producer = await serve(
        ParticipantService(producer_ledger, trusted_keys=keys), "127.0.0.1:0", resolver=None
    )
    destination = await serve(
        ParticipantService(SqliteLedger(inbox_db), messages=Inbox(), trusted_keys=keys),
        "127.0.0.1:0",
        resolver=None,
    )
    async with CoordinatorClient(COORDINATOR, timeout_s=20) as client:
        yield (
            World(
                client,
                f"http://127.0.0.1:{producer.port}",
                f"http://127.0.0.1:{destination.port}",
            ),
            producer_ledger,
            inbox_db,
        )
    await producer.stop(1.0)
    await destination.stop(1.0)


def delivered(inbox_db: str, message_id: str) -> list[str]:
    with sqlite3.connect(inbox_db) as db:
        rows = db.execute(
            "SELECT branch FROM effects WHERE txn_id = ? AND op = 'deliver' ORDER BY branch",
            (message_id,),
        )
        return [branch for (branch,) in rows]


async def until_state(client: CoordinatorClient, message_id: str, state: int) -> None:
    for _ in range(200):
        if (await client.transaction(message_id)).state == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"message {message_id} never reached state {state}")


def to_both(world: World) -> Message:
    return (
        Message(world.producer)
        .to(Destination("audit", world.destination, b"acct-42 -100"))
        .to(Destination("notify", world.destination, b"acct-42 -100"))
        .ordering_key("acct-42")
        .check_after_ms(1000)
    )


async def test_a_submitted_message_reaches_each_destination_once(
    world: tuple[World, SqliteLedger, str],
) -> None:
    w, producer, inbox = world
    message = await to_both(w).idempotency_key(f"debit-{uuid.uuid4()}").prepare(w.client)
    change_and_publish(producer, message)
    assert await message.submit(w.client, wait=True) == "delivered"
    # Submitted again (a retry): nothing more is delivered.
    assert await message.submit(w.client) == "delivered"
    assert delivered(inbox, message.id) == ["audit", "notify"]
    assert changes(producer, message.id) == ["debit"]


async def test_a_published_message_never_submitted_is_delivered_after_the_check_back(
    world: tuple[World, SqliteLedger, str],
) -> None:
    w, producer, inbox = world
    message = await to_both(w).prepare(w.client)
    change_and_publish(producer, message)
    # The producer "dies" before SubmitMessage: the coordinator asks it.
    await until_state(w.client, message.id, types.TRANSACTION_STATE_DELIVERED)
    assert delivered(inbox, message.id) == ["audit", "notify"]


async def test_a_message_never_published_is_dropped_and_its_late_publish_rolls_back(
    world: tuple[World, SqliteLedger, str],
) -> None:
    w, producer, inbox = world
    message = await to_both(w).prepare(w.client)
    # The local transaction never reaches its publish in time.
    await until_state(w.client, message.id, types.TRANSACTION_STATE_DROPPED)
    with pytest.raises(MessageDropped):
        change_and_publish(producer, message)
    assert changes(producer, message.id) == []
    assert delivered(inbox, message.id) == []

"""The coordinator client against a real coordinator (the Rust test that
runs this suite, tests/tests/python, starts one and sets
CONCORD_TEST_COORDINATOR_URL), with this SDK's scripted participant served
on 127.0.0.1:0, trusting that coordinator's key (the harness sets
CONCORD_TEST_COORDINATOR_PUBLIC_KEY): every answer checked, then what the
participant's database says happened."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from concord_participant import (
    Branch,
    CoordinatorClient,
    CoordinatorError,
    ParticipantService,
    Saga,
    SqliteLedger,
    Step,
    SyncCoordinatorClient,
    serve,
)
from concord_participant._proto.concord.v1 import types_pb2 as types

from scripted import Scripted, Steps, install_sqlite
from signing import coordinator_keys

COORDINATOR = os.environ.get("CONCORD_TEST_COORDINATOR_URL", "")


class World:
    def __init__(self, client: CoordinatorClient, url: str, db: str) -> None:
        self.client = client
        self.url = url
        self.db = db

    def effects(self, txn: str) -> list[str]:
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "SELECT branch || ':' || op FROM effects WHERE txn_id = ? ORDER BY seq", (txn,)
            )
            return [effect for (effect,) in rows]


@pytest.fixture
async def world(tmp_path: pathlib.Path) -> AsyncIterator[World]:
    if not COORDINATOR:
        pytest.skip("CONCORD_TEST_COORDINATOR_URL is not set (cargo test sets it)")
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    serving = await serve(
        ParticipantService(
            SqliteLedger(db), Scripted(), Steps(), trusted_keys=coordinator_keys()
        ),
        "127.0.0.1:0",
        resolver=None,
    )
    async with CoordinatorClient(COORDINATOR, timeout_s=20) as client:
        yield World(client, f"http://127.0.0.1:{serving.port}", db)
    # A phase-2 call may still be on its way: let it finish.
    await serving.stop(1.0)


async def test_a_keyed_transaction_commits_once_and_a_retry_finds_it(world: World) -> None:
    key = f"order-{uuid.uuid4()}"
    branches = [Branch(world.url, b"commit", "b1"), Branch(world.url, b"commit", "b2")]
    begun = await world.client.begin(branches, idempotency_key=key)
    assert begun.created and sorted(begun.branches) == ["b1", "b2"]
    # Answered once every participant acknowledged, not only once decided.
    assert await world.client.commit(begun.transaction_id, wait_for_completion=True) == "committed"
    again = await world.client.begin(branches, idempotency_key=key)
    assert (again.transaction_id, again.created) == (begun.transaction_id, False)
    assert await world.client.outcome(begun.transaction_id) == "committed"
    shown = await world.client.transaction(begun.transaction_id)
    assert shown.state in (types.TRANSACTION_STATE_COMMITTING, types.TRANSACTION_STATE_COMMITTED)
    effects = world.effects(begun.transaction_id)
    assert sorted(effects) == ["b1:commit", "b1:prepare", "b2:commit", "b2:prepare"]


async def test_an_enlisted_branch_commits_and_a_refusal_aborts(world: World) -> None:
    begun = await world.client.begin()
    assert await world.client.enlist(begun.transaction_id, Branch(world.url, b"commit", "late")) == "late"
    assert await world.client.commit(begun.transaction_id, wait_for_completion=True) == "committed"
    assert world.effects(begun.transaction_id) == ["late:prepare", "late:commit"]

    refused = await world.client.begin(
        [Branch(world.url, b"commit", "yes"), Branch(world.url, b"abort", "no")]
    )
    assert await world.client.commit(refused.transaction_id) == "aborted"
    assert await world.client.outcome(refused.transaction_id) == "aborted"
    # The COMMIT voter was told to abort; the refusal kept nothing.
    effects = world.effects(refused.transaction_id)
    assert "yes:commit" not in effects and "no:prepare" not in effects


async def test_a_rolled_back_transaction_is_aborted_and_its_branches_untouched(world: World) -> None:
    begun = await world.client.begin([Branch(world.url, b"commit", "b1")])
    await world.client.rollback(begun.transaction_id, "the customer changed their mind")
    assert await world.client.outcome(begun.transaction_id) == "aborted"
    assert world.effects(begun.transaction_id) == []
    # A Commit after the rollback is answered with the outcome: aborted.
    assert await world.client.commit(begun.transaction_id) == "aborted"
    assert world.effects(begun.transaction_id) == []


async def test_a_saga_completes_or_is_compensated(world: World) -> None:
    def step(name: str, action: bytes) -> Step:
        return Step(name, world.url, action, compensation=b"ok")

    done = await Saga().step(step("hold", b"ok")).step(step("pay", b"ok")).run(world.client)
    assert done.state == "completed", done.reason
    assert world.effects(done.transaction_id) == ["hold:action", "pay:action"]

    key = f"trip-{uuid.uuid4()}"
    turned = await (
        Saga(idempotency_key=key).step(step("hold", b"ok")).step(step("pay", b"refuse")).run(world.client)
    )
    assert turned.state == "compensated", turned.reason
    assert world.effects(turned.transaction_id) == ["hold:action", "hold:compensate"]
    # Submitted again with its key: the first saga, not a second.
    again = await Saga(idempotency_key=key).step(step("hold", b"ok")).step(step("pay", b"refuse")).submit(world.client)
    assert (again.transaction_id, again.created, again.state) == (turned.transaction_id, False, "compensated")


async def test_a_bad_request_is_refused_with_the_field_named(world: World) -> None:
    with pytest.raises(CoordinatorError) as refused:
        await world.client.begin([Branch("not a url", b"commit", "b1")])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "participant" in refused.value.message


async def test_the_blocking_client_does_the_same_from_code_without_a_loop(world: World) -> None:
    import asyncio

    def blocking() -> tuple[str, str, str]:
        with SyncCoordinatorClient(COORDINATOR, timeout_s=20) as client:
            key = f"sync-{uuid.uuid4()}"
            begun = client.begin([Branch(world.url, b"commit", "b1")], idempotency_key=key)
            outcome = client.commit(begun.transaction_id, wait_for_completion=True)
            return begun.transaction_id, outcome, client.outcome(begun.transaction_id)

    # In a thread, as a program without asyncio would call it.
    txn, committed, asked = await asyncio.to_thread(blocking)
    assert (committed, asked) == ("committed", "committed")
    assert world.effects(txn) == ["b1:prepare", "b1:commit"]

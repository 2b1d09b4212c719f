"""The client token (design §12, S3), against a real coordinator that
requires one (the Rust test that runs this suite, tests/tests/python,
starts it and sets CONCORD_TEST_GUARDED_COORDINATOR_URL and
CONCORD_TEST_CLIENT_TOKEN), with this SDK's scripted participant served on
127.0.0.1:0 trusting the coordinators' key: without the token, or with a
wrong one, a Begin and a read are refused UNAUTHENTICATED saying a client
token is needed, and nothing reaches the participant; with it, a
transaction commits there, from the async client, the blocking one and the
routing one, and a watch streams. Against a coordinator played by the test
itself: every call carries the token, the map's reads and retries too, and
a refusal is not retried. A token that could not travel as given is
refused when the client is made."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from concord_participant import (
    Branch,
    CoordinatorClient,
    CoordinatorError,
    ParticipantService,
    Retry,
    SqliteLedger,
    SyncCoordinatorClient,
    serve,
)
from concord_participant._proto.concord.v1 import coordinator_pb2 as cpb
from concord_participant._proto.concord.v1 import coordinator_pb2_grpc as cpb_grpc
from concord_participant._proto.concord.v1 import types_pb2 as types

from scripted import Scripted, install_sqlite
from signing import coordinator_keys

GUARDED = os.environ.get("CONCORD_TEST_GUARDED_COORDINATOR_URL", "")
TOKEN = os.environ.get("CONCORD_TEST_CLIENT_TOKEN", "")


class Participant:
    """The scripted participant, and what its database says happened."""

    def __init__(self, url: str, db: str) -> None:
        self.url = url
        self.db = db

    def effects(self, txn: str | None = None) -> list[str]:
        """`branch:op` of `txn`'s handler runs (of every transaction's
        when None), in order."""
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "SELECT branch || ':' || op FROM effects "
                "WHERE ? IS NULL OR txn_id = ? ORDER BY seq",
                (txn, txn),
            )
            return [effect for (effect,) in rows]


@pytest.fixture
async def participant(tmp_path: pathlib.Path) -> AsyncIterator[Participant]:
    if not GUARDED or not TOKEN:
        pytest.skip(
            "CONCORD_TEST_GUARDED_COORDINATOR_URL and CONCORD_TEST_CLIENT_TOKEN are not set "
            "(cargo test sets them)"
        )
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    serving = await serve(
        ParticipantService(SqliteLedger(db), Scripted(), trusted_keys=coordinator_keys()),
        "127.0.0.1:0",
        resolver=None,
    )
    yield Participant(f"http://127.0.0.1:{serving.port}", db)
    # A phase-2 call may still be on its way: let it finish.
    await serving.stop(1.0)


async def refusal(call: Any) -> CoordinatorError:
    """The error `call` (a coroutine) fails with, which must be
    UNAUTHENTICATED naming the client token."""
    with pytest.raises(CoordinatorError) as refused:
        await call
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED, refused.value
    assert "client token" in refused.value.message, refused.value.message
    return refused.value


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no token", "a wrong token"])
async def test_a_client_without_the_token_is_refused_and_reaches_no_participant(
    participant: Participant, token: str | None
) -> None:
    async with CoordinatorClient(GUARDED, timeout_s=20, token=token) as client:
        refused = await refusal(
            client.begin([Branch(participant.url, b"commit", "b1")], idempotency_key="k")
        )
        # The caller is told what to do about it, in this SDK's terms.
        assert "token" in str(refused)
        if token is None:
            assert "token=" in refused.message
        await refusal(client.transaction(str(uuid.uuid4())))
        await refusal(client.commit(str(uuid.uuid4())))
        # GetOutcome stays open: a participant's resolver asks it tokenless.
        assert await client.outcome(str(uuid.uuid4())) == "aborted"
        # So does the routing client, whose map reads are refused too.
        async with CoordinatorClient.for_groups([GUARDED], timeout_s=20, token=token) as routed:
            await refusal(routed.begin([Branch(participant.url, b"commit", "b1")]))
    assert participant.effects() == []


async def test_with_the_token_a_transaction_commits_at_the_participant(
    participant: Participant,
) -> None:
    async with CoordinatorClient(GUARDED, timeout_s=20, token=TOKEN) as client:
        begun = await client.begin(
            [Branch(participant.url, b"commit", "b1"), Branch(participant.url, b"commit", "b2")],
            idempotency_key=f"token-{uuid.uuid4()}",
        )
        assert begun.created and sorted(begun.branches) == ["b1", "b2"]
        assert await client.commit(begun.transaction_id, wait_for_completion=True) == "committed"
        shown = await client.transaction(begun.transaction_id)
        assert shown.state == types.TRANSACTION_STATE_COMMITTED
        # A stream on the client's own channel carries the token too.
        watch = client._router.stub(GUARDED).WatchTransactions(
            cpb.WatchTransactionsRequest(id_prefix=begun.transaction_id, from_oldest=True),
            timeout=20,
        )
        change = await watch.read()
        watch.cancel()
        assert change.transaction_id == begun.transaction_id
    assert sorted(participant.effects(begun.transaction_id)) == [
        "b1:commit",
        "b1:prepare",
        "b2:commit",
        "b2:prepare",
    ]
    # Routed by the map (one group here: its read answers there is none).
    async with CoordinatorClient.for_groups([GUARDED], timeout_s=20, token=TOKEN) as routed:
        again = await routed.begin([Branch(participant.url, b"commit", "b1")])
        assert await routed.commit(again.transaction_id, wait_for_completion=True) == "committed"
    assert participant.effects(again.transaction_id) == ["b1:prepare", "b1:commit"]


async def test_a_watch_without_the_token_is_refused(participant: Participant) -> None:
    async with CoordinatorClient(GUARDED, timeout_s=20) as client:
        watch = client._router.stub(GUARDED).WatchTransactions(
            cpb.WatchTransactionsRequest(from_oldest=True), timeout=20
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await watch.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client token" in (refused.value.details() or "")


async def test_the_blocking_client_sends_the_token_too(participant: Participant) -> None:
    def blocking() -> tuple[str, str]:
        with SyncCoordinatorClient(GUARDED, timeout_s=20, token=TOKEN) as client:
            begun = client.begin([Branch(participant.url, b"commit", "b1")])
            return begun.transaction_id, client.commit(
                begun.transaction_id, wait_for_completion=True
            )

    # In a thread, as a program without asyncio would call it.
    txn, outcome = await asyncio.to_thread(blocking)
    assert outcome == "committed"
    assert participant.effects(txn) == ["b1:prepare", "b1:commit"]

    def refused() -> CoordinatorError:
        with SyncCoordinatorClient(GUARDED, timeout_s=20) as client:
            with pytest.raises(CoordinatorError) as error:
                client.begin([Branch(participant.url, b"commit", "b1")])
            return error.value

    error = await asyncio.to_thread(refused)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED and "client token" in error.message


BAD_TOKENS = {
    "a newline at its end": "pytoken\n",
    "a newline": "py\ntoken",
    "a leading space": " pytoken",
    "a trailing space": "pytoken ",
    "a tab": "py\ttoken",
    "not ASCII": "pytökén",
    "empty": "",
}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_token_that_cannot_travel_as_given_is_refused_when_the_client_is_made(
    token: str,
) -> None:
    for make in (
        lambda: CoordinatorClient("http://127.0.0.1:1", token=token),
        lambda: CoordinatorClient.for_groups(["http://127.0.0.1:1"], token=token),
        lambda: SyncCoordinatorClient("http://127.0.0.1:1", token=token),
    ):
        with pytest.raises(ValueError, match="client token") as refused:
            make()
        if token.strip():
            # The token is a secret: the refusal does not repeat it.
            assert token.strip() not in str(refused.value)
    # A space inside is printable ASCII, and travels.
    CoordinatorClient("http://127.0.0.1:1", token="py token")


class Recording(cpb_grpc.CoordinatorServicer):
    """A coordinator played by the test: it records the `authorization`
    metadata of each call, and answers Begin by its idempotency key:
    "busy" UNAVAILABLE once then begun, "refuse" UNAUTHENTICATED."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self._busy_once = True

    def _record(self, method: str, context: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.calls.append((method, metadata.get("authorization")))

    async def GetShardMap(  # noqa: N802 (the RPC's name)
        self, request: cpb.GetShardMapRequest, context: Any
    ) -> cpb.GetShardMapResponse:
        self._record("GetShardMap", context)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node has no shard map")
        raise AssertionError("abort raises")

    async def Begin(  # noqa: N802
        self, request: cpb.BeginRequest, context: Any
    ) -> cpb.BeginResponse:
        self._record("Begin", context)
        if request.idempotency_key == "busy" and self._busy_once:
            self._busy_once = False
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the log is busy")
        if request.idempotency_key == "refuse":
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the token sent is none of this coordinator's client tokens",
            )
        return cpb.BeginResponse(transaction_id=str(uuid.uuid4()), created=True)

    async def GetOutcome(  # noqa: N802
        self, request: cpb.GetOutcomeRequest, context: Any
    ) -> cpb.GetOutcomeResponse:
        self._record("GetOutcome", context)
        return cpb.GetOutcomeResponse(outcome=types.OUTCOME_ABORTED)

    async def WatchTransactions(  # noqa: N802
        self, request: cpb.WatchTransactionsRequest, context: Any
    ) -> AsyncIterator[cpb.TransactionChange]:
        self._record("WatchTransactions", context)
        yield cpb.TransactionChange(transaction_id="t1")


@pytest.fixture
async def recording() -> AsyncIterator[tuple[Recording, str]]:
    coordinator = Recording()
    server = grpc.aio.server()
    cpb_grpc.add_CoordinatorServicer_to_server(coordinator, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield coordinator, f"http://127.0.0.1:{port}"
    await server.stop(None)


async def test_every_call_carries_the_token_the_maps_reads_and_retries_too(
    recording: tuple[Recording, str],
) -> None:
    coordinator, url = recording
    quick = Retry(attempts=3, first_s=0.001, cap_s=0.01)
    client = CoordinatorClient.for_groups([url], timeout_s=10, retry=quick, token="s3cret")
    async with client:
        await client.begin(idempotency_key="busy")
        await client.outcome(str(uuid.uuid4()))
        watch = client._router.stub(url).WatchTransactions(
            cpb.WatchTransactionsRequest(), timeout=10
        )
        assert (await watch.read()).transaction_id == "t1"
    methods = [method for method, _ in coordinator.calls]
    assert methods == ["GetShardMap", "Begin", "Begin", "GetOutcome", "WatchTransactions"]
    assert {token for _, token in coordinator.calls} == {"Bearer s3cret"}


async def test_a_refused_token_is_not_retried(recording: tuple[Recording, str]) -> None:
    coordinator, url = recording
    async with CoordinatorClient(url, timeout_s=10, token="s3cret") as client:
        # Keyed: safe to repeat, and retried were it UNAVAILABLE.
        refused = await refusal(client.begin(idempotency_key="refuse"))
    assert coordinator.calls == [("Begin", "Bearer s3cret")]
    assert "--client-token" in refused.message
    # A client made without a token sends none.
    async with CoordinatorClient(url, timeout_s=10) as client:
        await client.begin()
    assert coordinator.calls[-1] == ("Begin", None)

"""The largest call a participant decodes (`ParticipantService(...,
max_call_bytes=...)`, the Rust SDK's `with_max_call_bytes`), against a real
Python participant served on 127.0.0.1:0 and called with the generated
stubs: a call above the limit is refused by gRPC before it is decoded
(RESOURCE_EXHAUSTED) and changes nothing; a limit raised above the 4 MiB
default takes a call of ~5 MB, which is then voted on like any other."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from concord_participant import ParticipantService, SqliteLedger, serve
from concord_participant._proto.concord.v1 import participant_pb2 as pb
from concord_participant._proto.concord.v1 import participant_pb2_grpc as pb_grpc
from concord_participant._proto.concord.v1 import types_pb2 as types
from concord_participant.server import DEFAULT_MAX_CALL_BYTES

from scripted import Scripted, install_sqlite, read
from signing import TEST_KEY

MIB = 1024 * 1024
#: Past the 4 MiB default, under 6 MiB.
LARGE = 5_000_000

Participant = tuple[Any, SqliteLedger]


@pytest.fixture
def participant_with(
    tmp_path: pathlib.Path,
) -> Callable[..., Any]:
    """Serves the scripted participant, trusting the test key, with the
    `max_call_bytes` given, and yields a stub of it and its ledger."""

    @asynccontextmanager
    async def served(max_call_bytes: int = DEFAULT_MAX_CALL_BYTES) -> AsyncIterator[Participant]:
        db = str(tmp_path / f"participant-{uuid.uuid4()}.db")
        install_sqlite(db)
        ledger = SqliteLedger(db)
        service = ParticipantService(
            ledger, Scripted(), trusted_keys=TEST_KEY.trusted(), max_call_bytes=max_call_bytes
        )
        serving = await serve(service, "127.0.0.1:0", resolver=None)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
                yield pb_grpc.ParticipantStub(channel), ledger  # type: ignore[no-untyped-call]
        finally:
            await serving.stop()

    return served


def prepare(txn: str, size: int) -> pb.PrepareRequest:
    return pb.PrepareRequest(
        branch=pb.BranchRef(transaction_id=txn, branch="b1"), payload=b"c" * size
    )


async def prepared(stub: Any, request: pb.PrepareRequest) -> pb.PrepareResponse:
    response: pb.PrepareResponse = await stub.Prepare(
        request, metadata=TEST_KEY.metadata("Prepare", request), timeout=30
    )
    return response


async def test_a_call_above_the_limit_is_refused_before_it_is_decoded(
    participant_with: Callable[..., Any],
) -> None:
    async with participant_with(max_call_bytes=1 * MIB) as (stub, ledger):
        txn = str(uuid.uuid4())
        # Under the limit: served.
        vote = await prepared(stub, prepare(txn, MIB // 2))
        assert vote.vote == types.VOTE_COMMIT
        other = str(uuid.uuid4())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await prepared(stub, prepare(other, MIB + MIB // 2))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        assert read(ledger, "SELECT op FROM concord_ledger WHERE txn_id = ?", (other,)) == []


async def test_the_default_is_4_mib_and_a_raised_limit_takes_a_larger_call(
    participant_with: Callable[..., Any],
) -> None:
    assert DEFAULT_MAX_CALL_BYTES == 4 * MIB
    request = prepare(str(uuid.uuid4()), LARGE)
    async with participant_with() as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await prepared(stub, request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with participant_with(max_call_bytes=6 * MIB) as (stub, ledger):
        # Past the size check; unsigned, it is refused for that alone.
        with pytest.raises(grpc.aio.AioRpcError) as unsigned:
            await stub.Prepare(request, timeout=30)
        assert unsigned.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not signed" in (unsigned.value.details() or "")
        # Signed, it is voted on, its payload kept whole.
        vote = await prepared(stub, request)
        assert vote.vote == types.VOTE_COMMIT
        txn = request.branch.transaction_id
        kept = read(ledger, "SELECT length(payload) FROM concord_ledger WHERE txn_id = ?", (txn,))
        assert kept == [(LARGE,)]


@pytest.mark.parametrize("bytes_", [0, -1, 2**31, True, 1.5, "4MiB"])
def test_a_limit_that_is_not_a_positive_whole_number_of_bytes_is_refused(
    tmp_path: pathlib.Path, bytes_: Any
) -> None:
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    with pytest.raises(ValueError, match="max_call_bytes"):
        ParticipantService(
            SqliteLedger(db), Scripted(), trusted_keys=TEST_KEY.trusted(), max_call_bytes=bytes_
        )

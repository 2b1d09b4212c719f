"""The ledger's anomaly cases shared with the Rust SDK (sdk/ledger-cases.json),
each against a real Python participant served over gRPC on 127.0.0.1:0:
every expected answer, then the handler runs and the ledger rows in the
service's database. Every call is signed with the test run's coordinator
key, as the coordinator signs its own (tests/test_trust.py refuses the
others)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from concord_participant import Ledger, ParticipantService, serve
from concord_participant._proto.concord.v1 import participant_pb2 as pb
from concord_participant._proto.concord.v1 import participant_pb2_grpc as pb_grpc
from concord_participant._proto.concord.v1 import types_pb2 as types

from scripted import Inbox, Scripted, Steps, read
from signing import TEST_KEY, SignedStub

CASES = json.loads(
    (pathlib.Path(__file__).resolve().parents[2] / "ledger-cases.json").read_text()
)["cases"]


class Service:
    """The participant under test, and how to read its database."""

    def __init__(self, ledger: Ledger[Any], stub: Any) -> None:
        self.ledger = ledger
        self.stub = stub

    def effects(self, txn: str) -> list[str]:
        rows = read(self.ledger, "SELECT op FROM effects WHERE txn_id = ? ORDER BY seq", (txn,))
        return [op for (op,) in rows]

    def ledger_rows(self, txn: str) -> list[str]:
        rows = read(self.ledger, "SELECT op, result FROM concord_ledger WHERE txn_id = ?", (txn,))
        return sorted(f"{op}={result}" for op, result in rows)


@pytest.fixture
async def service(ledger: Ledger[Any]) -> AsyncIterator[Service]:
    serving = await serve(
        ParticipantService(ledger, Scripted(), Steps(), Inbox(), trusted_keys=TEST_KEY.trusted()),
        "127.0.0.1:0",
        resolver=None,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
        stub = pb_grpc.ParticipantStub(channel)  # type: ignore[no-untyped-call]
        yield Service(ledger, SignedStub(stub, TEST_KEY))
    await serving.stop()


VOTES = {types.VOTE_COMMIT: "COMMIT", types.VOTE_ABORT: "ABORT", types.VOTE_READ_ONLY: "READ_ONLY"}


async def answer(stub: Any, call: str, txn: str, payload: bytes) -> str:
    """The call's answer, written as the cases write expectations."""
    branch = pb.BranchRef(transaction_id=txn, branch="b1")
    try:
        if call == "prepare":
            vote = await stub.Prepare(pb.PrepareRequest(branch=branch, payload=payload), timeout=10)
            return f"vote {VOTES[vote.vote]}"
        if call == "commit":
            await stub.Commit(pb.CommitBranchRequest(branch=branch, payload=payload), timeout=10)
            return "ok"
        if call == "abort":
            done = await stub.Abort(pb.AbortBranchRequest(branch=branch, payload=payload), timeout=10)
            return "already_committed" if done.already_committed else "not_committed"
        if call == "commit_one_phase":
            done = await stub.CommitOnePhase(
                pb.CommitOnePhaseRequest(branch=branch, payload=payload), timeout=10
            )
            if done.outcome == types.OUTCOME_COMMITTED:
                return "committed read_only" if done.read_only else "committed"
            return "aborted"
        if call == "execute":
            done = await stub.Execute(pb.ExecuteRequest(branch=branch, payload=payload), timeout=10)
            return "succeeded" if done.result == pb.ExecuteResponse.RESULT_SUCCEEDED else "failed"
        if call == "compensate":
            await stub.Compensate(pb.CompensateRequest(branch=branch, payload=payload), timeout=10)
            return "ok"
        if call == "deliver":
            await stub.Deliver(pb.DeliverRequest(branch=branch, payload=payload), timeout=10)
            return "ok"
        if call == "check_message":
            found = await stub.CheckMessage(pb.CheckMessageRequest(transaction_id=txn), timeout=10)
            if found.result == pb.CheckMessageResponse.RESULT_COMMITTED:
                return "committed"
            return "rolled_back"
    except grpc.aio.AioRpcError as error:
        return f"error {error.code().name}"
    raise ValueError(f"unknown call {call!r} in sdk/ledger-cases.json")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_ledger_case(service: Service, case: dict[str, Any]) -> None:
    txn = str(uuid.uuid4())
    for i, step in enumerate(case["calls"]):
        got = await answer(service.stub, step["call"], txn, step["payload"].encode())
        assert got == step["expect"], f"call {i} ({step['call']})"
    assert service.effects(txn) == case["effects"]
    assert service.ledger_rows(txn) == case["ledger"]


async def test_malformed_branches_are_refused_and_change_nothing(service: Service) -> None:
    for request, field in [
        (pb.PrepareRequest(payload=b"commit"), "branch is missing"),
        (pb.PrepareRequest(branch=pb.BranchRef(branch="b1")), "branch.transaction_id"),
        (pb.PrepareRequest(branch=pb.BranchRef(transaction_id="t" * 65, branch="b1")), "branch.transaction_id"),
        (pb.PrepareRequest(branch=pb.BranchRef(transaction_id="t", branch="")), "branch.branch"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.Prepare(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (refused.value.details() or "")
    kept = "SELECT COUNT(*) FROM concord_ledger WHERE txn_id IN ('', 't', ?)"
    assert read(service.ledger, kept, ("t" * 65,)) == [(0,)]


async def test_a_batch_takes_each_call_through_the_ledger_once_and_fails_only_the_bad_ones(
    service: Service,
) -> None:
    txn = str(uuid.uuid4())
    branch = pb.BranchRef(transaction_id=txn, branch="b1")
    prepare = TEST_KEY.batch_call(prepare=pb.PrepareRequest(branch=branch, payload=b"commit"))
    calls = [
        prepare,
        prepare,
        TEST_KEY.batch_call(prepare=pb.PrepareRequest(payload=b"commit")),  # no branch
        pb.BatchCall(),  # no call
        TEST_KEY.batch_call(
            execute=pb.ExecuteRequest(
                branch=pb.BranchRef(transaction_id=txn, branch="s1"), payload=b"ok"
            )
        ),
    ]
    answers = {a.index: a async for a in service.stub.Batch(pb.BatchRequest(calls=calls))}
    assert sorted(answers) == [0, 1, 2, 3, 4]
    for i in (0, 1):
        assert answers[i].code == 0
        assert answers[i].prepare.vote == types.VOTE_COMMIT
    assert answers[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "branch is missing" in answers[2].message
    assert answers[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[4].execute.result == pb.ExecuteResponse.RESULT_SUCCEEDED
    # The duplicated prepare ran its handler once (the entries run at once,
    # so in either order).
    assert sorted(service.effects(txn)) == ["action", "prepare"]


async def test_concurrent_duplicates_take_effect_once(service: Service) -> None:
    """The same Prepare and Commit eight times at once: the ledger's lock
    (BEGIN IMMEDIATE, or the advisory lock on PostgreSQL) lets one run."""
    txn = str(uuid.uuid4())
    branch = pb.BranchRef(transaction_id=txn, branch="b1")
    prepare = pb.PrepareRequest(branch=branch, payload=b"commit")
    votes = await asyncio.gather(*(service.stub.Prepare(prepare, timeout=20) for _ in range(8)))
    assert {v.vote for v in votes} == {types.VOTE_COMMIT}
    commit = pb.CommitBranchRequest(branch=branch, payload=b"commit")
    await asyncio.gather(*(service.stub.Commit(commit, timeout=20) for _ in range(8)))
    assert service.effects(txn) == ["prepare", "commit"]
    assert service.ledger_rows(txn) == ["commit=done", "prepare=commit"]

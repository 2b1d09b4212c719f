"""A participant obeys only its coordinator (DESIGN §12), against a real
Python participant served over gRPC on 127.0.0.1:0 that trusts the test
run's key: a call unsigned, signed for another call, expired, or signed by
a key it does not trust is UNAUTHENTICATED, says why, and leaves the
database as it was (no handler ran, no ledger row, no outbox tombstone). A
Batch signed as a whole is served; one whose signature does not verify has
each entry answered on a signature of its own, and every entry without one
refused. A service told whom to obey by no one is not served; one told to
obey anyone is, with a warning."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from concord_participant import (
    Ledger,
    MessageDropped,
    NoCoordinatorKey,
    ParticipantService,
    PreparedMessage,
    serve,
)
from concord_participant._proto.concord.v1 import participant_pb2 as pb
from concord_participant._proto.concord.v1 import participant_pb2_grpc as pb_grpc
from concord_participant._proto.concord.v1 import types_pb2 as types
from concord_participant.ledger import BranchContext
from concord_participant.server import NOT_CONFIGURED, Refused
from concord_participant.signature import SIGNATURE_HEADER

from scripted import Inbox, Scripted, Steps, effect, read
from signing import TEST_KEY, CoordinatorKey, SignedStub, now_ms


class Participant:
    def __init__(self, ledger: Ledger[Any], stub: Any) -> None:
        self.ledger = ledger
        self.stub = stub

    def rows(self, txn: str) -> list[tuple[Any, ...]]:
        """Everything the participant's database holds about `txn`."""
        ledger = read(self.ledger, "SELECT op, result FROM concord_ledger WHERE txn_id = ?", (txn,))
        effects = read(self.ledger, "SELECT op FROM effects WHERE txn_id = ?", (txn,))
        return ledger + effects


@pytest.fixture
async def participant(ledger: Ledger[Any]) -> AsyncIterator[Participant]:
    service = ParticipantService(
        ledger, Scripted(), Steps(), Inbox(), trusted_keys=TEST_KEY.trusted()
    )
    serving = await serve(service, "127.0.0.1:0", resolver=None)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
        yield Participant(ledger, pb_grpc.ParticipantStub(channel))  # type: ignore[no-untyped-call]
    await serving.stop()


def prepare(txn: str, branch: str = "b1", payload: bytes = b"commit") -> pb.PrepareRequest:
    return pb.PrepareRequest(
        branch=pb.BranchRef(transaction_id=txn, branch=branch), payload=payload
    )


async def refusal(call: Any, request: Any, signature: str | None) -> str:
    """The details of `call`'s refusal, which must be UNAUTHENTICATED."""
    metadata = () if signature is None else ((SIGNATURE_HEADER, signature),)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request, metadata=metadata, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return refused.value.details() or ""


async def test_a_call_not_signed_as_the_coordinator_signs_it_is_refused_and_changes_nothing(
    participant: Participant,
) -> None:
    txn = str(uuid.uuid4())
    request = prepare(txn)
    stranger = CoordinatorKey()
    for signature, says in [
        (None, "the call is not signed"),
        ("", "the call is not signed"),
        ("v1.garbage", "the call's signature is malformed"),
        (TEST_KEY.sign("Prepare", txn, "b2", b"commit"), "does not match it"),  # another branch
        (TEST_KEY.sign("Prepare", txn, "b1", b"abort"), "does not match it"),  # another payload
        (TEST_KEY.sign("Commit", txn, "b1", b"commit"), "does not match it"),  # another method
        (TEST_KEY.sign("Prepare", txn, "b1", b"commit", now_ms() - 1), "expired"),
        (
            stranger.sign("Prepare", txn, "b1", b"commit"),
            f"signed with key {stranger.id}, which this participant does not trust",
        ),
    ]:
        assert says in await refusal(participant.stub.Prepare, request, signature)
    assert participant.rows(txn) == []
    # The same call signed for what it is goes through.
    signed = ((SIGNATURE_HEADER, TEST_KEY.sign_request("Prepare", request)),)
    vote = await participant.stub.Prepare(request, metadata=signed, timeout=10)
    assert vote.vote == types.VOTE_COMMIT
    assert sorted(participant.rows(txn)) == [("prepare",), ("prepare", "commit")]


async def test_every_call_is_checked_before_it_does_anything(participant: Participant) -> None:
    txn = str(uuid.uuid4())
    ref = pb.BranchRef(transaction_id=txn, branch="b1")
    stub = participant.stub
    for call, request in [
        (stub.Commit, pb.CommitBranchRequest(branch=ref, payload=b"commit")),
        (stub.Abort, pb.AbortBranchRequest(branch=ref, payload=b"commit")),
        (stub.CommitOnePhase, pb.CommitOnePhaseRequest(branch=ref, payload=b"commit")),
        (stub.Execute, pb.ExecuteRequest(branch=ref, payload=b"ok")),
        (stub.Compensate, pb.CompensateRequest(branch=ref, payload=b"ok")),
        (stub.Deliver, pb.DeliverRequest(branch=ref, payload=b"note")),
    ]:
        # Signed, but as a Prepare of the same branch and payload.
        forged = TEST_KEY.sign_request("Prepare", request)
        assert "does not match it" in await refusal(call, request, forged)
        assert "not signed" in await refusal(call, request, None)
    # An Abort or Compensate obeyed would have left a tombstone.
    assert participant.rows(txn) == []


async def test_a_check_back_from_a_stranger_leaves_no_tombstone(participant: Participant) -> None:
    message = PreparedMessage(str(uuid.uuid4()))
    request = pb.CheckMessageRequest(transaction_id=message.id)
    forged = CoordinatorKey().sign_request("CheckMessage", request)
    assert "does not trust" in await refusal(participant.stub.CheckMessage, request, forged)
    assert "not signed" in await refusal(participant.stub.CheckMessage, request, None)
    # Obeyed, it would have dropped the message: the publish would fail.
    with participant.ledger.transaction() as tx:
        effect(tx, BranchContext(message.id, "business"), "debit")
        message.publish_with(participant.ledger, tx)
    signed = ((SIGNATURE_HEADER, TEST_KEY.sign_request("CheckMessage", request)),)
    found = await participant.stub.CheckMessage(request, metadata=signed, timeout=10)
    assert found.result == pb.CheckMessageResponse.RESULT_COMMITTED


async def test_a_signed_check_back_that_comes_first_drops_the_message(
    participant: Participant,
) -> None:
    message = PreparedMessage(str(uuid.uuid4()))
    request = pb.CheckMessageRequest(transaction_id=message.id)
    signed = ((SIGNATURE_HEADER, TEST_KEY.sign_request("CheckMessage", request)),)
    found = await participant.stub.CheckMessage(request, metadata=signed, timeout=10)
    assert found.result == pb.CheckMessageResponse.RESULT_ROLLED_BACK
    with pytest.raises(MessageDropped):
        with participant.ledger.transaction() as tx:
            message.publish_with(participant.ledger, tx)


async def test_a_batch_unsigned_as_a_whole_answers_each_entry_on_its_own_signature(
    participant: Participant,
) -> None:
    txn = str(uuid.uuid4())
    good = prepare(txn, "good")
    forged = prepare(txn, "forged")
    calls = [
        TEST_KEY.batch_call(prepare=good),
        # The good entry's signature on another branch.
        pb.BatchCall(prepare=forged, signature=TEST_KEY.sign_request("Prepare", good)),
        pb.BatchCall(prepare=prepare(txn, "unsigned")),
        TEST_KEY.batch_call(
            execute=pb.ExecuteRequest(
                branch=pb.BranchRef(transaction_id=txn, branch="s1"), payload=b"ok"
            )
        ),
    ]
    answers = {a.index: a async for a in participant.stub.Batch(pb.BatchRequest(calls=calls))}
    assert sorted(answers) == [0, 1, 2, 3]
    assert (answers[0].code, answers[0].prepare.vote) == (0, types.VOTE_COMMIT)
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert answers[1].code == unauthenticated == 16
    assert "does not match it" in answers[1].message
    assert answers[2].code == unauthenticated
    assert "not signed" in answers[2].message
    assert answers[3].execute.result == pb.ExecuteResponse.RESULT_SUCCEEDED
    ran = read(participant.ledger, "SELECT branch, op FROM effects WHERE txn_id = ?", (txn,))
    assert sorted(ran) == [("good", "prepare"), ("s1", "action")]
    kept = read(participant.ledger, "SELECT DISTINCT branch FROM concord_ledger WHERE txn_id = ?", (txn,))
    assert sorted(kept) == [("good",), ("s1",)]


def unsigned_batch(txn: str) -> list[pb.BatchCall]:
    """Three entries, none signed on its own: two prepares and a step."""
    step = pb.ExecuteRequest(branch=pb.BranchRef(transaction_id=txn, branch="s1"), payload=b"ok")
    return [
        pb.BatchCall(prepare=prepare(txn, "b1")),
        pb.BatchCall(prepare=prepare(txn, "b2")),
        pb.BatchCall(execute=step),
    ]


async def batch_answers(
    participant: Participant, calls: list[pb.BatchCall], signature: str | None
) -> dict[int, pb.BatchAnswer]:
    metadata = () if signature is None else ((SIGNATURE_HEADER, signature),)
    request = pb.BatchRequest(calls=calls)
    answers = {
        a.index: a async for a in participant.stub.Batch(request, metadata=metadata, timeout=10)
    }
    assert sorted(answers) == list(range(len(calls)))
    return answers


async def test_a_batch_signed_as_a_whole_is_served(participant: Participant) -> None:
    txn = str(uuid.uuid4())
    calls = unsigned_batch(txn)
    # Once the batch's signature verifies, no entry's own is looked at.
    calls[1].signature = "v1.garbage"
    answers = await batch_answers(participant, calls, TEST_KEY.sign_batch(calls))
    assert [a.code for a in answers.values()] == [0, 0, 0]
    assert answers[0].prepare.vote == answers[1].prepare.vote == types.VOTE_COMMIT
    assert answers[2].execute.result == pb.ExecuteResponse.RESULT_SUCCEEDED
    ran = read(participant.ledger, "SELECT branch, op FROM effects WHERE txn_id = ?", (txn,))
    assert sorted(ran) == [("b1", "prepare"), ("b2", "prepare"), ("s1", "action")]
    # As the coordinator sends it: signed as a whole (the helper's default).
    other = str(uuid.uuid4())
    stub = SignedStub(participant.stub, TEST_KEY)
    request = pb.BatchRequest(calls=unsigned_batch(other))
    answers = {a.index: a async for a in stub.Batch(request, timeout=10)}
    assert [answers[i].code for i in range(3)] == [0, 0, 0]
    assert len(participant.rows(other)) == 6  # three ledger rows, three effects


def reordered(calls: list[pb.BatchCall]) -> list[pb.BatchCall]:
    return [calls[1], calls[0], calls[2]]


def payload_changed(calls: list[pb.BatchCall]) -> list[pb.BatchCall]:
    changed = pb.BatchCall()
    changed.CopyFrom(calls[0])
    changed.prepare.payload = b"abort"
    return [changed, *calls[1:]]


@pytest.mark.parametrize(
    ("signed", "says"),
    [
        (lambda calls: TEST_KEY.sign_batch(reordered(calls)), "does not match it"),
        (lambda calls: TEST_KEY.sign_batch(payload_changed(calls)), "does not match it"),
        (lambda calls: TEST_KEY.sign_batch(calls[:2]), "does not match it"),
        (lambda calls: TEST_KEY.sign_request("Prepare", calls[0].prepare), "does not match it"),
        (lambda calls: TEST_KEY.sign_batch(calls, now_ms() - 1), "expired"),
        (lambda calls: CoordinatorKey().sign_batch(calls), "which this participant does not trust"),
        (lambda calls: None, "not signed"),
    ],
    ids=[
        "entries reordered",
        "a payload changed",
        "an entry dropped",
        "an entry's signature",
        "expired",
        "a stranger's key",
        "none",
    ],
)
async def test_a_batch_signed_for_other_entries_has_every_unsigned_entry_refused(
    participant: Participant,
    caplog: pytest.LogCaptureFixture,
    signed: Callable[[list[pb.BatchCall]], str | None],
    says: str,
) -> None:
    txn = str(uuid.uuid4())
    calls = unsigned_batch(txn)
    signature = signed(calls)
    with caplog.at_level(logging.WARNING, logger="concord_participant.server"):
        answers = await batch_answers(participant, calls, signature)
    for answer in answers.values():
        assert answer.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert says in answer.message
        assert answer.WhichOneof("answer") is None
    assert participant.rows(txn) == []
    # A forged batch is worth one warning, not one an entry; a batch sent
    # unsigned (entries signed on their own) none.
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if signature is None:
        assert warned == []
    else:
        assert len(warned) == 1 and "Batch of 3 calls" in warned[0], warned


async def test_an_entry_signed_on_its_own_is_served_in_a_batch_whose_signature_is_bad(
    participant: Participant,
) -> None:
    txn = str(uuid.uuid4())
    signed = prepare(txn, "signed")
    calls = [
        TEST_KEY.batch_call(prepare=signed),
        pb.BatchCall(prepare=prepare(txn, "unsigned")),
        # The signed entry's signature on another branch.
        pb.BatchCall(prepare=prepare(txn, "forged"), signature=TEST_KEY.sign_request("Prepare", signed)),
    ]
    # The batch's own signature is genuine but expired: an entry without a
    # signature of its own is refused for that, one with a bad one for its own.
    answers = await batch_answers(participant, calls, TEST_KEY.sign_batch(calls, now_ms() - 1))
    assert (answers[0].code, answers[0].prepare.vote) == (0, types.VOTE_COMMIT)
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert answers[1].code == unauthenticated
    assert "expired" in answers[1].message
    assert answers[2].code == unauthenticated
    assert "does not match it" in answers[2].message
    kept = read(participant.ledger, "SELECT DISTINCT branch FROM concord_ledger WHERE txn_id = ?", (txn,))
    assert kept == [("signed",)]
    ran = read(participant.ledger, "SELECT branch, op FROM effects WHERE txn_id = ?", (txn,))
    assert ran == [("signed", "prepare")]


async def test_a_service_told_whom_to_obey_by_no_one_is_not_served(ledger: Ledger[Any]) -> None:
    service = ParticipantService(ledger, Scripted())
    with pytest.raises(NoCoordinatorKey) as refused:
        await serve(service, "127.0.0.1:0", resolver=None)
    assert "trusted_keys" in str(refused.value) and "accept_unsigned=True" in str(refused.value)
    # Served some other way, it still obeys no one.
    with pytest.raises(Refused) as obeyed:
        service.check_caller("Prepare", "t1", "b1", b"", None)
    assert obeyed.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert obeyed.value.message == NOT_CONFIGURED
    with pytest.raises(ValueError, match="not both"):
        ParticipantService(ledger, trusted_keys=TEST_KEY.trusted(), accept_unsigned=True)


async def test_a_service_told_to_obey_anyone_serves_unsigned_calls_and_warns(
    ledger: Ledger[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="concord_participant.server"):
        serving = await serve(
            ParticipantService(ledger, Scripted(), accept_unsigned=True),
            "127.0.0.1:0",
            resolver=None,
        )
    try:
        assert any(
            record.levelno == logging.WARNING and "obeys unsigned calls" in record.getMessage()
            for record in caplog.records
        ), caplog.text
        txn = str(uuid.uuid4())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
            stub = pb_grpc.ParticipantStub(channel)  # type: ignore[no-untyped-call]
            vote = await stub.Prepare(prepare(txn), timeout=10)
            # A Batch unsigned, as a whole and entry by entry, too.
            other = str(uuid.uuid4())
            calls = [pb.BatchCall(prepare=prepare(other, b)) for b in ("b1", "b2")]
            request = pb.BatchRequest(calls=calls)
            answers = [a async for a in stub.Batch(request, timeout=10)]
        assert vote.vote == types.VOTE_COMMIT
        assert read(ledger, "SELECT op FROM effects WHERE txn_id = ?", (txn,)) == [("prepare",)]
        assert [a.code for a in answers] == [0, 0]
        ran = read(ledger, "SELECT branch, op FROM effects WHERE txn_id = ?", (other,))
        assert sorted(ran) == [("b1", "prepare"), ("b2", "prepare")]
    finally:
        await serving.stop()

"""The `concord.v1.Participant` gRPC service (grpc.aio) over the ledger:
implement `TwoPhaseParticipant`, `SagaStep` and/or `MessageDestination`
against your database and serve them with `ParticipantService` (`serve`
starts the server and the in-doubt resolver together). Every service
answers check-backs about the messages it produced from its outbox.

Each call is checked (a missing or malformed branch is INVALID_ARGUMENT and
changes nothing), then taken through the ledger-guarded path
(`concord_participant.guarded`) on a worker thread, in a local transaction
of its own. A handler's `ParticipantError` is answered with its status
(UNAVAILABLE for a passing failure: the coordinator retries); a database
error is UNAVAILABLE. `Batch` carries many calls in one RPC: each entry
takes the same path as the single call, concurrently, and is answered as
soon as it is done, with its own status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from ._proto.concord.v1 import participant_pb2 as pb
from ._proto.concord.v1 import participant_pb2_grpc as pb_grpc
from ._proto.concord.v1 import types_pb2 as types
from .guarded import Guarded
from .ledger import (
    BranchContext,
    Ledger,
    MessageDestination,
    ParticipantError,
    SagaStep,
    TwoPhaseParticipant,
    Tx,
)
from .resolver import Resolver, ResolverConfig

T = TypeVar("T")

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

#: Longest transaction id and branch name accepted, as the Rust SDK does.
MAX_TRANSACTION_ID = 64
MAX_BRANCH = 128
#: Longest message id a check-back may name, as the Rust SDK accepts.
MAX_MESSAGE_ID = 128
#: Most calls one Batch may carry (participant.proto).
MAX_BATCH_CALLS = 1024

_CODES = {
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
}

_VOTES = {
    "commit": types.VOTE_COMMIT,
    "read_only": types.VOTE_READ_ONLY,
    "abort": types.VOTE_ABORT,
}

Branched = (
    pb.PrepareRequest
    | pb.CommitBranchRequest
    | pb.AbortBranchRequest
    | pb.CommitOnePhaseRequest
    | pb.ExecuteRequest
    | pb.CompensateRequest
    | pb.DeliverRequest
)


class Refused(Exception):
    """A call answered with an error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def branch_context(request: Branched, one_phase: bool = False) -> BranchContext:
    """The branch a call is about, checked."""
    if not request.HasField("branch"):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "branch is missing")
    ref = request.branch
    if not 1 <= len(ref.transaction_id.encode()) <= MAX_TRANSACTION_ID:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"branch.transaction_id must be 1 to {MAX_TRANSACTION_ID} bytes",
        )
    if not 1 <= len(ref.branch.encode()) <= MAX_BRANCH:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"branch.branch must be 1 to {MAX_BRANCH} bytes"
        )
    return BranchContext(
        transaction_id=ref.transaction_id,
        branch=ref.branch,
        coordinator=ref.coordinator,
        one_phase=one_phase,
    )


class ParticipantService(pb_grpc.ParticipantServicer, Generic[Tx]):
    """The service: give it the ledger (`SqliteLedger` or
    `PostgresLedger`) and your handlers, which get that database's
    connection as their local transaction. With `messages` it receives
    transactional messages (`Deliver`); it answers the coordinator's
    check-backs about messages it produced (`CheckMessage`, from its
    outbox) whatever it serves."""

    def __init__(
        self,
        ledger: Ledger[Tx],
        two_phase: TwoPhaseParticipant[Tx] | None = None,
        steps: SagaStep[Tx] | None = None,
        messages: MessageDestination[Tx] | None = None,
    ) -> None:
        ledger.install()
        self.ledger = ledger
        self.guarded = Guarded(ledger, two_phase, steps, messages)

    @staticmethod
    async def _run(call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except ParticipantError as error:
            raise Refused(_CODES.get(error.code, grpc.StatusCode.UNAVAILABLE), str(error)) from error
        except Exception as error:
            # The database failed (sqlite3.Error, psycopg.Error), or the
            # handler did unexpectedly: a passing failure as far as the
            # coordinator can tell, which it retries (or counts as an ABORT
            # vote); nothing of the call was kept.
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"{type(error).__name__}: {error}") from error

    # The answer to each call, shared by the single RPCs and Batch entries.

    async def prepare_answer(self, request: pb.PrepareRequest) -> pb.PrepareResponse:
        branch = branch_context(request)
        vote = await self._run(lambda: self.guarded.prepare(branch, request.payload))
        return pb.PrepareResponse(vote=_VOTES[vote.kind], reason=vote.reason)

    async def commit_answer(self, request: pb.CommitBranchRequest) -> pb.CommitBranchResponse:
        branch = branch_context(request)
        await self._run(lambda: self.guarded.commit(branch, request.payload))
        return pb.CommitBranchResponse()

    async def abort_answer(self, request: pb.AbortBranchRequest) -> pb.AbortBranchResponse:
        branch = branch_context(request)
        committed = await self._run(lambda: self.guarded.abort(branch, request.payload))
        return pb.AbortBranchResponse(already_committed=committed)

    async def commit_one_phase_answer(
        self, request: pb.CommitOnePhaseRequest
    ) -> pb.CommitOnePhaseResponse:
        branch = branch_context(request, one_phase=True)
        done = await self._run(lambda: self.guarded.commit_one_phase(branch, request.payload))
        return pb.CommitOnePhaseResponse(
            outcome=types.OUTCOME_COMMITTED if done.committed else types.OUTCOME_ABORTED,
            reason=done.reason,
            read_only=done.read_only,
        )

    async def execute_answer(self, request: pb.ExecuteRequest) -> pb.ExecuteResponse:
        step = branch_context(request)
        result = await self._run(lambda: self.guarded.execute(step, request.payload))
        return pb.ExecuteResponse(
            result=pb.ExecuteResponse.RESULT_SUCCEEDED
            if result.done
            else pb.ExecuteResponse.RESULT_FAILED,
            reason=result.reason,
        )

    async def compensate_answer(self, request: pb.CompensateRequest) -> pb.CompensateResponse:
        step = branch_context(request)
        await self._run(lambda: self.guarded.compensate(step, request.payload))
        return pb.CompensateResponse()

    async def deliver_answer(self, request: pb.DeliverRequest) -> pb.DeliverResponse:
        message = branch_context(request)
        await self._run(lambda: self.guarded.deliver(message, request.payload))
        return pb.DeliverResponse()

    async def check_message_answer(
        self, request: pb.CheckMessageRequest
    ) -> pb.CheckMessageResponse:
        message_id = request.transaction_id
        if not 1 <= len(message_id.encode()) <= MAX_MESSAGE_ID:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"transaction_id must be the message's id (1 to {MAX_MESSAGE_ID} bytes)",
            )
        found = await self._run(lambda: self.guarded.check_message(message_id))
        return pb.CheckMessageResponse(
            result=pb.CheckMessageResponse.RESULT_COMMITTED
            if found == "committed"
            else pb.CheckMessageResponse.RESULT_ROLLED_BACK
        )

    # The single RPCs.

    async def Prepare(  # noqa: N802 (the RPC's name)
        self, request: pb.PrepareRequest, context: Context
    ) -> pb.PrepareResponse:
        return await _single(context, self.prepare_answer(request))

    async def Commit(  # noqa: N802
        self, request: pb.CommitBranchRequest, context: Context
    ) -> pb.CommitBranchResponse:
        return await _single(context, self.commit_answer(request))

    async def Abort(  # noqa: N802
        self, request: pb.AbortBranchRequest, context: Context
    ) -> pb.AbortBranchResponse:
        return await _single(context, self.abort_answer(request))

    async def CommitOnePhase(  # noqa: N802
        self, request: pb.CommitOnePhaseRequest, context: Context
    ) -> pb.CommitOnePhaseResponse:
        return await _single(context, self.commit_one_phase_answer(request))

    async def Execute(  # noqa: N802
        self, request: pb.ExecuteRequest, context: Context
    ) -> pb.ExecuteResponse:
        return await _single(context, self.execute_answer(request))

    async def Compensate(  # noqa: N802
        self, request: pb.CompensateRequest, context: Context
    ) -> pb.CompensateResponse:
        return await _single(context, self.compensate_answer(request))

    async def Deliver(  # noqa: N802
        self, request: pb.DeliverRequest, context: Context
    ) -> pb.DeliverResponse:
        return await _single(context, self.deliver_answer(request))

    async def CheckMessage(  # noqa: N802
        self, request: pb.CheckMessageRequest, context: Context
    ) -> pb.CheckMessageResponse:
        return await _single(context, self.check_message_answer(request))

    async def Batch(  # noqa: N802
        self, request: pb.BatchRequest, context: Context
    ) -> AsyncIterator[pb.BatchAnswer]:
        """Every call of the batch at once, each answered when done."""
        if len(request.calls) > MAX_BATCH_CALLS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"calls holds {len(request.calls)}; at most {MAX_BATCH_CALLS} a batch",
            )
        tasks = [
            asyncio.ensure_future(self._entry(index, call))
            for index, call in enumerate(request.calls)
        ]
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for task in tasks:
                task.cancel()

    async def _entry(self, index: int, call: pb.BatchCall) -> pb.BatchAnswer:
        kind = call.WhichOneof("call")
        answer = pb.BatchAnswer(index=index)
        try:
            work = self._dispatch(call, kind)
            timeout = call.timeout_ms / 1000 if call.timeout_ms else None
            response = await asyncio.wait_for(work, timeout)
        except Refused as refused:
            answer.code = refused.code.value[0]
            answer.message = refused.message
            return answer
        except asyncio.TimeoutError:
            answer.code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            answer.message = f"no answer within the entry's {call.timeout_ms} ms"
            return answer
        getattr(answer, str(kind)).CopyFrom(response)
        return answer

    def _dispatch(self, call: pb.BatchCall, kind: str | None) -> Awaitable[Message]:
        if kind == "prepare":
            return self.prepare_answer(call.prepare)
        if kind == "commit":
            return self.commit_answer(call.commit)
        if kind == "abort":
            return self.abort_answer(call.abort)
        if kind == "commit_one_phase":
            return self.commit_one_phase_answer(call.commit_one_phase)
        if kind == "execute":
            return self.execute_answer(call.execute)
        if kind == "compensate":
            return self.compensate_answer(call.compensate)
        if kind == "deliver":
            return self.deliver_answer(call.deliver)
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a batch entry names no call")


async def _single(context: Context, answer: Awaitable[T]) -> T:
    try:
        return await answer
    except Refused as refused:
        await context.abort(refused.code, refused.message)
        raise


class Serving:
    """A running participant: its gRPC server and its in-doubt resolver."""

    def __init__(self, server: grpc.aio.Server, port: int, resolver: asyncio.Task[None] | None):
        self.server = server
        self.port = port
        self._resolver = resolver

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops the resolver, then the server (after `grace_s` for the
        calls in progress)."""
        if self._resolver is not None:
            self._resolver.cancel()
            try:
                await self._resolver
            except asyncio.CancelledError:
                pass
        await self.server.stop(grace_s)


async def serve(
    service: ParticipantService[Any],
    listen: str,
    resolver: ResolverConfig | None = ResolverConfig(),
) -> Serving:
    """Serves `service` on `listen` (`host:port`; port 0 picks one) and,
    unless `resolver` is None, runs the in-doubt resolver beside it: a
    branch prepared before this start is asked about at once (phase 2 may
    have come and gone while the process was down)."""
    server = grpc.aio.server()
    pb_grpc.add_ParticipantServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(listen)
    await server.start()
    task = None
    if resolver is not None:
        task = asyncio.ensure_future(Resolver(service.ledger, service.guarded, resolver).run())
    return Serving(server, port, task)

"""The `concord.v1.Participant` gRPC service (grpc.aio) over the ledger:
implement `TwoPhaseParticipant`, `SagaStep` and/or `MessageDestination`
against your database and serve them with `ParticipantService` (`serve`
starts the server and the in-doubt resolver together). Every service
answers check-backs about the messages it produced from its outbox.

A participant obeys only its coordinator: each call must carry a signature
by a coordinator key it trusts (`trusted_keys`; `concord_participant.
signature`), or the service must have been told by name to obey anyone who
reaches its port (`accept_unsigned=True`, warned at every start). `serve`
refuses to start a service told neither.

Each call is checked (a missing or malformed branch is INVALID_ARGUMENT and
changes nothing), its signature verified (UNAUTHENTICATED, saying why, and
nothing done), then taken through the ledger-guarded path
(`concord_participant.guarded`) on a worker thread, in a local transaction
of its own. A handler's `ParticipantError` is answered with its status
(UNAVAILABLE for a passing failure: the coordinator retries); a database
error is UNAVAILABLE. `Batch` carries many calls in one RPC: each entry
takes the same path as the single call, concurrently, and is answered as
soon as it is done, with its own status. A Batch is signed once, as a whole
(its `concord-signature` metadata, checked once before any entry's work):
when that signature verifies, every entry is obeyed; when it does not, each
entry stands on a signature of its own (`BatchCall.signature`), and an
entry without one is refused UNAUTHENTICATED, saying why the batch's was,
while the others are served. A refused signature other than a missing one
is warned of, at most once per reason every 10 s with a count
(`concord_participant.refusals`). `serve(..., tls=ServerTls(...))` serves
over TLS (mutual TLS with a client CA). A call larger than the service's
`max_call_bytes` (4 MiB unless told) is refused by gRPC before it is
decoded (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
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
from .refusals import Refusals
from .resolver import Resolver, ResolverConfig
from .signature import SIGNATURE_HEADER, SignatureError, TrustedKeys
from .tls import ServerTls

T = TypeVar("T")

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

#: Longest transaction id and branch name accepted, as the Rust SDK does.
MAX_TRANSACTION_ID = 64
MAX_BRANCH = 128
#: Longest message id a check-back may name, as the Rust SDK accepts.
MAX_MESSAGE_ID = 128
#: Most calls one Batch may carry (participant.proto).
MAX_BATCH_CALLS = 1024
#: The largest call a participant decodes unless told otherwise: gRPC's
#: usual 4 MiB, as the Rust SDK's DEFAULT_MAX_CALL_BYTES. The coordinator
#: keeps its batches under it; a single call larger than this (a payload
#: near a `--max-payload-bytes` set above 4 MiB) needs `max_call_bytes`.
DEFAULT_MAX_CALL_BYTES = 4 * 1024 * 1024
#: The most gRPC's message-length options can hold (a C int).
_MAX_GRPC_LENGTH = 2**31 - 1

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


#: Why a service told neither whose calls to obey nor to obey anyone refuses
#: every call and will not be served: what to do about it.
NOT_CONFIGURED = (
    "this participant trusts no coordinator key: give it the coordinator's public key "
    "(ParticipantService(..., trusted_keys=TrustedKeys.from_file(path)); `concord keys "
    "public` prints it), or accept unsigned calls explicitly (ParticipantService(..., "
    "accept_unsigned=True))"
)


class NoCoordinatorKey(ValueError):
    """`serve` was given a service told neither whose calls to obey
    (`trusted_keys`) nor to obey anyone (`accept_unsigned=True`)."""

    def __init__(self) -> None:
        super().__init__(NOT_CONFIGURED)


class BatchSigned:
    """How a Batch entry's caller is known when it is not by a signature of
    its own: by its Batch's signature, checked once for every entry.
    `refusal` is None when that signature verified (the entry is obeyed),
    else why it did not (the entry, carrying no signature of its own, is
    refused for it)."""

    __slots__ = ("refusal",)

    def __init__(self, refusal: SignatureError | None) -> None:
        self.refusal = refusal

    def __repr__(self) -> str:
        return f"BatchSigned({'verified' if self.refusal is None else self.refusal.kind})"


#: What a call's caller is known by: the signature it carries (the
#: metadata's, or a Batch entry's own; None or "" when there is none), or,
#: for a Batch entry, its Batch's (`BatchSigned`).
Caller = str | None | BatchSigned


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
    outbox) whatever it serves.

    It obeys only calls signed by one of `trusted_keys` (the public keys of
    its deployment's coordinators: `TrustedKeys.from_file(path)`), or, with
    `accept_unsigned=True`, anyone who reaches its port: for a participant
    only its coordinator can reach (a private network, or mutual TLS).
    Told neither, it refuses every call, and `serve` will not start it.

    `max_call_bytes` is the largest call `serve` lets gRPC decode (4 MiB,
    `DEFAULT_MAX_CALL_BYTES`): set it to the coordinator's
    `--max-payload-bytes` and 64 KiB more when that is above 4 MiB, or such
    a call is refused before it is looked at (RESOURCE_EXHAUSTED), a
    prepare counting as an ABORT vote. A larger limit lets anyone who
    reaches the port make the service read that much before the call's
    signature is checked."""

    def __init__(
        self,
        ledger: Ledger[Tx],
        two_phase: TwoPhaseParticipant[Tx] | None = None,
        steps: SagaStep[Tx] | None = None,
        messages: MessageDestination[Tx] | None = None,
        trusted_keys: TrustedKeys | None = None,
        accept_unsigned: bool = False,
        max_call_bytes: int = DEFAULT_MAX_CALL_BYTES,
    ) -> None:
        if trusted_keys is not None and accept_unsigned:
            # Checking signatures while obeying unsigned calls would only
            # make a forger leave the signature off.
            raise ValueError("give trusted_keys or accept_unsigned=True, not both")
        if (
            isinstance(max_call_bytes, bool)
            or not isinstance(max_call_bytes, int)
            or not 0 < max_call_bytes <= _MAX_GRPC_LENGTH
        ):
            raise ValueError(
                f"max_call_bytes must be a whole number of bytes from 1 to {_MAX_GRPC_LENGTH}, "
                f"not {max_call_bytes!r}"
            )
        ledger.install()
        self.ledger = ledger
        self.guarded = Guarded(ledger, two_phase, steps, messages)
        self.trusted_keys = trusted_keys
        self.accept_unsigned = accept_unsigned
        self.max_call_bytes = max_call_bytes
        self.refusals = Refusals(log)

    def check_caller(
        self,
        method: str,
        transaction_id: str,
        branch: str,
        payload: bytes,
        signature: Caller,
    ) -> None:
        """Whether the call may be obeyed (DESIGN §12): Refused with
        UNAUTHENTICATED, saying why, when it may not. Checked before any
        handler or ledger work. A Batch entry known by its Batch's signature
        (`BatchSigned`) is obeyed when that verified, and refused with its
        refusal's message otherwise."""
        if self.accept_unsigned:
            return
        if self.trusted_keys is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, NOT_CONFIGURED)
        if isinstance(signature, BatchSigned):
            # Checked (and any forgery logged) once for the whole Batch.
            if signature.refusal is None:
                return
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, signature.refusal.message)
        try:
            self.trusted_keys.verify(method, transaction_id, branch, payload, signature)
        except SignatureError as error:
            if error.kind != "missing":
                # A call that claims to be the coordinator's and is not:
                # worth an operator's eye, once in a while.
                self.refusals.refused(
                    error.kind,
                    f"refused {method} on branch {branch!r} of {transaction_id!r}: {error}",
                )
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, error.message) from error

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
            # vote); nothing of the call was kept. Logged here with its
            # traceback: the coordinator sees only the message, and a
            # handler's bug (a missing table, a typo) must not be silent
            # where it happened.
            log.warning("a call failed; nothing of it was kept: %s: %s",
                        type(error).__name__, error, exc_info=True)
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"{type(error).__name__}: {error}") from error

    def batch_caller(
        self, calls: Sequence[pb.BatchCall], signature: str | None
    ) -> BatchSigned | None:
        """What a Batch's own signature (its metadata's) says of its
        entries, checked once for them all: None when there is nothing to
        check (a service that obeys anyone, or trusts no key: each entry is
        answered as a call alone would be)."""
        if self.accept_unsigned or self.trusted_keys is None:
            return None
        try:
            self.trusted_keys.verify_batch(calls, signature)
        except SignatureError as error:
            if error.kind != "missing":
                self.refusals.refused(
                    error.kind, f"refused the signature of a Batch of {len(calls)} calls: {error}"
                )
            return BatchSigned(error)
        return BatchSigned(None)

    # The answer to each call, shared by the single RPCs and Batch entries:
    # each given the call's caller (the metadata's signature, the entry's
    # own, or its Batch's).

    def _trusted(
        self, method: str, request: Branched, signature: Caller, one_phase: bool = False
    ) -> BranchContext:
        """The call's branch, checked, once its signature is: the branch's
        shape first (as the Rust SDK does: nothing is done either way),
        then the caller."""
        branch = branch_context(request, one_phase)
        self.check_caller(
            method, branch.transaction_id, branch.branch, request.payload, signature
        )
        return branch

    async def prepare_answer(
        self, request: pb.PrepareRequest, signature: Caller
    ) -> pb.PrepareResponse:
        branch = self._trusted("Prepare", request, signature)
        vote = await self._run(lambda: self.guarded.prepare(branch, request.payload))
        return pb.PrepareResponse(vote=_VOTES[vote.kind], reason=vote.reason)

    async def commit_answer(
        self, request: pb.CommitBranchRequest, signature: Caller
    ) -> pb.CommitBranchResponse:
        branch = self._trusted("Commit", request, signature)
        await self._run(lambda: self.guarded.commit(branch, request.payload))
        return pb.CommitBranchResponse()

    async def abort_answer(
        self, request: pb.AbortBranchRequest, signature: Caller
    ) -> pb.AbortBranchResponse:
        branch = self._trusted("Abort", request, signature)
        committed = await self._run(lambda: self.guarded.abort(branch, request.payload))
        return pb.AbortBranchResponse(already_committed=committed)

    async def commit_one_phase_answer(
        self, request: pb.CommitOnePhaseRequest, signature: Caller
    ) -> pb.CommitOnePhaseResponse:
        branch = self._trusted("CommitOnePhase", request, signature, one_phase=True)
        done = await self._run(lambda: self.guarded.commit_one_phase(branch, request.payload))
        return pb.CommitOnePhaseResponse(
            outcome=types.OUTCOME_COMMITTED if done.committed else types.OUTCOME_ABORTED,
            reason=done.reason,
            read_only=done.read_only,
        )

    async def execute_answer(
        self, request: pb.ExecuteRequest, signature: Caller
    ) -> pb.ExecuteResponse:
        step = self._trusted("Execute", request, signature)
        result = await self._run(lambda: self.guarded.execute(step, request.payload))
        return pb.ExecuteResponse(
            result=pb.ExecuteResponse.RESULT_SUCCEEDED
            if result.done
            else pb.ExecuteResponse.RESULT_FAILED,
            reason=result.reason,
        )

    async def compensate_answer(
        self, request: pb.CompensateRequest, signature: Caller
    ) -> pb.CompensateResponse:
        step = self._trusted("Compensate", request, signature)
        await self._run(lambda: self.guarded.compensate(step, request.payload))
        return pb.CompensateResponse()

    async def deliver_answer(
        self, request: pb.DeliverRequest, signature: Caller
    ) -> pb.DeliverResponse:
        message = self._trusted("Deliver", request, signature)
        await self._run(lambda: self.guarded.deliver(message, request.payload))
        return pb.DeliverResponse()

    async def check_message_answer(
        self, request: pb.CheckMessageRequest, signature: Caller
    ) -> pb.CheckMessageResponse:
        message_id = request.transaction_id
        if not 1 <= len(message_id.encode()) <= MAX_MESSAGE_ID:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"transaction_id must be the message's id (1 to {MAX_MESSAGE_ID} bytes)",
            )
        # A check-back answered to a stranger leaves a tombstone that rolls
        # back the producer's own transaction when it publishes.
        self.check_caller("CheckMessage", message_id, "", b"", signature)
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
        return await _single(context, self.prepare_answer(request, _signature(context)))

    async def Commit(  # noqa: N802
        self, request: pb.CommitBranchRequest, context: Context
    ) -> pb.CommitBranchResponse:
        return await _single(context, self.commit_answer(request, _signature(context)))

    async def Abort(  # noqa: N802
        self, request: pb.AbortBranchRequest, context: Context
    ) -> pb.AbortBranchResponse:
        return await _single(context, self.abort_answer(request, _signature(context)))

    async def CommitOnePhase(  # noqa: N802
        self, request: pb.CommitOnePhaseRequest, context: Context
    ) -> pb.CommitOnePhaseResponse:
        return await _single(context, self.commit_one_phase_answer(request, _signature(context)))

    async def Execute(  # noqa: N802
        self, request: pb.ExecuteRequest, context: Context
    ) -> pb.ExecuteResponse:
        return await _single(context, self.execute_answer(request, _signature(context)))

    async def Compensate(  # noqa: N802
        self, request: pb.CompensateRequest, context: Context
    ) -> pb.CompensateResponse:
        return await _single(context, self.compensate_answer(request, _signature(context)))

    async def Deliver(  # noqa: N802
        self, request: pb.DeliverRequest, context: Context
    ) -> pb.DeliverResponse:
        return await _single(context, self.deliver_answer(request, _signature(context)))

    async def CheckMessage(  # noqa: N802
        self, request: pb.CheckMessageRequest, context: Context
    ) -> pb.CheckMessageResponse:
        return await _single(context, self.check_message_answer(request, _signature(context)))

    async def Batch(  # noqa: N802
        self, request: pb.BatchRequest, context: Context
    ) -> AsyncIterator[pb.BatchAnswer]:
        """Every call of the batch at once, each answered when done; the
        batch's own signature checked once, before any entry's work."""
        if len(request.calls) > MAX_BATCH_CALLS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"calls holds {len(request.calls)}; at most {MAX_BATCH_CALLS} a batch",
            )
        # Checked once, before any entry's work.
        batch = self.batch_caller(request.calls, _signature(context))
        tasks = [
            asyncio.ensure_future(self._entry(index, call, _entry_caller(call, batch)))
            for index, call in enumerate(request.calls)
        ]
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for task in tasks:
                task.cancel()

    async def _entry(self, index: int, call: pb.BatchCall, caller: Caller) -> pb.BatchAnswer:
        kind = call.WhichOneof("call")
        answer = pb.BatchAnswer(index=index)
        try:
            work = self._dispatch(call, kind, caller)
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

    def _dispatch(
        self, call: pb.BatchCall, kind: str | None, caller: Caller
    ) -> Awaitable[Message]:
        if kind == "prepare":
            return self.prepare_answer(call.prepare, caller)
        if kind == "commit":
            return self.commit_answer(call.commit, caller)
        if kind == "abort":
            return self.abort_answer(call.abort, caller)
        if kind == "commit_one_phase":
            return self.commit_one_phase_answer(call.commit_one_phase, caller)
        if kind == "execute":
            return self.execute_answer(call.execute, caller)
        if kind == "compensate":
            return self.compensate_answer(call.compensate, caller)
        if kind == "deliver":
            return self.deliver_answer(call.deliver, caller)
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a batch entry names no call")


def _entry_caller(call: pb.BatchCall, batch: BatchSigned | None) -> Caller:
    """Whom a Batch entry is checked as coming from: its Batch's signer
    when the Batch's signature verified (its own is not looked at), else
    its own signature when it carries one, else its Batch's refusal."""
    if batch is None:
        return call.signature
    if batch.refusal is None or not call.signature:
        return batch
    return call.signature


def _signature(context: Context) -> str | None:
    """The signature a call carries in its metadata, a Batch's too (the
    first, should it carry several)."""
    for key, value in context.invocation_metadata() or ():
        if key == SIGNATURE_HEADER:
            return value if isinstance(value, str) else None
    return None


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
    tls: ServerTls | None = None,
) -> Serving:
    """Serves `service` on `listen` (`host:port`; port 0 picks one) and,
    unless `resolver` is None, runs the in-doubt resolver beside it: a
    branch prepared before this start is asked about at once (phase 2 may
    have come and gone while the process was down). With `tls`, over TLS
    only (mutual TLS when it names a client CA).

    Raises NoCoordinatorKey when the service was told neither whose calls
    to obey nor to obey anyone; warns at every start of a service that
    obeys anyone."""
    if service.trusted_keys is None and not service.accept_unsigned:
        raise NoCoordinatorKey()
    # Before the port opens: a resolver that cannot dial its coordinator
    # (an https:// URL without TLS settings) stops the start.
    in_doubt = None if resolver is None else Resolver(service.ledger, service.guarded, resolver)
    # Answers are small (a vote, an acknowledgement): the send limit
    # matches so that one number bounds every message on this port.
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", service.max_call_bytes),
            ("grpc.max_send_message_length", service.max_call_bytes),
        ]
    )
    pb_grpc.add_ParticipantServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, tls.credentials())
    await server.start()
    if service.accept_unsigned:
        log.warning(
            "this participant on port %d obeys unsigned calls: anyone who reaches its port "
            "can prepare, commit or abort its branches (accept_unsigned=True)",
            port,
        )
    else:
        log.info("port %d obeys calls signed by coordinator keys %s", port, service.trusted_keys)
    task = asyncio.ensure_future(in_doubt.run()) if in_doubt is not None else None
    return Serving(server, port, task)

"""A client for the coordinator (grpc.aio): begin, enlist, commit, roll
back, submit a saga, prepare and submit a transactional message, ask an
outcome; in a deployment of several groups, each call sent to its group
(`CoordinatorClient.for_groups`, `concord_participant.groups`). Every call has a deadline; a call that
is safe to repeat is retried on UNAVAILABLE with exponential backoff, full
jitter and a cap (a keyless Begin is not: it could begin twice). An
`https://` coordinator is dialled over TLS with `tls=ClientTls(...)`
(`concord_participant.tls`); without it such a URL is refused when the
client is made. A coordinator started with `--client-token` is called with
`token=...`: every call the client makes carries it
(`concord_participant.client_token`); a refusal of it (UNAUTHENTICATED) is
never retried, for the same token would be refused again.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from ._proto.concord.v1 import coordinator_pb2 as pb
from ._proto.concord.v1 import types_pb2 as types
from .client_token import BearerToken, bearer
from .groups import Router, To, connect_failed
from .tls import ClientTls

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How a repeatable call is retried on UNAVAILABLE: the delay before
    attempt n is random in [0, min(cap, first * 2**n)] (full jitter)."""

    attempts: int = 6
    first_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.cap_s, self.first_s * 2**attempt))


@dataclass
class Branch:
    """A branch to enlist: the participant's URI, its payload, its name."""

    participant: str
    payload: bytes = b""
    name: str = ""


@dataclass(frozen=True)
class Begun:
    transaction_id: str
    #: False when the idempotency key found an earlier transaction.
    created: bool
    branches: list[str] = field(default_factory=list)


class CoordinatorError(Exception):
    """A call the coordinator refused or could not answer: `code` says
    what the caller can do (INVALID_ARGUMENT: fix the request; UNAVAILABLE:
    retry; DEADLINE_EXCEEDED: ask the transaction's state; UNAUTHENTICATED:
    the coordinator requires a client token this client did not send, or
    sent wrong: give the client one of its `--client-token`s, `token=...`;
    retrying will not help)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class CoordinatorClient:
    """One coordinator node (any node of a cluster: calls are forwarded to
    the transaction's owner). Use as `async with CoordinatorClient(url)`.
    In a deployment of several groups, `CoordinatorClient.for_groups`
    sends each call to a node of the group that owns it itself. `tls`
    dials `https://` nodes (mutual TLS when it holds a certificate).
    `token` is sent with every call (`authorization: Bearer <token>`), for
    a coordinator started with `--client-token`; ValueError when it is not
    printable ASCII or has whitespace at its ends."""

    def __init__(
        self,
        address: str,
        timeout_s: float = 30.0,
        retry: Retry = Retry(),
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        self._token = None if token is None else BearerToken(token)
        self._router = Router([address], follow_map=False, tls=tls, token=self._token)
        self.timeout_s = timeout_s
        self.retry = retry

    @classmethod
    def for_groups(
        cls,
        addresses: list[str],
        timeout_s: float = 30.0,
        retry: Retry = Retry(),
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> CoordinatorClient:
        """A client of a deployment of several groups (docs/design.md §11):
        it reads the shard map from any of `addresses` (any nodes of any
        groups) and sends each call to a node of the group that owns it,
        the group's next node when one refuses the connection. Without a
        map (one group), calls spread over `addresses`. `token` goes with
        every call, the map's reads too."""
        client = cls(addresses[0] if addresses else "", timeout_s, retry, tls, token)
        client._router = Router(list(addresses), follow_map=True, tls=tls, token=client._token)
        return client

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._router.close()

    async def _call(
        self, to: To, send: Callable[[Any, float], Awaitable[T]], repeatable: bool
    ) -> T:
        attempt = 0
        while True:
            failed: grpc.aio.AioRpcError | None = None
            for stub in await self._router.stubs_for(to):
                try:
                    return await send(stub, self.timeout_s)
                except grpc.aio.AioRpcError as error:
                    failed = error
                    # A node that refused the connection never saw the
                    # call: the group's next node may take it.
                    if not connect_failed(error):
                        break
            if failed is None:
                raise CoordinatorError(
                    grpc.StatusCode.UNAVAILABLE, "no coordinator node to send the call to"
                )
            code = failed.code()
            # Only UNAVAILABLE is a passing failure; UNAUTHENTICATED above
            # all is not: the same token would be refused again, and a
            # caller told at once fixes its configuration sooner.
            if repeatable and code == grpc.StatusCode.UNAVAILABLE:
                attempt += 1
                if attempt < self.retry.attempts:
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
            message = failed.details() or ""
            if code == grpc.StatusCode.UNAUTHENTICATED:
                message = f"{message} ({self._token_refused()})"
            raise CoordinatorError(code, message) from failed

    def _token_refused(self) -> str:
        """What this client can do about a refusal of its token."""
        if self._token is None:
            return "this client sends no token: CoordinatorClient(..., token=...)"
        return (
            "the token this client sends was refused: give it one of the coordinator's "
            "--client-token values"
        )

    async def begin(
        self,
        branches: list[Branch] | None = None,
        idempotency_key: str = "",
        description: str = "",
        timeout_ms: int = 0,
    ) -> Begun:
        """Begins a 2PC transaction, with `branches` enlisted in the same
        durable write. With a key, a retry returns the first transaction."""
        request = pb.BeginRequest(
            idempotency_key=idempotency_key,
            description=description,
            timeout_ms=timeout_ms,
            branches=[
                pb.BranchSpec(participant=b.participant, payload=b.payload, branch=b.name)
                for b in branches or []
            ],
        )
        answer = await self._call(
            To.new(idempotency_key),
            lambda stub, t: stub.Begin(request, timeout=t),
            repeatable=bool(idempotency_key),
        )
        return Begun(answer.transaction_id, answer.created, list(answer.branches))

    async def enlist(self, transaction_id: str, branch: Branch) -> str:
        """Enlists a branch; returns its name. Give it a name to make a
        retry safe (it is then retried on UNAVAILABLE)."""
        request = pb.EnlistRequest(
            transaction_id=transaction_id,
            participant=branch.participant,
            payload=branch.payload,
            branch=branch.name,
        )
        answer = await self._call(
            To.txn(transaction_id),
            lambda stub, t: stub.Enlist(request, timeout=t),
            repeatable=bool(branch.name),
        )
        return str(answer.branch)

    async def commit(self, transaction_id: str, wait_for_completion: bool = False) -> str:
        """Commits; answers once the decision is durable: "committed" or
        "aborted" (a participant voted no, or the deadline passed)."""
        request = pb.CommitRequest(
            transaction_id=transaction_id, wait_for_completion=wait_for_completion
        )
        answer = await self._call(
            To.txn(transaction_id), lambda stub, t: stub.Commit(request, timeout=t), True
        )
        return _outcome_name(answer.outcome)

    async def rollback(self, transaction_id: str, reason: str = "") -> None:
        request = pb.RollbackRequest(transaction_id=transaction_id, reason=reason)
        await self._call(
            To.txn(transaction_id), lambda stub, t: stub.Rollback(request, timeout=t), True
        )

    async def outcome(self, transaction_id: str) -> str:
        """"committed", "aborted" (presumed for an unknown id) or
        "undecided"."""
        request = pb.GetOutcomeRequest(transaction_id=transaction_id)
        answer = await self._call(
            To.txn(transaction_id), lambda stub, t: stub.GetOutcome(request, timeout=t), True
        )
        return _outcome_name(answer.outcome)

    async def transaction(self, transaction_id: str) -> types.Transaction:
        request = pb.GetTransactionRequest(transaction_id=transaction_id)
        return await self._call(
            To.txn(transaction_id), lambda stub, t: stub.GetTransaction(request, timeout=t), True
        )

    async def submit_saga(self, request: pb.SubmitSagaRequest) -> pb.SubmitSagaResponse:
        """Submits a saga; retried on UNAVAILABLE only with an idempotency
        key."""
        return await self._call(
            To.new(request.idempotency_key),
            lambda stub, t: stub.SubmitSaga(request, timeout=t),
            repeatable=bool(request.idempotency_key),
        )

    async def prepare_message(self, request: pb.PrepareMessageRequest) -> PreparedAnswer:
        """Prepares a transactional message (see `concord_participant.message`,
        which builds the request); retried on UNAVAILABLE only with an
        idempotency key."""
        answer = await self._call(
            To.new(request.idempotency_key),
            lambda stub, t: stub.PrepareMessage(request, timeout=t),
            repeatable=bool(request.idempotency_key),
        )
        return PreparedAnswer(answer.transaction_id, answer.created, _message_state(answer.state))

    async def submit_message(self, transaction_id: str, wait: bool = False) -> str:
        """Tells the coordinator the producer's local transaction committed:
        "delivering", or with `wait` "delivered" once every destination
        acknowledged. Safe to repeat."""
        request = pb.SubmitMessageRequest(transaction_id=transaction_id, wait=wait)
        answer = await self._call(
            To.txn(transaction_id), lambda stub, t: stub.SubmitMessage(request, timeout=t), True
        )
        return _message_state(answer.state)


@dataclass(frozen=True)
class PreparedAnswer:
    """PrepareMessage's answer: the message's id, whether this call
    prepared it, and its state ("prepared", "delivering", "delivered" or
    "dropped")."""

    transaction_id: str
    created: bool
    state: str


_MESSAGE_STATES: dict[int, str] = {
    types.TRANSACTION_STATE_PREPARED: "prepared",
    types.TRANSACTION_STATE_DELIVERING: "delivering",
    types.TRANSACTION_STATE_DELIVERED: "delivered",
    types.TRANSACTION_STATE_DROPPED: "dropped",
}


def _message_state(state: int) -> str:
    return _MESSAGE_STATES.get(state, "unknown")


def _outcome_name(outcome: int) -> str:
    if outcome == types.OUTCOME_COMMITTED:
        return "committed"
    if outcome == types.OUTCOME_ABORTED:
        return "aborted"
    return "undecided"


class SyncCoordinatorClient:
    """`CoordinatorClient` for code without an event loop: each method
    blocks until its call ends. It owns a thread running its own loop,
    ended by `close()` (or leaving `with`). Given a list of addresses, it
    routes by the shard map as `CoordinatorClient.for_groups` does.
    `token` as `CoordinatorClient`'s."""

    def __init__(
        self,
        address: str | list[str],
        timeout_s: float = 30.0,
        retry: Retry = Retry(),
        tls: ClientTls | None = None,
        token: str | None = None,
    ) -> None:
        import threading

        if token is not None:
            # Refused here, before a thread is started for nothing.
            bearer(token)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="concord-client", daemon=True
        )
        self._thread.start()
        try:
            self._client: CoordinatorClient = self._wait(
                self._make(address, timeout_s, retry, tls, token)
            )
        except BaseException:
            # An address it cannot dial: the loop's thread ends with it.
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            raise

    @staticmethod
    async def _make(
        address: str | list[str],
        timeout_s: float,
        retry: Retry,
        tls: ClientTls | None,
        token: str | None,
    ) -> CoordinatorClient:
        # grpc.aio channels belong to the loop they are made on.
        if isinstance(address, list):
            return CoordinatorClient.for_groups(address, timeout_s, retry, tls, token)
        return CoordinatorClient(address, timeout_s, retry, tls, token)

    def _wait(self, call: Awaitable[T]) -> T:
        async def run() -> T:
            return await call

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def __enter__(self) -> SyncCoordinatorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._wait(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def begin(
        self,
        branches: list[Branch] | None = None,
        idempotency_key: str = "",
        description: str = "",
        timeout_ms: int = 0,
    ) -> Begun:
        return self._wait(self._client.begin(branches, idempotency_key, description, timeout_ms))

    def enlist(self, transaction_id: str, branch: Branch) -> str:
        return self._wait(self._client.enlist(transaction_id, branch))

    def commit(self, transaction_id: str, wait_for_completion: bool = False) -> str:
        return self._wait(self._client.commit(transaction_id, wait_for_completion))

    def rollback(self, transaction_id: str, reason: str = "") -> None:
        self._wait(self._client.rollback(transaction_id, reason))

    def outcome(self, transaction_id: str) -> str:
        return self._wait(self._client.outcome(transaction_id))

    def transaction(self, transaction_id: str) -> types.Transaction:
        return self._wait(self._client.transaction(transaction_id))

    def submit_saga(self, request: pb.SubmitSagaRequest) -> pb.SubmitSagaResponse:
        return self._wait(self._client.submit_saga(request))

    def prepare_message(self, request: pb.PrepareMessageRequest) -> PreparedAnswer:
        return self._wait(self._client.prepare_message(request))

    def submit_message(self, transaction_id: str, wait: bool = False) -> str:
        return self._wait(self._client.submit_message(transaction_id, wait))

"""The client side of sagas, as the Rust SDK's (participant/src/saga.rs):
build a step graph that reads like the business process, and submit it in
one call.

    status = await (
        Saga(idempotency_key="trip-42")
        .step(Step("flight", "http://flights:7601", b"LH123", compensation=b"LH123"))
        .step(Step("hotel", "http://hotels:7602", b"H1", compensation=b"H1", after=["flight"]))
        .step(Step("payment", "http://pay:7604", b"card", kind="pivot", after=["hotel"]))
        .run(client)
    )
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._proto.concord.v1 import coordinator_pb2 as pb
from ._proto.concord.v1 import types_pb2 as types
from .client import CoordinatorClient

_KINDS = {
    "compensatable": types.STEP_KIND_COMPENSATABLE,
    "pivot": types.STEP_KIND_PIVOT,
    "retriable": types.STEP_KIND_RETRIABLE,
}

_STATES = {
    types.TRANSACTION_STATE_RUNNING: "running",
    types.TRANSACTION_STATE_COMPENSATING: "compensating",
    types.TRANSACTION_STATE_COMPLETED: "completed",
    types.TRANSACTION_STATE_COMPENSATED: "compensated",
    types.TRANSACTION_STATE_FAILED: "failed",
}


@dataclass
class Step:
    """One step: its name, its participant's URI, its action's payload.
    `kind` is "compensatable" (the default: needs a `compensation`),
    "pivot" or "retriable"; `after` names the steps it waits for (None: the
    step declared before it; [] starts it at once)."""

    name: str
    participant: str
    action: bytes
    compensation: bytes | None = None
    kind: str = "compensatable"
    after: list[str] | None = None
    #: Each attempt's deadline in milliseconds (0: the coordinator's).
    attempt_timeout_ms: int = 0

    def to_wire(self) -> types.SagaStep:
        if self.kind not in _KINDS:
            raise ValueError(f"step {self.name!r}: kind {self.kind!r} is not one of {sorted(_KINDS)}")
        step = types.SagaStep(
            name=self.name,
            participant=self.participant,
            action=self.action,
            kind=_KINDS[self.kind],
            attempt_timeout_ms=self.attempt_timeout_ms,
        )
        if self.compensation is not None:
            step.compensation = self.compensation
        if self.after is not None:
            step.depends_on.CopyFrom(types.Dependencies(steps=self.after))
        return step


@dataclass(frozen=True)
class SagaStatus:
    transaction_id: str
    #: False when the idempotency key found an earlier saga.
    created: bool
    #: "running", "compensating", "completed", "compensated" or "failed".
    state: str
    reason: str


@dataclass
class Saga:
    """A saga's steps, in declaration order; submitted whole."""

    idempotency_key: str = ""
    description: str = ""
    steps: list[Step] = field(default_factory=list)

    def step(self, step: Step) -> Saga:
        self.steps.append(step)
        return self

    def request(self, wait: bool) -> pb.SubmitSagaRequest:
        return pb.SubmitSagaRequest(
            steps=[s.to_wire() for s in self.steps],
            idempotency_key=self.idempotency_key,
            description=self.description,
            wait=wait,
        )

    async def submit(self, client: CoordinatorClient) -> SagaStatus:
        """Submits and answers once the saga is durable (RUNNING)."""
        return _status(await client.submit_saga(self.request(wait=False)))

    async def run(self, client: CoordinatorClient) -> SagaStatus:
        """Submits and answers once the saga has ended."""
        return _status(await client.submit_saga(self.request(wait=True)))


def _status(answer: pb.SubmitSagaResponse) -> SagaStatus:
    return SagaStatus(
        answer.transaction_id, answer.created, _STATES.get(answer.state, "running"), answer.reason
    )

"""Test scaffolding: a stand-in coordinator that answers only GetOutcome,
always the same, and counts the questions; served on 127.0.0.1:0, in
plaintext or over TLS. The resolver's tests need one that lies (a
stranger's "coordinator") beside one that does not."""

from __future__ import annotations

from typing import Any

import grpc

from concord_participant import ServerTls
from concord_participant._proto.concord.v1 import coordinator_pb2 as pb
from concord_participant._proto.concord.v1 import coordinator_pb2_grpc as pb_grpc
from concord_participant._proto.concord.v1 import types_pb2 as types

OUTCOMES = {"committed": types.OUTCOME_COMMITTED, "aborted": types.OUTCOME_ABORTED}


class AnsweringCoordinator(pb_grpc.CoordinatorServicer):
    """Says `outcome` of every transaction it is asked about."""

    def __init__(self, outcome: str) -> None:
        self.outcome = OUTCOMES[outcome]
        self.asked: list[str] = []
        self.server: grpc.aio.Server | None = None
        self.url = ""

    async def GetOutcome(  # noqa: N802 (the RPC's name)
        self, request: pb.GetOutcomeRequest, context: Any
    ) -> pb.GetOutcomeResponse:
        self.asked.append(request.transaction_id)
        return pb.GetOutcomeResponse(outcome=self.outcome)

    async def start(self, tls: ServerTls | None = None) -> AnsweringCoordinator:
        self.server = grpc.aio.server()
        pb_grpc.add_CoordinatorServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        if tls is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
            self.url = f"http://127.0.0.1:{port}"
        else:
            port = self.server.add_secure_port("127.0.0.1:0", tls.credentials())
            self.url = f"https://127.0.0.1:{port}"
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)

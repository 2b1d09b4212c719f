"""Where the client sends each call (docs/design.md §11), as the Rust SDK's
participant/src/groups.rs: with one address, there; in a deployment of
several groups (`CoordinatorClient.for_groups`), to a node of the group that
owns the call, so that no node has to forward it.

The map is read from any address given (`GetShardMap`) and again once it
is `REFRESH_S` old. A call about a transaction goes to the group that owns
the transaction's shard at the millisecond in its id; a keyed Begin,
SubmitSaga or PrepareMessage to the owner of its key's shard now; a keyless
one to any node (it stays in the group it reaches). A map read before a
shard moved only costs a forwarded call until the next read: nodes forward
what reaches the wrong group. A deployment of one group (no map) has its
calls spread over the addresses given. An `https://` node is dialled over
TLS with the client's `ClientTls` (`concord_participant.tls`), and every
channel with the client's token when it has one
(`concord_participant.client_token`): the map's reads carry it as the calls
do, for a coordinator that requires one refuses GetShardMap without it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from ._proto.concord.v1 import coordinator_pb2 as pb
from ._proto.concord.v1 import coordinator_pb2_grpc as pb_grpc
from .client_token import BearerToken
from .shard import ShardMap, rand_a
from .tls import ClientTls, check_url, dial

#: How long a map read is followed before it is read again.
REFRESH_S = 5.0
#: Deadline of reading the map.
READ_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class To:
    """What a call is about: a transaction by id, or a new one (with its
    idempotency key, if any)."""

    transaction_id: str | None = None
    key: str | None = None

    @staticmethod
    def txn(transaction_id: str) -> To:
        return To(transaction_id=transaction_id)

    @staticmethod
    def new(key: str = "") -> To:
        return To(key=key or None)


def connect_failed(error: grpc.aio.AioRpcError) -> bool:
    """Whether the call never reached a node (the connection was refused or
    could not be made): then another node may take it, even a call that is
    not safe to repeat."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (
        error.details() or ""
    ).lower()


class Router:
    """The channels to every node named, and the map when the deployment
    has one."""

    def __init__(
        self,
        seeds: list[str],
        follow_map: bool,
        tls: ClientTls | None = None,
        token: BearerToken | None = None,
    ) -> None:
        if not seeds:
            raise ValueError("at least one coordinator address is needed")
        for seed in seeds:
            # Said when the client is made, not at its first call.
            check_url(seed, tls)
        self._seeds = seeds
        self._follow_map = follow_map
        self._tls = tls
        self._interceptors = token.interceptors() if token is not None else []
        self._channels: dict[str, tuple[grpc.aio.Channel, Any]] = {}
        #: (the map, or None for one group; when it was read)
        self._known: tuple[ShardMap | None, float] | None = None
        self._reading = asyncio.Lock()
        self._turn = 0

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.close()

    def stub(self, address: str) -> Any:
        """The stub for `address`, its channel made once and reused
        (ValueError for an `https://` address when the client has no TLS
        settings)."""
        if address not in self._channels:
            channel = dial(address, self._tls, self._interceptors)
            self._channels[address] = (channel, pb_grpc.CoordinatorStub(channel))  # type: ignore[no-untyped-call]
        return self._channels[address][1]

    async def stubs_for(self, to: To) -> list[Any]:
        """The nodes to send a call about `to` to, in the order to try
        them."""
        known = await self._map() if self._follow_map else None
        addresses = self._owners(known, to) if known is not None else self._rotated(self._seeds)
        return [self.stub(address) for address in addresses]

    def _owners(self, known: ShardMap, to: To) -> list[str]:
        if to.transaction_id is not None:
            try:
                id = uuid.UUID(to.transaction_id)
            except ValueError:
                # The coordinator answers what is wrong with it.
                return self._rotated(self._seeds)
            group, spread = known.group_of(id), rand_a(id)
        elif to.key is not None:
            shard = known.shard_for_key(to.key)
            group, spread = known.owner_at(shard, int(time.time() * 1000)), shard
        else:
            every = [node for nodes in known.groups.values() for node in nodes]
            return self._rotated(every)
        nodes = list(known.groups.get(group, []))
        if not nodes:
            return self._rotated(self._seeds)
        first = spread % len(nodes)
        return nodes[first:] + nodes[:first]

    def _rotated(self, addresses: list[str]) -> list[str]:
        if not addresses:
            return addresses
        first = self._turn % len(addresses)
        self._turn += 1
        return addresses[first:] + addresses[:first]

    async def _map(self) -> ShardMap | None:
        """The map if the deployment has one, read again once `REFRESH_S`
        old; None for one group. When no node answers, the map held is kept
        (another read is tried `REFRESH_S` later); with none held, calls go
        to the addresses given, which forward them."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh[0]
        async with self._reading:
            fresh = self._fresh()
            if fresh is not None:
                return fresh[0]
            held = self._known[0] if self._known is not None else None
            sources = self._rotated(self._seeds)
            if held is not None:
                sources += [node for nodes in held.groups.values() for node in nodes]
            read = await self._read(sources)
            if read is None:
                if held is None:
                    return None
                known: ShardMap | None = held
            else:
                known = read[0]
                # A node that has not followed a newer version yet answers
                # an older one: the higher version wins.
                if known is not None and held is not None and held.version > known.version:
                    known = held
            self._known = (known, time.monotonic())
            return known

    def _fresh(self) -> tuple[ShardMap | None] | None:
        if self._known is not None and time.monotonic() - self._known[1] < REFRESH_S:
            return (self._known[0],)
        return None

    async def _read(self, sources: list[str]) -> tuple[ShardMap | None] | None:
        """The map from the first source that gives one, `(None,)` from one
        that says it has none; None when none answers."""
        for source in sources:
            try:
                answer = await self.stub(source).GetShardMap(
                    pb.GetShardMapRequest(), timeout=READ_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    return (None,)
                continue
            try:
                return (ShardMap.from_wire(answer.map),)
            except ValueError:
                continue
        return None

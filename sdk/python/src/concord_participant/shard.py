"""The shard map's rules a client needs to send each call to the group that
owns it (docs/design.md §11), as the Rust crate `concord-shard` states
them: a key's shard is the first 8 bytes of its SHA-256, big-endian, modulo
the shard count; an id's shard is its UUIDv7 `rand_a` (the 12 bits after
the version) modulo the count, for an id minted from the founding on; an
id belongs to the owner of its shard at the millisecond in it, forever.
`sdk/shard-cases.json` pins both rules for both languages.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from ._proto.concord.v1 import coordinator_pb2 as pb


@dataclass(frozen=True)
class Owner:
    group: str
    from_ms: int


@dataclass(frozen=True)
class ShardMap:
    """A version of the map, as `GetShardMap` answers it."""

    version: int
    shards: int
    founded_ms: int
    founding_group: str
    #: Each group's node addresses, by name, in the map's order.
    groups: dict[str, list[str]]
    #: Per shard, its owners by rising `from_ms`.
    owners: list[list[Owner]]

    @staticmethod
    def from_wire(wire: pb.ShardMap) -> ShardMap:
        if wire.shards < 1 or wire.shards & (wire.shards - 1) or len(wire.owners) != wire.shards:
            raise ValueError(f"not a shard map: {wire.shards} shards, {len(wire.owners)} histories")
        return ShardMap(
            version=wire.version,
            shards=wire.shards,
            founded_ms=wire.founded_ms,
            founding_group=wire.founding_group,
            groups={g.name: list(g.nodes) for g in wire.groups},
            owners=[[Owner(o.group, o.from_ms) for o in h.owners] for h in wire.owners],
        )

    def shard_for_key(self, key: str) -> int:
        """The shard of a new transaction with idempotency key `key`."""
        head = hashlib.sha256(key.encode()).digest()[:8]
        return int.from_bytes(head, "big") % self.shards

    def shard_of(self, id: uuid.UUID) -> int | None:
        """The shard written in `id`; None for an id minted before the
        founding."""
        if unix_ms(id) < self.founded_ms:
            return None
        return rand_a(id) % self.shards

    def owner_at(self, shard: int, ms: int) -> str:
        """Who owns `shard` at `ms` (the founding group before the founding)."""
        history = self.owners[shard] if 0 <= shard < len(self.owners) else []
        for owner in reversed(history):
            if owner.from_ms <= ms:
                return owner.group
        return self.founding_group

    def group_of(self, id: uuid.UUID) -> str:
        """The group `id` belongs to, forever."""
        shard = self.shard_of(id)
        if shard is None:
            return self.founding_group
        return self.owner_at(shard, unix_ms(id))


def unix_ms(id: uuid.UUID) -> int:
    """The millisecond a UUIDv7 was minted at."""
    return int.from_bytes(id.bytes[0:6], "big")


def rand_a(id: uuid.UUID) -> int:
    """A UUIDv7's 12 bits after its version."""
    b = id.bytes
    return ((b[6] & 0x0F) << 8) | b[7]

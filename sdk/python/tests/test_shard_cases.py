"""The routing rules shared with the Rust crate concord-shard
(sdk/shard-cases.json, also run by shard/tests/cases.rs): a key's shard,
and an id's shard and group; then the client that routes by the map
against a real deployment of two groups (the Rust test that runs this
suite starts one and sets CONCORD_TEST_GROUP_URLS): every call reaches the
group the coordinator placed its transaction in."""

from __future__ import annotations

import json
import os
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from concord_participant import Branch, CoordinatorClient, ParticipantService, SqliteLedger, serve
from concord_participant._proto.concord.v1 import coordinator_pb2 as pb
from concord_participant.groups import To
from concord_participant.shard import ShardMap

from scripted import Scripted, Steps, install_sqlite
from signing import coordinator_keys

CASES = json.loads(
    (pathlib.Path(__file__).resolve().parents[2] / "shard-cases.json").read_text()
)
GROUPS = [url for url in os.environ.get("CONCORD_TEST_GROUP_URLS", "").split(",") if url]


def wire(map: dict[str, Any]) -> pb.ShardMap:
    return pb.ShardMap(
        version=map["version"],
        shards=map["shards"],
        founded_ms=map["founded_ms"],
        founding_group=map["founding_group"],
        groups=[pb.ShardGroup(name=g["name"], nodes=g["nodes"]) for g in map["groups"]],
        owners=[
            pb.ShardHistory(owners=[pb.ShardOwner(group=o["group"], from_ms=o["from_ms"]) for o in h])
            for h in map["owners"]
        ],
    )


def one_group(shards: int) -> ShardMap:
    return ShardMap(1, shards, 0, "g1", {"g1": ["http://g1:7400"]}, [[] for _ in range(shards)])


@pytest.mark.parametrize("case", CASES["keys"], ids=[c["key"][:16] or "empty" for c in CASES["keys"]])
def test_a_keys_shard_is_the_rust_crates(case: dict[str, Any]) -> None:
    for shards in (16, 256, 4096):
        assert one_group(shards).shard_for_key(case["key"]) == case[f"shard_of_{shards}"]


@pytest.mark.parametrize("case", CASES["ids"], ids=[c["why"] for c in CASES["ids"]])
def test_an_ids_shard_and_group_are_the_rust_crates(case: dict[str, Any]) -> None:
    map = ShardMap.from_wire(wire(CASES["map"]))
    id = uuid.UUID(case["id"])
    assert map.shard_of(id) == case["shard"]
    assert map.group_of(id) == case["group"]


@pytest.fixture
async def participant(tmp_path: pathlib.Path) -> AsyncIterator[str]:
    if not GROUPS:
        pytest.skip("CONCORD_TEST_GROUP_URLS is not set (cargo test sets it)")
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    # Called by the groups' coordinators, which sign with the harness's key.
    service = ParticipantService(
        SqliteLedger(db), Scripted(), Steps(), trusted_keys=coordinator_keys()
    )
    serving = await serve(service, "127.0.0.1:0", resolver=None)
    yield f"http://127.0.0.1:{serving.port}"
    await serving.stop(1.0)


async def test_a_client_routing_by_the_map_sends_each_call_to_its_group(participant: str) -> None:
    # Given g1's node only, it learns both groups from the map.
    async with CoordinatorClient.for_groups(GROUPS[:1], timeout_s=20) as client:
        placed: dict[str, int] = {}
        for i in range(12):
            key = f"routed-{uuid.uuid4()}-{i}"
            begun = await client.begin([Branch(participant, b"commit", "b1")], idempotency_key=key)
            assert await client.commit(begun.transaction_id) == "committed"
            shown = await client.transaction(begun.transaction_id)
            placed[shown.group] = placed.get(shown.group, 0) + 1
            # The key's group by this SDK's rules is the one the
            # coordinator placed it in, and the router's first choice for
            # the key and for the id is that group's node.
            held = client._router._known
            assert held is not None and held[0] is not None
            map = held[0]
            owner = map.owner_at(map.shard_for_key(key), shown.created_at_ms)
            assert owner == shown.group == map.group_of(uuid.UUID(begun.transaction_id))
            node = client._router.stub(map.groups[owner][0])
            assert (await client._router.stubs_for(To.new(key)))[0] is node
            assert (await client._router.stubs_for(To.txn(begun.transaction_id)))[0] is node
        assert set(placed) == {"g1", "g2"}, placed

"""The in-doubt resolver asks only the coordinator it was configured with:
a branch whose prepare named another "coordinator" (the address in a
BranchRef is not signed: anyone who can reach the participant could have
named their own) is resolved by the configured one's answer, and the named
one is never asked; without a configured coordinator the branch waits for
phase 2, with a warning."""

from __future__ import annotations

import logging
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from concord_participant import ParticipantService, ResolverConfig, SqliteLedger, serve
from concord_participant.ledger import BranchContext
from concord_participant.resolver import Resolver

from outcomes import AnsweringCoordinator
from scripted import Scripted, install_sqlite, read
from signing import TEST_KEY


@pytest.fixture
async def coordinators() -> AsyncIterator[tuple[AnsweringCoordinator, AnsweringCoordinator]]:
    """The real coordinator (it aborted) and a stranger's (it says
    committed)."""
    real = await AnsweringCoordinator("aborted").start()
    liar = await AnsweringCoordinator("committed").start()
    yield real, liar
    await real.stop()
    await liar.stop()


def prepared(tmp_path: pathlib.Path, named: str) -> tuple[ParticipantService[Any], str]:
    """A service with one branch that voted COMMIT, its prepare naming
    `named` as the coordinator to ask."""
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    service = ParticipantService(SqliteLedger(db), Scripted(), trusted_keys=TEST_KEY.trusted())
    txn = str(uuid.uuid4())
    vote = service.guarded.prepare(BranchContext(txn, "b1", coordinator=named), b"commit")
    assert vote.kind == "commit"
    return service, txn


async def test_the_configured_coordinator_is_asked_and_the_named_one_never(
    tmp_path: pathlib.Path, coordinators: tuple[AnsweringCoordinator, AnsweringCoordinator]
) -> None:
    real, liar = coordinators
    service, txn = prepared(tmp_path, liar.url)
    resolver = Resolver(
        service.ledger, service.guarded, ResolverConfig(coordinator=real.url, in_doubt_after_s=0)
    )
    try:
        assert await resolver.check() == 1
    finally:
        await resolver.close()
    assert (real.asked, liar.asked) == ([txn], [])
    # Aborted, as the real coordinator decided.
    ops = read(service.ledger, "SELECT op FROM effects WHERE txn_id = ? ORDER BY seq", (txn,))
    assert ops == [("prepare",), ("abort",)]


async def test_without_a_configured_coordinator_the_branch_waits_and_a_warning_says_so(
    tmp_path: pathlib.Path,
    coordinators: tuple[AnsweringCoordinator, AnsweringCoordinator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, liar = coordinators
    service, txn = prepared(tmp_path, liar.url)
    resolver = Resolver(service.ledger, service.guarded, ResolverConfig(in_doubt_after_s=0))
    with caplog.at_level(logging.WARNING, logger="concord_participant.resolver"):
        assert await resolver.check() == 0
    assert liar.asked == []
    assert "no coordinator is configured" in caplog.text and txn in caplog.text
    assert [b.transaction_id for b in service.ledger.in_doubt(2**62)] == [txn]


async def test_serve_refuses_a_resolver_it_could_not_dial(tmp_path: pathlib.Path) -> None:
    service, _ = prepared(tmp_path, "")
    with pytest.raises(ValueError, match="https:// URL.*ClientTls"):
        await serve(service, "127.0.0.1:0", ResolverConfig(coordinator="https://127.0.0.1:1"))

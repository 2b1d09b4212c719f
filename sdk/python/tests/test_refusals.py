"""The warnings of refused signatures (`concord_participant.refusals`), on a
clock the test moves: the first refusal of a kind is warned of at once,
the next ones within 10 s are counted, and the first after that is warned
of with the count; each kind on its own. Then the same through a service's
own check of its callers: a flood of forged calls is one warning, not one a
call."""

from __future__ import annotations

import logging
import pathlib
import uuid

import grpc
import pytest

from concord_participant import ParticipantService, SqliteLedger
from concord_participant.refusals import WARN_EVERY_S, Refusals
from concord_participant.server import Refused

from scripted import Scripted, install_sqlite
from signing import TEST_KEY, CoordinatorKey

LOGGER = "concord_participant.test_refusals"


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings logged so far, then forgotten."""
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return warned


def test_the_first_refusal_is_warned_of_at_once_then_one_warning_per_10_s_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    refusals = Refusals(logging.getLogger(LOGGER), clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        refusals.refused("mismatch", "refused Prepare #0: does not match it")
        assert warnings(caplog) == ["refused Prepare #0: does not match it"]
        for i in range(1, 137):
            clock.now += 0.05
            refusals.refused("mismatch", f"refused Prepare #{i}: does not match it")
        assert warnings(caplog) == [], "within 10 s of the first: counted, not logged"
        clock.now = 1000.0 + WARN_EVERY_S
        refusals.refused("mismatch", "refused Prepare #137: does not match it")
        assert warnings(caplog) == [
            "refused 137 calls with a signature that does not match them in the last 10 s; "
            "last: refused Prepare #137: does not match it"
        ]
        # The count starts again from that warning.
        clock.now += 1
        refusals.refused("mismatch", "refused Prepare #138: does not match it")
        assert warnings(caplog) == []
        clock.now += 60
        refusals.refused("mismatch", "refused Prepare #139: does not match it")
        assert warnings(caplog) == [
            "refused 2 calls with a signature that does not match them in the last 61 s; "
            "last: refused Prepare #139: does not match it"
        ]
        # A lone refusal after a quiet spell is its own message, no count.
        clock.now += 3600
        refusals.refused("mismatch", "refused Prepare #140: does not match it")
        assert warnings(caplog) == ["refused Prepare #140: does not match it"]


def test_each_reason_is_rate_limited_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    refusals = Refusals(logging.getLogger(LOGGER), clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        refusals.refused("mismatch", "a")
        refusals.refused("expired", "b")
        refusals.refused("unknown_key", "c")
        refusals.refused("mismatch", "d")
        refusals.refused("expired", "e")
        assert warnings(caplog) == ["a", "b", "c"]
        clock.now += WARN_EVERY_S
        refusals.refused("expired", "f")
        refusals.refused("malformed", "g")
        assert warnings(caplog) == [
            "refused 2 calls with an expired signature in the last 10 s; last: f",
            "g",
        ]
    # "d" and this one: the count a warning due now stands for, and since when.
    assert refusals.note("mismatch") == (2, WARN_EVERY_S)
    assert refusals.note("mismatch") is None


def test_a_flood_of_forged_calls_is_one_warning_with_its_count(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    service = ParticipantService(SqliteLedger(db), Scripted(), trusted_keys=TEST_KEY.trusted())
    clock = Clock()
    service.refusals = Refusals(logging.getLogger("concord_participant.server"), clock=clock)
    stranger = CoordinatorKey()
    txn = str(uuid.uuid4())

    def forged(branch: str) -> None:
        signature = stranger.sign("Prepare", txn, branch, b"commit")
        with pytest.raises(Refused) as refused:
            service.check_caller("Prepare", txn, branch, b"commit", signature)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED

    with caplog.at_level(logging.WARNING, logger="concord_participant.server"):
        for i in range(500):
            forged(f"b{i}")
            clock.now += 0.001
        # Unsigned calls are refused without a warning (the Rust SDK's rule).
        for i in range(10):
            with pytest.raises(Refused):
                service.check_caller("Prepare", txn, "b", b"commit", None)
        first = warnings(caplog)
        assert len(first) == 1 and "refused Prepare on branch 'b0'" in first[0], first
        assert "does not trust" in first[0]
        clock.now = 1000.0 + WARN_EVERY_S
        forged("last")
        (summary,) = warnings(caplog)
    assert summary.startswith(
        "refused 500 calls signed by a key this participant does not trust in the last 10 s; "
        "last: refused Prepare on branch 'last'"
    ), summary

"""Warnings of refused calls, rate-limited: a call (or Batch) whose
signature is not the coordinator's is worth an operator's eye, but a flood
of forged calls must not become a flood of log lines (nor cost a log write
each). As the Rust SDK's `Refusals` (participant/src/server/trust.rs), kept
apart for each reason a signature is refused (`SignatureError.kind`): the
first refusal of a kind is warned of at once, with its own message; the
next ones are counted, and the first that comes `WARN_EVERY_S` or more
after that kind's last warning is warned of with the count since then:

    refused 137 calls with a signature that does not match them in the
    last 10 s; last: refused Prepare on branch 'b1' of '...': ...

Pure: the clock is given (`time.monotonic` unless a test gives its own),
and nothing runs between refusals, so a burst's count is told by its
kind's next refusal after the quiet interval, not on a timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: At most one warning per reason this often: enough for an operator to
#: see an attack go on, not enough for one to fill the disk.
WARN_EVERY_S = 10.0

#: What each kind of refused signature is, said of the calls that carried
#: one (the kinds of `concord_participant.signature.SignatureError`).
_KINDS = {
    "missing": "unsigned calls",
    "malformed": "calls with a malformed signature",
    "unknown_key": "calls signed by a key this participant does not trust",
    "mismatch": "calls with a signature that does not match them",
    "expired": "calls with an expired signature",
}


@dataclass
class _Kind:
    #: When this kind was last warned of (the clock's reading).
    warned_at: float
    #: Refusals of this kind since then, not warned of yet.
    unwarned: int = 0


class Refusals:
    """The refusals of one service, counted by kind; `refused` logs the
    warnings due."""

    def __init__(
        self,
        log: logging.Logger,
        every_s: float = WARN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._every_s = every_s
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        # Calls are checked on the event loop, but a service may be shared
        # by more than one: counting stays exact either way.
        self._lock = threading.Lock()

    def note(self, kind: str) -> tuple[int, float] | None:
        """Counts one refusal of `kind` now. When a warning is due: how many
        refusals it stands for (this one and the unwarned before it) and
        the seconds since the kind's last warning (0 for the first);
        None while the kind's last warning is less than `every_s` old."""
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is None:
                self._kinds[kind] = _Kind(warned_at=now)
                return (1, 0.0)
            seen.unwarned += 1
            since = now - seen.warned_at
            if since < self._every_s:
                return None
            count, seen.unwarned, seen.warned_at = seen.unwarned, 0, now
            return (count, since)

    def refused(self, kind: str, message: str) -> None:
        """Logs the refusal described by `message` (what was refused and
        why) if a warning of its kind is due, with the count it stands for
        when that is more than this one."""
        due = self.note(kind)
        if due is None:
            return
        count, since = due
        if count == 1:
            self._log.warning("%s", message)
            return
        calls = _KINDS.get(kind, f"calls refused as {kind}")
        self._log.warning(
            "refused %d %s in the last %.0f s; last: %s", count, calls, since, message
        )

"""In-doubt resolution (docs/design.md §4), as the Rust SDK's
(participant/src/resolver.rs): a branch that voted COMMIT has promised to
wait for the coordinator's decision. When it has waited too long, or the
participant restarted and phase 2 may have come and gone, the resolver asks
`Coordinator.GetOutcome`, with backoff per branch, until it knows; then
applies the outcome through the same ledger-guarded path as a delivered
Commit or Abort, so it takes effect exactly once whichever arrives first.
The same loop prunes ledger rows of transactions finished longer ago than
the retention.

It asks only the coordinator it was configured with
(`ResolverConfig.coordinator`), never the address a prepare carried
(`BranchRef.coordinator`): that address is not signed, and a stranger who
named its own "coordinator" there could have it answer COMMITTED for a
transaction the real one aborted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from .client import CoordinatorClient, CoordinatorError, Retry
from .guarded import Guarded
from .ledger import BranchContext, InDoubt, Ledger, now_ms
from .tls import ClientTls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolverConfig:
    """How the resolver behaves."""

    #: The only coordinator asked about branches in doubt: a node's URL, or
    #: several (any nodes of any groups: the questions are then routed by
    #: the shard map, `CoordinatorClient.for_groups`). Without one, an
    #: in-doubt branch waits for phase 2 from the coordinator itself, and a
    #: warning says so.
    coordinator: str | tuple[str, ...] = ""
    #: How to dial an `https://` coordinator.
    tls: ClientTls | None = None
    #: A branch prepared by this process waits this long for phase 2 before
    #: asking on its own; branches prepared before the process started are
    #: asked about at once.
    in_doubt_after_s: float = 10.0
    #: How often to look for in-doubt branches.
    check_interval_s: float = 1.0
    #: Deadline of each GetOutcome call.
    call_timeout_s: float = 5.0
    #: Backoff between questions about one branch: first delay and cap.
    retry_min_s: float = 0.2
    retry_max_s: float = 30.0
    #: Ledger rows of finished transactions are deleted after this long.
    retention_s: float = 7 * 24 * 3600.0
    #: How often to prune.
    prune_interval_s: float = 60.0


class Resolver:
    """The loop, over one service's ledger and its guarded paths."""

    def __init__(
        self, ledger: Ledger[Any], guarded: Guarded[Any], config: ResolverConfig
    ) -> None:
        self.ledger = ledger
        self.guarded = guarded
        self.config = config
        self.started_at_ms = now_ms()
        # (transaction, branch) -> (when to ask next, questions asked)
        self._pending: dict[tuple[str, str], tuple[float, int]] = {}
        # Made here so that an address it cannot dial is said at the start
        # (its channels are made at the first question, on the loop).
        self._client = _client(config)
        self._last_prune = 0.0

    async def run(self) -> None:
        """Until cancelled."""
        try:
            while True:
                try:
                    await self.check()
                except Exception:  # a database or network failure: next round
                    log.exception("in-doubt check failed; trying again")
                await asyncio.sleep(self.config.check_interval_s)
        finally:
            await self.close()

    async def close(self) -> None:
        """Closes the client of the coordinator (`run` does when cancelled)."""
        if self._client is not None:
            await self._client.close()

    async def check(self) -> int:
        """Resolves every in-doubt branch whose turn has come; returns how
        many were resolved."""
        waited_ms = int(self.config.in_doubt_after_s * 1000)
        threshold = max(self.started_at_ms, now_ms() - waited_ms)
        found = await asyncio.to_thread(self.ledger.in_doubt, threshold)
        now = time.monotonic()
        resolved = 0
        for branch in found:
            key = (branch.transaction_id, branch.branch)
            next_at, asked = self._pending.get(key, (0.0, 0))
            if next_at > now:
                continue
            if await self._resolve(branch):
                self._pending.pop(key, None)
                resolved += 1
            else:
                delay = min(self.config.retry_max_s, self.config.retry_min_s * 2**asked)
                self._pending[key] = (now + random.uniform(delay / 2, delay), asked + 1)
        if now - self._last_prune >= self.config.prune_interval_s:
            self._last_prune = now
            older = now_ms() - int(self.config.retention_s * 1000)
            await asyncio.to_thread(self.ledger.prune, older)
        return resolved

    async def _resolve(self, branch: InDoubt) -> bool:
        client = self._client
        if client is None:
            log.warning(
                "branch %s of %s is in doubt and no coordinator is configured to ask "
                "(ResolverConfig.coordinator); it waits for the coordinator's phase 2. The "
                "address its prepare named is never asked: it is not signed",
                branch.branch,
                branch.transaction_id,
            )
            return False
        try:
            outcome = await client.outcome(branch.transaction_id)
        except CoordinatorError as error:
            log.info("cannot learn the outcome of %s yet: %s", branch.transaction_id, error)
            return False
        if outcome == "undecided":
            return False
        context = BranchContext(branch.transaction_id, branch.branch, branch.coordinator or "")
        payload = branch.payload or b""
        if outcome == "committed":
            await asyncio.to_thread(self.guarded.commit, context, payload)
        else:
            await asyncio.to_thread(self.guarded.abort, context, payload)
        log.info("in-doubt branch %s of %s: %s", branch.branch, branch.transaction_id, outcome)
        return True


def _client(config: ResolverConfig) -> CoordinatorClient | None:
    """The client of the configured coordinator; None without one."""
    address = config.coordinator
    if not address:
        return None
    # One attempt a question: the resolver's own backoff paces the next.
    timeout, retry = config.call_timeout_s, Retry(attempts=1)
    if isinstance(address, str):
        return CoordinatorClient(address, timeout, retry, config.tls)
    return CoordinatorClient.for_groups(list(address), timeout, retry, config.tls)

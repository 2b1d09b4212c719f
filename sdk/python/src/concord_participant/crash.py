"""Crash points for tests, as the Rust SDK's (participant/src/crash.rs):
with `CONCORD_PARTICIPANT_CRASH=<name>` in its environment, the process
kills itself with SIGKILL when it reaches the point of that name, so a test
can stop a participant at an exact place (right after it voted COMMIT,
say). Without the variable, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

#: The environment variable naming the point to die at.
VARIABLE = "CONCORD_PARTICIPANT_CRASH"


def point(name: str) -> None:
    if os.environ.get(VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)

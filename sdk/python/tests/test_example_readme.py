"""examples/python/README.md's commands run as printed (issue 32). Its
block fenced `sh` is read from the Markdown and run by bash from a
directory that is the checkout's root to those commands (`examples` links
to the checkout's, the coordinator's public key is at
`concord-data/signing.key.pub`), so the participant's `points.db` lands
there and not in the checkout: `examples/python/setup.sh` makes the
example's virtualenv, then the participant serves. Two values are changed,
and only they: the participant's port and the coordinator's URL, which
other tests may hold; the coordinator is the real one the Rust test that
runs this suite started (CONCORD_TEST_COORDINATOR_URL, its key in
CONCORD_TEST_COORDINATOR_PUBLIC_KEY). Then two branches with the payload
the README gives commit there, and ada's 100 points are 90 in the
participant's own database, no hold left. Ctrl-C (SIGINT) stops the
participant, and with it the commands, cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time

import pytest

from concord_participant import Branch, CoordinatorClient

from markdown import CHECKOUT, fenced

README = CHECKOUT / "examples" / "python" / "README.md"
COORDINATOR = os.environ.get("CONCORD_TEST_COORDINATOR_URL", "")
COORDINATOR_KEY = os.environ.get("CONCORD_TEST_COORDINATOR_PUBLIC_KEY", "")
#: What the README's command says, and what this test puts in its place.
README_LISTEN = "127.0.0.1:7601"
README_COORDINATOR = "http://127.0.0.1:7400"
#: setup.sh creates a virtualenv and builds the SDK when it has changed:
#: slow on a loaded machine, and other tests may be running it meanwhile.
READY_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


async def test_the_examples_readme_commands_run_a_participant_that_commits(
    tmp_path: pathlib.Path,
) -> None:
    if not COORDINATOR or not COORDINATOR_KEY:
        pytest.skip(
            "CONCORD_TEST_COORDINATOR_URL and CONCORD_TEST_COORDINATOR_PUBLIC_KEY are not set "
            "(cargo test sets them)"
        )
    text = README.read_text()
    commands = [block for block in fenced(README) if block.info == "sh"]
    assert len(commands) == 1, "one block of commands, fenced `sh`"
    script = commands[0].code
    for printed in (README_LISTEN, README_COORDINATOR, "concord-data/signing.key.pub"):
        assert printed in script, f"the README's commands name {printed}"
    payload = re.search(r"Payload of every branch or step: `(\{.*?\})`", text)
    assert payload, "the README gives the payload"
    port = free_port()
    script = script.replace(README_LISTEN, f"127.0.0.1:{port}")
    script = script.replace(README_COORDINATOR, COORDINATOR)
    (tmp_path / "examples").symlink_to(CHECKOUT / "examples", target_is_directory=True)
    (tmp_path / "concord-data").mkdir()
    shutil.copy(COORDINATOR_KEY, tmp_path / "concord-data" / "signing.key.pub")
    log_path = tmp_path / "commands.log"
    with open(log_path, "w") as log:
        # A session of its own, as in a terminal: a signal to it reaches
        # bash and the participant it runs.
        commands_run = subprocess.Popen(
            ["bash", "-euc", script],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not listening(port):
            assert commands_run.poll() is None, f"the commands ended: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"nothing serves: {log_path.read_text()}"
            await asyncio.sleep(0.2)
        here = f"http://127.0.0.1:{port}"
        async with CoordinatorClient(COORDINATOR, timeout_s=20) as client:
            begun = await client.begin(
                [
                    Branch(here, payload.group(1).encode(), "first"),
                    Branch(here, payload.group(1).encode(), "second"),
                ]
            )
            outcome = await client.commit(begun.transaction_id, wait_for_completion=True)
        assert outcome == "committed", log_path.read_text()
        with sqlite3.connect(tmp_path / "points.db") as db:
            ada = db.execute("SELECT balance FROM accounts WHERE name = 'ada'").fetchone()
            holds = db.execute("SELECT count(*) FROM holds").fetchone()[0]
        assert ada == (90,), "ada opened with 100 and gave 5 twice"
        assert holds == 0
        # Ctrl-C, as in a terminal: the participant drains and exits, and
        # the commands end with it.
        os.killpg(commands_run.pid, signal.SIGINT)
        assert commands_run.wait(timeout=20) == 0, log_path.read_text()
        assert not listening(port)
    finally:
        if commands_run.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(commands_run.pid, signal.SIGKILL)
            commands_run.wait()

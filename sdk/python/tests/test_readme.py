"""sdk/python/README.md runs as printed (issue 32). Every block fenced
`python` is read from the Markdown and run as a program of its own, with
this virtualenv's Python, in a directory of its own, against a real
coordinator (the Rust test that runs this suite, tests/tests/python,
starts it and sets CONCORD_TEST_COORDINATOR_URL and
CONCORD_TEST_COORDINATOR_PUBLIC_KEY), named the way the README says:
CONCORD_COORDINATOR and CONCORD_COORDINATOR_KEY. Each must end by itself
and succeed. The opening example must have done what it printed: the
coordinator says its transaction committed, and its own database holds
ada's 5 points and bob's 95, no hold left, and the SDK's ledger rows of
both branches. Blocks fenced `python fragment` show one setting each and
are not programs; any other fence that names Python is a mistake that
would skip a block unseen. (Its `pip install ./sdk/python` is run from a
read-only copy of the checkout by scripts/test-python-sdk.sh.)"""

from __future__ import annotations

import os
import pathlib
import re
import sqlite3
import subprocess
import sys

import pytest

from concord_participant import SyncCoordinatorClient

from markdown import CHECKOUT, Block, fenced

README = CHECKOUT / "sdk" / "python" / "README.md"
COORDINATOR = os.environ.get("CONCORD_TEST_COORDINATOR_URL", "")
COORDINATOR_KEY = os.environ.get("CONCORD_TEST_COORDINATOR_PUBLIC_KEY", "")
#: Long enough for a loaded machine; a snippet that serves forever fails
#: here instead of hanging the suite.
RUN_TIMEOUT_S = 60.0


def programs() -> list[Block]:
    return [block for block in fenced(README) if block.info == "python"]


def run(block: Block, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """Runs `block` as printed, with the coordinator the README's way."""
    if not COORDINATOR or not COORDINATOR_KEY:
        pytest.skip(
            "CONCORD_TEST_COORDINATOR_URL and CONCORD_TEST_COORDINATOR_PUBLIC_KEY are not set "
            "(cargo test sets them)"
        )
    program = cwd / f"readme_line_{block.line}.py"
    program.write_text(block.code)
    env = dict(
        os.environ, CONCORD_COORDINATOR=COORDINATOR, CONCORD_COORDINATOR_KEY=COORDINATOR_KEY
    )
    ran = subprocess.run(
        [sys.executable, program.name],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert ran.returncode == 0, (
        f"README.md:{block.line}: exited {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    )
    return ran


def test_every_python_fence_is_a_program_or_says_fragment() -> None:
    wrong = [
        f"README.md:{block.line}: ```{block.info}"
        for block in fenced(README)
        if block.info.split(" ")[0] in ("python", "python3", "py")
        and block.info not in ("python", "python fragment")
    ]
    assert not wrong, f"fence Python as `python` (a program) or `python fragment`: {wrong}"
    assert programs(), "README.md opens with a whole program, fenced `python`"


@pytest.mark.parametrize("block", programs(), ids=lambda block: f"line-{block.line}")
def test_every_program_runs_as_printed(block: Block, tmp_path: pathlib.Path) -> None:
    run(block, tmp_path)


def test_the_opening_example_commits_and_its_database_shows_it(tmp_path: pathlib.Path) -> None:
    ran = run(programs()[0], tmp_path)
    printed = re.fullmatch(r"transaction (\S+) (\w+): (.*)\n", ran.stdout)
    assert printed, f"it prints the transaction and its outcome: {ran.stdout!r}"
    txn, outcome, balances = printed.groups()
    assert outcome == "committed", ran.stdout + ran.stderr
    assert balances == "{'ada': 5, 'bob': 95}"
    with SyncCoordinatorClient(COORDINATOR, timeout_s=20) as client:
        assert client.outcome(txn) == "committed"
    with sqlite3.connect(tmp_path / "points.db") as db:
        accounts = dict(db.execute("SELECT name, balance FROM accounts"))
        holds = db.execute("SELECT count(*) FROM holds").fetchone()[0]
        ledger = db.execute(
            "SELECT branch, op, result FROM concord_ledger WHERE txn_id = ? ORDER BY branch, op",
            (txn,),
        ).fetchall()
    assert accounts == {"ada": 5, "bob": 95}
    assert holds == 0, "a committed branch keeps no hold"
    assert [(branch, op) for branch, op, _ in ledger] == [
        ("ada", "commit"),
        ("ada", "prepare"),
        ("bob", "commit"),
        ("bob", "prepare"),
    ], ledger

"""The tests import their scripted participant from this directory, and
share the `ledger` fixture: each test that takes it runs on SQLite and on
PostgreSQL (when the Rust test that runs this suite set
CONCORD_TEST_POSTGRES_URL)."""

import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from concord_participant import Ledger, PostgresLedger, SqliteLedger  # noqa: E402

from scripted import POSTGRES, install_postgres, install_sqlite  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Ledger[Any]]:
    """A ledger (installed) in a database with the scripted effects table."""
    made: Ledger[Any]
    if request.param == "sqlite":
        db = str(tmp_path / "participant.db")
        install_sqlite(db)
        made = SqliteLedger(db)
    else:
        if not POSTGRES:
            pytest.skip("CONCORD_TEST_POSTGRES_URL is not set (cargo test sets it)")
        install_postgres(POSTGRES)
        made = PostgresLedger(POSTGRES)
    made.install()
    yield made
    if isinstance(made, PostgresLedger):
        made.close()

"""Fixtures shared by the test files: a private PostgreSQL server for the shared-storage tests."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator

import pytest

_databases = itertools.count()

# A test run started in the background by a non-interactive shell inherits SIGINT ignored, and so
# would every `harness` process it starts: the Ctrl-C tests need Python's own handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One PostgreSQL server on 127.0.0.1 for the session (see harness.testing.postgres). Outside
    CI a machine without PostgreSQL skips these tests with the reason; in CI (env CI set) they
    fail instead, so that CI never passes without them."""
    from harness.testing.postgres import PostgresUnavailable, start_postgres

    try:
        import psycopg  # noqa: F401  (the driver of `pip install "harness[postgres]"`)

        server = start_postgres()
    except (ImportError, PostgresUnavailable) as exc:
        message = f"no PostgreSQL server could be started: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (in CI this is an error: .ci/run installs PostgreSQL)")
        pytest.skip(message)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """The URL of a new, empty database on the session's server."""
    return postgres_server.create_database(f"test_{os.getpid()}_{next(_databases)}")

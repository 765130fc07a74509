"""A throw-away PostgreSQL server on 127.0.0.1, for tests and benchmarks of shared study storage.

:func:`start_postgres` runs ``initdb`` and ``pg_ctl`` of the machine's PostgreSQL (Debian's
``postgresql`` package puts them under ``/usr/lib/postgresql/VERSION/bin``) in a new temporary
directory, on a free port, with trust authentication and no fsync (the data is thrown away).
PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "start_postgres"]

_USER = "harness"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here (the message says why)."""


@dataclass
class PostgresServer:
    """A running server: :meth:`create_database` gives the URL of a new database on it."""

    root: Path
    port: int
    bin_dir: Path
    run_as: str | None

    def url(self, database: str) -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (letters, digits, underscores) and return its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database names here are letters, digits and underscores, not {name!r}")
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=120)
        if done.returncode:
            raise PostgresUnavailable(f"{tool} failed: {(done.stderr or done.stdout).strip()}")


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
                      else 0)
    if not versions:
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb) here; install Debian's "
                                  "`postgresql` package (apt-get install postgresql)")
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_postgres() -> PostgresServer:
    """Start a private server; raises :class:`PostgresUnavailable` with the reason when it cannot."""
    bin_dir = _bin_dir()
    run_as = None
    root = Path(tempfile.mkdtemp(prefix="harness-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailable("running as root and there is no `postgres` user to run the "
                                      "server as (PostgreSQL refuses root)") from None
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = "postgres"
    server = PostgresServer(root, _free_port(), bin_dir, run_as)
    try:
        server._run("initdb", "-N", "-D", str(root / "data"), "-U", _USER, "--auth=trust", "-E", "UTF8")
        options = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        server._run("pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o", options,
                    "start")
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        log = root / "log"
        tail = log.read_text()[-500:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"{exc}{' | ' + tail if tail else ''}") from None
    return server

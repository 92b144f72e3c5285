"""A throwaway PostgreSQL cluster for the tests (no tests here).

`PgCluster.start()` runs Debian's `initdb` into a temporary folder and a
`postgres` on 127.0.0.1 with a free port (trust authentication, fsync off:
nothing in it has to survive).  `create_role()` gives each test a role with its
own empty schema, so tests stay independent.  When run as root (CI), the
server runs as the `postgres` system user: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

import psycopg

USER = "newsletter"
DATABASE = "newsletter_tests"
PR_SET_PDEATHSIG = 1  # prctl(2)


def find_bindir() -> Path | None:
    """The folder with initdb/postgres: $PG_BINDIR, Debian's newest, or the PATH."""
    if env := os.environ.get("PG_BINDIR"):
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = count(1)
        self._demote: Callable[[], None] | None = None
        if os.geteuid() == 0:
            account = pwd.getpwnam(os.environ.get("PG_TEST_OS_USER", "postgres"))
            os.chown(self.root, account.pw_uid, account.pw_gid)
            uid, gid = account.pw_uid, account.pw_gid

            def demote() -> None:
                os.setgid(gid)
                os.setuid(uid)

            self._demote = demote

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            preexec_fn=self._demote,
            cwd=self.root,
        )

    def start(self) -> PgCluster:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "-N")
        # The port was free when picked, not necessarily when postgres binds it
        # (after initdb and its own start-up, seconds on a loaded machine):
        # another process may take it in between.  postgres then exits, and
        # starts again on another port.
        for _attempt in range(5):
            if self._serve():
                return self
            self.port = free_port()
        raise RuntimeError("postgres did not start: " + (self.root / "postgres.log").read_text())

    def _serve(self) -> bool:
        """Start postgres on `self.port`: True once it answers, False if it exited."""
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (lives with the server)
        self.proc = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=64MB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._server_child,
            cwd=self.root,
        )
        log.close()
        deadline = time.monotonic() + 60  # bounds a hang only
        while self.proc.poll() is None:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                    autocommit=True, connect_timeout=5,
                ) as conn:  # fmt: skip
                    if not self._is_ours(conn):
                        # Another process's server holds the port: ours exits.
                        self.proc.wait(timeout=60)
                        return False
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                    return True
            except psycopg.OperationalError:
                if self.proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    text = (self.root / "postgres.log").read_text()
                    self.stop()
                    raise RuntimeError("postgres did not start: " + text) from None
                time.sleep(0.05)
        return False

    def _server_child(self) -> None:
        """In the forked child, before postgres: demoted (as root), and told to
        stop when the test process dies without `stop()` (a killed pytest left
        its cluster running for good)."""
        if self._demote is not None:
            self._demote()
        # After the demotion, which clears it.  SIGINT: a fast shutdown.  The
        # signal comes when the thread that started it ends: start clusters
        # from the main thread (the session fixture does).
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGINT)

    def _is_ours(self, conn: psycopg.Connection) -> bool:
        """The server on `self.port` runs on this cluster's folder (trust
        authentication would let the tests into anyone's)."""
        row = conn.execute("SHOW data_directory").fetchone()
        return row is not None and Path(row[0]).resolve() == self.data.resolve()

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname=dbname, autocommit=True
        )

    def url(self, role: str, dbname: str = DATABASE) -> str:
        return f"postgresql+psycopg://{role}@127.0.0.1:{self.port}/{dbname}"

    def create_role(self) -> str:
        """A fresh login role with an empty schema of its own; returns its name.

        Cheaper than CREATE DATABASE (which checkpoints: ~0.4 s here): the role
        finds its schema first on PostgreSQL's default search path ("$user").
        """
        name = f"t{next(self._names)}"
        with self.admin(DATABASE) as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN")
            conn.execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
        return name

    def drop_role(self, name: str) -> None:
        """Drop it with its schema, ending the sessions a test left open."""
        with self.admin(DATABASE) as conn:
            self._end_sessions(conn, name)
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            conn.execute(f"DROP ROLE IF EXISTS {name}")

    def lock_out(self, name: str) -> None:
        """Refuse every later connection of this role (a database gone away)."""
        with self.admin(DATABASE) as conn:
            conn.execute(f"ALTER ROLE {name} NOLOGIN")
            self._end_sessions(conn, name)

    def let_in(self, name: str) -> None:
        """Undo `lock_out`: the database is back."""
        with self.admin(DATABASE) as conn:
            conn.execute(f"ALTER ROLE {name} LOGIN")

    @staticmethod
    def _end_sessions(conn: psycopg.Connection, role: str) -> None:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for clients).
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)

"""PostgreSQL for the tests: a fresh database per test on the shared server (127.0.0.1:5432, set
up by `./dev setup`), and `OwnPostgres`, a throwaway server a test owns and may stop, crash and
restart (outage tests) without touching the shared server."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import asyncpg

SHARED_HOST = "127.0.0.1:5432"
SHARED_DSN = f"postgresql://postgres@{SHARED_HOST}/postgres"


def _bindir() -> Path:
    """The newest installed PostgreSQL server's binaries (Debian layout), else those on PATH."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    if found:
        return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    postgres = shutil.which("postgres")
    if postgres is None:
        raise RuntimeError("no PostgreSQL server binaries (run ./dev setup)")
    return Path(postgres).parent


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database on the shared server; yields its URL and drops it afterwards."""
    name = f"smsbridge_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(SHARED_DSN, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql://postgres@{SHARED_HOST}/{name}"
    finally:
        conn = await asyncpg.connect(SHARED_DSN, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stable_free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, so that no outgoing connection is
    given it while the server is down (outage tests restart on the same port)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low > 11000:
        for _ in range(200):
            port = random.randrange(10000, low)
            if _port_is_free(port):
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_LIVE: set[OwnPostgres] = set()


class OwnPostgres:
    """A PostgreSQL server of the test's own: `initdb` into a temporary directory, listening on
    127.0.0.1 on a free port (kept across restarts) with trust auth, its unix socket in the same
    directory, fsync off. As root the server runs as the `postgres` OS user (PostgreSQL refuses to
    run as root); otherwise as the current user.

        with OwnPostgres() as pg:            # or: async with OwnPostgres() as pg:
            url = await pg.create_database("ledger")
            pg.stop()                        # an outage: connections are lost
            pg.start()                       # same port, same data

    The blocking methods have async twins (`astart`, `astop`, `akill9`) for use while a bridge
    runs in the same event loop."""

    def __init__(self, *, start: bool = True, start_timeout: float = 30.0) -> None:
        self.bindir = _bindir()
        self.start_timeout = start_timeout
        self.port = _stable_free_port()
        self._user: dict[str, Any] = {}
        tmp_parent: str | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            tmp_parent = "/tmp"  # the postgres user must be able to reach the directory
        self.dir = Path(tempfile.mkdtemp(prefix="smsbridge-pg-", dir=tmp_parent))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        _LIVE.add(self)
        try:
            if self._user:
                os.chown(self.dir, self._user["user"], self._user["group"])
            self._run(
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            )
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# OwnPostgres (tests)\n"
                    f"port = {self.port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.dir}'\n"
                    "fsync = off\n"
                    "full_page_writes = off\n"
                    "logging_collector = off\n"
                )
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- processes --------------------------------------------------------------------------

    def _run(self, *argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, timeout=120, cwd=self.dir, **self._user)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({done.returncode}):\n"
                + done.stdout.decode(errors="replace")
                + done.stderr.decode(errors="replace")
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Starts the server (again) and waits until it accepts connections; after a crash or an
        immediate stop it first runs crash recovery."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.dir,
                start_new_session=True,  # its own process group: kill9() takes the backends too
                **self._user,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self._ready():
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"postgres exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"postgres did not start in time:\n{self.log_tail()}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        """postmaster.pid says "ready" (what pg_ctl waits for) and the TCP port answers."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        assert self._proc is not None
        if len(lines) < 8 or lines[0].strip() != str(self._proc.pid):
            return False
        if lines[7].strip() != "ready":
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self, mode: StopMode = "immediate", timeout: float = 30.0) -> None:
        """Stops the server: "immediate" (the default) drops every connection at once with no
        shutdown checkpoint, as an outage would; "fast" and "smart" are the clean shutdowns."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(_STOP_SIGNALS[mode])
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                return
        self._reap_group(proc.pid)
        self._proc = None

    def kill9(self) -> None:
        """SIGKILLs the postmaster and all its backends (a machine crash, minus the disk cache)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._reap_group(proc.pid)
        self._proc = None

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Waits (briefly) until no live process of the server's group is left (zombies don't
        count: PID 1 may not reap them): a restart needs the old shared memory detached."""
        deadline = time.monotonic() + 10
        while _group_members(pgid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                return
            time.sleep(0.01)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, mode: StopMode = "immediate") -> None:
        await asyncio.to_thread(self.stop, mode)

    async def akill9(self) -> None:
        await asyncio.to_thread(self.kill9)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- databases --------------------------------------------------------------------------

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    async def create_database(self, name: str) -> str:
        """Creates the database `name` and returns its URL."""
        conn = await asyncpg.connect(self.url(), timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    # -- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the server (immediately) and removes its directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    @classmethod
    async def acreate(cls, **kwargs: Any) -> OwnPostgres:
        """Builds and starts one without blocking the event loop."""
        return await asyncio.to_thread(lambda: cls(**kwargs))


@atexit.register
def _close_leftovers() -> None:
    for pg in list(_LIVE):
        pg.close()

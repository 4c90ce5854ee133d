"""Component processes (start, wait, stop, peak RSS), configuration files, vhosts, machine info.

Every process is started in its own session and remembered until it is stopped, so nothing
outlives the benchmark: ``Procs`` stops what it started on exit (errors included), and an
``atexit`` hook kills whatever is still registered if the interpreter exits another way.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BROKER_HOST = "127.0.0.1:5672"
SBIN = "/usr/sbin"

_LIVE: dict[int, str] = {}  # pid (= process group id) -> name, for the atexit safety net


def kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _LIVE.pop(pid, None)


atexit.register(kill_leftovers)


class ProcessDied(RuntimeError):
    pass


# -- RabbitMQ -----------------------------------------------------------------------------------


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + os.pathsep + SBIN}
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return done.stdout.strip()


def broker_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        return False
    return True


async def wait_broker(timeout: float = 90.0) -> None:
    """Another test may restart RabbitMQ: wait for it to answer again."""
    deadline = time.monotonic() + timeout
    while not broker_up():
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ is not answering on 127.0.0.1:5672")
        await asyncio.sleep(1.0)


async def _ctl_retrying(*args: str, timeout: float = 120.0) -> None:
    """rabbitmqctl, retried while the broker is restarted (another test stops it briefly)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(rabbitmqctl, *args)
            return
        except subprocess.CalledProcessError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"rabbitmqctl {args[0]} failed: {exc.stdout}{exc.stderr}"
                ) from None
            await asyncio.sleep(2.0)


@asynccontextmanager
async def fresh_vhost(tag: str) -> AsyncIterator[str]:
    """A new vhost for one run (deleted afterwards, even on errors); yields its AMQP URL."""
    name = f"smsbridge-bench-{tag}-{uuid.uuid4().hex[:8]}"
    await _ctl_retrying("add_vhost", name)
    try:
        await _ctl_retrying("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        await wait_broker()
        yield f"amqp://guest:guest@{BROKER_HOST}/{name}"
    finally:
        try:
            await asyncio.shield(_ctl_retrying("delete_vhost", name, timeout=90.0))
        except Exception as exc:  # the broker may be restarting; say so, do not mask errors
            print(f"warning: could not delete vhost {name}: {exc}", file=sys.stderr)


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smsbridge_argv(config: Path | None, *args: str) -> list[str]:
    """``smsbridge [--config FILE] ARGS`` with this interpreter's console script."""
    script = Path(sys.executable).parent / "smsbridge"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "smsbridge.cli"]
    return [*base, *(["--config", str(config)] if config else []), *args]


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        _LIVE[self.process.pid] = self.name

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def check(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise ProcessDied(
                f"{self.name} exited with {self.process.returncode}; last log lines:\n"
                + self.tail()
            )

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mib(self) -> float | None:
        return vm_hwm_mib(self.pid) if self.alive() else None

    async def stop(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process is not None:
            # The group may still hold a child (none of ours fork, but be sure).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            _LIVE.pop(process.pid, None)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Procs:
    """Processes of one run: ``async with Procs(logdir) as procs`` stops them all on exit."""

    logdir: Path
    started: list[Proc] = field(default_factory=list)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.stop_all())

    async def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> Proc:
        proc = Proc(name, list(argv), self.logdir / f"{name}.log")
        self.started.append(proc)
        await proc.start(env)
        return proc

    async def stop_all(self) -> None:
        for proc in reversed(self.started):
            await proc.stop()

    def check(self) -> None:
        for proc in self.started:
            proc.check()


async def run_tool(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a short-lived tool (wrk, the load generator) and return its stdout."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    _LIVE[process.pid] = argv[0]
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        _LIVE.pop(process.pid, None)
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {err.decode()[-2000:]}")
    return out.decode()


async def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """Wait until GET ``url`` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            proc.check()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name}: {url} not ready after {timeout} s\n{proc.tail()}")
            await asyncio.sleep(0.1)


async def wait_port(port: int, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc.check()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name}: port {port} not open\n{proc.tail()}") from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    name: str
    access_key: str
    secret_key: str
    sms_per_second: float = 5.0


@dataclass(frozen=True)
class Number:
    number: str
    provider: str
    url_prefix: str = "flowrouteinbound"
    source: tuple[str, ...] = ()
    destination: str | None = None


INBOUND_NUMBER = Number("+12025551234", "flowroute", source=("100",), destination="100")


def bridge_config(
    path: Path,
    amqp_url: str,
    *,
    gateway_port: int,
    api_url: str = "http://127.0.0.1:9/v2.2",
    providers: Sequence[Provider] = (Provider("flowroute", "bench-access", "bench-secret"),),
    numbers: Sequence[Number] = (INBOUND_NUMBER,),
    concurrency: int = 256,
    prefetch: int = 200,
    ledger_url: str | None = None,
) -> Path:
    """Write a bridge configuration: JSON logs at level warning, no delivery receipts; with
    ``ledger_url`` a ``[ledger]`` section (migrations applied at start)."""
    lines = [
        "[broker]",
        f'url = "{amqp_url}"',
        f"prefetch = {prefetch}",
        "",
        "[gateway]",
        f'listen = "127.0.0.1:{gateway_port}"',
        f'public_url = "http://127.0.0.1:{gateway_port}"',
        "",
        "[media]",
        f'dir = "{path.parent / "media"}"',
        "",
        "[outbound]",
        f"concurrency = {concurrency}",
        "",
        "[logging]",
        'level = "warning"',
        'format = "json"',
    ]
    if ledger_url:
        lines += ["", "[ledger]", f'url = "{ledger_url}"']
    for p in providers:
        lines += [
            "",
            "[[providers]]",
            f'name = "{p.name}"',
            'type = "flowroute"',
            f'api_url = "{api_url}"',
            f'access_key = "{p.access_key}"',
            f'secret_key = "{p.secret_key}"',
            f"sms_per_second = {p.sms_per_second}",
            "mms_per_second = 1",
        ]
    for n in numbers:
        source = ", ".join(f'"{s}"' for s in n.source)
        lines += [
            "",
            "[[numbers]]",
            f'number = "{n.number}"',
            f'provider = "{n.provider}"',
            f'url_prefix = "{n.url_prefix}"',
            f"source = [{source}]",
        ]
        if n.destination:
            lines.append(f'destination = "{n.destination}"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the machine --------------------------------------------------------------------------------


def _first(path: str, prefix: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_info() -> list[tuple[str, str]]:
    from importlib.metadata import version

    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    try:
        rabbit = rabbitmqctl("version")
    except Exception:
        rabbit = "?"
    wrk = shutil.which("wrk")
    return [
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("CPU", _first("/proc/cpuinfo", "model name")),
        ("RAM", f"{int(mem_kib) / 1024 / 1024:.1f} GiB" if mem_kib.isdigit() else "?"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("RabbitMQ", rabbit),
        ("PostgreSQL (the ledger)", _version(["psql", "--version"])),
        (
            "aiohttp / aio-pika / asyncpg",
            f"{version('aiohttp')} / {version('aio-pika')} / {version('asyncpg')}",
        ),
        ("wrk", _version([wrk, "-v"]) if wrk else "not installed"),
    ]

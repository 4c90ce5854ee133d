"""A throwaway 3-node RabbitMQ cluster on loopback, for the cluster fault test.

It is entirely separate from the machine's own broker (`rabbit@localhost`, port 5672, its
epmd on 4369, its data in /var/lib/rabbitmq, its cookie), which other tests share:

- every node has its own name (`smsbt<i>-<run>@localhost`), AMQP port, Erlang distribution
  port and config/data/log directories, all under one temporary directory;
- the nodes and the `rabbitmqctl` calls made here use their own epmd (on its own port,
  `ERL_EPMD_PORT`) and their own Erlang cookie (`$HOME/.erlang.cookie` with `HOME` set to the
  temporary directory): the shared node cannot even see them;
- `RABBITMQ_CONF_ENV_FILE` points at an empty file, so /etc/rabbitmq/rabbitmq-env.conf (which
  names the shared node) is not read; the plugins file is empty (no management or prometheus
  listeners); the CLI's own distribution port is left to the OS (`RABBITMQ_CTL_DIST_PORT_*`).

The scripts are run directly from /usr/lib/rabbitmq/bin, not through the /usr/sbin wrappers
(those switch to the `rabbitmq` user and its cookie). Every process is started in its own
session, and teardown kills exactly those process groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"

# Ports the shared broker uses (AMQP, distribution, epmd, management, CLI range, streams...):
# never handed to a node of ours even if they happen to be free.
SHARED_PORTS = {4369, 5671, 5672, 5552, 15672, 15692, 25672, *range(35672, 35683)}
# Below the kernel's ephemeral range (32768+), so neither `free_port()` in other tests nor
# outgoing connections pick them while our nodes start.
PORT_RANGE = (20000, 32000)


def available() -> bool:
    """RabbitMQ's scripts and an epmd binary are installed."""
    return RABBITMQ_SERVER.exists() and RABBITMQCTL.exists() and shutil.which("epmd") is not None


def pick_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that are free now."""
    chosen: list[int] = []
    while len(chosen) < n:
        port = random.randrange(*PORT_RANGE)
        if port in SHARED_PORTS or port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class ClusterError(RuntimeError):
    pass


@dataclass
class Node:
    name: str  # e.g. smsbt1-1a2b3c@localhost
    amqp_port: int
    dist_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        # guest/guest is accepted from loopback only, which is all this is.
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid_file(self) -> Path:
        return self.dir / "rabbitmq.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / f"{self.name}.log"

    @property
    def stdout_file(self) -> Path:
        return self.dir / "stdout.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Connection:
    """A client connection as the cluster sees it."""

    name: str  # the client-provided connection_name ("" if none)
    node: str  # the node it is connected to
    consumers: int  # consumers on its channels


@dataclass
class Cluster:
    root: Path
    nodes: list[Node]
    epmd_port: int
    epmd: subprocess.Popen[bytes] | None = None
    down: set[str] = field(default_factory=set)  # nodes killed and not started again
    timings: dict[str, float] = field(default_factory=dict)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, size: int = 3) -> Cluster:
        run = uuid.uuid4().hex[:6]
        ports = pick_ports(2 * size + 1)
        nodes = []
        for i in range(size):
            name = f"smsbt{i + 1}-{run}@localhost"
            node = Node(name, ports[2 * i], ports[2 * i + 1], root / name.split("@")[0])
            nodes.append(node)
        cluster = cls(root, nodes, ports[-1])
        cluster._write_files()
        return cluster

    def _write_files(self) -> None:
        home = self.root / "home"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq's
        (self.root / "enabled_plugins").write_text("[].\n")  # no plugin, no extra listener
        for node in self.nodes:
            (node.dir / "log").mkdir(parents=True)
            (node.dir / "mnesia").mkdir()
            (node.dir / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
                "loopback_users.guest = true\n"
                "cluster_partition_handling = pause_minority\n"
                "log.file.level = info\n"
                "log.console = false\n"
            )

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.root / "home"),  # the cookie; the same for nodes and CLI calls
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
        )
        return env

    def node_env(self, node: Node) -> dict[str, str]:
        return {
            **self._base_env(),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(node.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.dir / "advanced.config"),  # absent
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(node.dir / "mnesia"),
            "RABBITMQ_MNESIA_DIR": str(node.dir / "mnesia" / "data"),
            "RABBITMQ_LOG_BASE": str(node.dir / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            # Inter-node traffic on loopback only, like the shared node.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def cli_env(self) -> dict[str, str]:
        # The CLI's own distribution listener: any free port (not the shared 35672-35682).
        return {
            **self._base_env(),
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
        }

    # -- rabbitmqctl ----------------------------------------------------------------------
    def ctl(self, node: Node | str, *args: str, timeout: float = 60) -> str:
        name = node.name if isinstance(node, Node) else node
        cmd = [str(RABBITMQCTL), "-q", "-n", name, *args]
        try:
            done = subprocess.run(
                cmd,
                env=self.cli_env(),
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"rabbitmqctl {' '.join(args)} on {name}: timed out") from None
        if done.returncode != 0:
            raise ClusterError(
                f"rabbitmqctl {' '.join(args)} on {name}: exit {done.returncode}\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def ctl_json(self, node: Node | str, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.ctl(node, *args, "--formatter", "json", timeout=timeout))

    # -- processes ------------------------------------------------------------------------
    def _start_epmd(self) -> None:
        epmd = shutil.which("epmd")
        assert epmd is not None
        with (self.root / "epmd.log").open("wb") as out:
            self.epmd = subprocess.Popen(
                [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not port_open(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"epmd did not start on {self.epmd_port}")
            time.sleep(0.05)

    def _spawn(self, node: Node) -> None:
        assert not node.running(), f"{node.name} is already running"
        node.pid_file.unlink(missing_ok=True)  # stale after a kill -9
        node.starts += 1
        with node.stdout_file.open("ab") as out:
            node.proc = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                env=self.node_env(node),
                cwd=node.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: teardown kills just that
            )

    def _wait_booted(self, node: Node, timeout: float = 90) -> None:
        """Until the node's AMQP listener is up and `await_startup` says it booted."""
        deadline = time.monotonic() + timeout
        while not port_open(node.amqp_port):
            if not node.running():
                raise ClusterError(f"{node.name} exited while starting:\n{self.tail(node)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.name} did not start in {timeout} s:\n{self.tail(node)}")
            time.sleep(0.2)
        self.ctl(node, "await_startup", "--timeout", str(int(timeout)))

    def running_nodes(self, via: Node | None = None) -> list[str]:
        via = via or self.live()[0]
        status = self.ctl_json(via, "cluster_status")
        return sorted(status.get("running_nodes", []))

    def _wait_running(self, expected: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            for via in self.live():
                with contextlib.suppress(ClusterError):
                    seen = self.running_nodes(via)
                    break
            if seen == sorted(expected):
                return
            time.sleep(0.5)
        raise ClusterError(f"cluster_status shows {seen}, expected {sorted(expected)}")

    def _form(self) -> None:
        started = time.monotonic()
        self._start_epmd()
        for node in self.nodes:  # all booting at once
            self._spawn(node)
        for node in self.nodes:
            self._wait_booted(node)
        self.timings["boot"] = time.monotonic() - started
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        self._wait_running([n.name for n in self.nodes])
        self.timings["formed"] = time.monotonic() - started

    # -- what tests use -------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def node_of_port(self, port: int) -> Node:
        for node in self.nodes:
            if port == node.amqp_port:
                return node
        raise KeyError(port)

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.name not in self.down and n.running()]

    def beam_pid(self, node: Node) -> int:
        """The OS pid of the node's Erlang VM (from its pid file, checked to be our child)."""
        assert node.proc is not None
        pid = int(node.pid_file.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != node.proc.pid:
            raise ClusterError(f"pid {pid} of {node.name} is not a child of {node.proc.pid}")
        return pid

    async def kill9(self, node: Node) -> int:
        """SIGKILL the node's VM: no shutdown, no goodbye to its peers or clients."""
        pid = self.beam_pid(node)
        os.kill(pid, signal.SIGKILL)
        self.down.add(node.name)
        assert node.proc is not None
        await asyncio.to_thread(node.proc.wait, 10)  # the wrapper script exits after it
        return pid

    async def start(self, node: Node, timeout: float = 90) -> float:
        """Start a killed node again (same name and data: it rejoins); seconds until the
        cluster shows every node running."""
        started = time.monotonic()
        self._spawn(node)
        await asyncio.to_thread(self._wait_booted, node, timeout)
        self.down.discard(node.name)
        await asyncio.to_thread(self._wait_running, [n.name for n in self.nodes], timeout)
        return time.monotonic() - started

    def connections(self) -> list[Connection]:
        """Every client connection on the running nodes, with its node and consumer count."""
        via = self.live()[0]
        conns = self.ctl_json(via, "list_connections", "pid", "name", "client_properties")
        channels = self.ctl_json(via, "list_channels", "connection", "consumer_count")
        consumers: dict[str, int] = {}
        for channel in channels:
            key = str(channel["connection"])
            consumers[key] = consumers.get(key, 0) + int(channel["consumer_count"])
        out = []
        for conn in conns:
            # name: "127.0.0.1:54321 -> 127.0.0.1:<the node's AMQP port>"
            port = int(str(conn["name"]).rsplit(":", 1)[1])
            out.append(
                Connection(
                    name=_connection_name(conn.get("client_properties")),
                    node=self.node_of_port(port).name,
                    consumers=consumers.get(str(conn["pid"]), 0),
                )
            )
        return out

    async def aconnections(self) -> list[Connection]:
        return await asyncio.to_thread(self.connections)

    # -- teardown -------------------------------------------------------------------------
    def tail(self, node: Node, lines: int = 40) -> str:
        text = ""
        for path in (node.stdout_file, node.log_file):
            if path.exists():
                text += f"--- {path}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-lines:]
                )
        return text

    def stop(self) -> None:
        """Kill every process this cluster started and wait for them: each VM first (so that
        its wrapper script reaps it), then each node's process group (the wrapper and the VM's
        helpers: erl_child_setup, inet_gethost), then epmd."""
        for node in self.nodes:
            if node.running():
                with contextlib.suppress(OSError, ValueError, ClusterError):
                    os.kill(self.beam_pid(node), signal.SIGKILL)
        groups = [n.proc for n in self.nodes if n.proc is not None]
        for proc in groups:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)  # the wrapper exits once its VM is gone
        if self.epmd is not None:
            groups.append(self.epmd)
        for proc in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in its group
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _connection_name(properties: Any) -> str:
    """client_properties as rabbitmqctl's JSON formatter renders them (a map or a list of
    [key, type, value] triples, depending on the version)."""
    if isinstance(properties, dict):
        return str(properties.get("connection_name", ""))
    if isinstance(properties, list):
        for item in properties:
            if isinstance(item, list) and len(item) == 3 and item[0] == "connection_name":
                return str(item[2])
    return ""


@asynccontextmanager
async def rabbitmq_cluster(size: int = 3) -> AsyncIterator[Cluster]:
    """A fresh cluster of `size` nodes, up and clustered; torn down (processes killed, the
    directory removed) whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="smsbt-cluster-"))
    cluster = Cluster.create(root, size)
    try:
        await asyncio.to_thread(cluster._form)
        yield cluster
    except BaseException:
        for node in cluster.nodes:  # the nodes' logs are gone after teardown: show them now
            print(f"\n===== {node.name}\n{cluster.tail(node)}", file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(root, ignore_errors=True)

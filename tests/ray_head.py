"""A Ray head node of a test's own: its own temp dir and free ports, run in the foreground (``ray start --head
--block``) in a new process session, and stopped by signalling exactly that process group. Never ``ray stop``: that
stops every Ray process on the machine, other tests' and other users' clusters included.

Every process of the cluster (GCS, raylet, dashboard and its agents, workers, job entrypoints, the autoscaler and the
raylets of the fake nodes it starts) is in the head's session or process group, or carries the temp dir in its
environment (``PIXELDRL_TEST_RAY_CLUSTER``, inherited from the head): that is how :meth:`survivors` finds them, and
the tests check that none is left after the stop.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
RAY = [str(BIN / "ray")]
CLUSTER_FILE = Path(__file__).resolve().parents[1] / "cluster" / "aws.yaml"


def cluster_head_auth_env() -> dict[str, str]:
    """The ``RAY_AUTH_*`` settings the cluster file's head starts Ray with (``KEY=VALUE`` before ``ray start
    --head``): a test's head is started with the same, so that the file's setting is what the test proves."""
    commands = yaml.safe_load(CLUSTER_FILE.read_text())["head_start_ray_commands"]
    start = next(c for c in commands if "ray start --head" in c)
    return dict(w.split("=", 1) for w in start.split("ray start", 1)[0].split() if w.startswith("RAY_AUTH_"))


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (held open together, so that the kernel cannot hand out one twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_range(n: int = 200) -> tuple[int, int]:
    """``n`` consecutive ports free now, below the kernel's ephemeral range (32768+), for the workers."""
    for _ in range(50):
        lo = random.randrange(20000, 32000 - n)
        if all(_bindable(p) for p in range(lo, lo + n, 20)):
            return lo, lo + n - 1
    raise RuntimeError("no free port range for Ray workers")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    """``(status, body)`` of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port``, from /proc/net/tcp and tcp6 (state 0A = LISTEN)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


def marked_processes(mark: str, session: int = -1) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the live processes (not this one, no zombies) that carry ``mark`` in their command
    line or environment, or belong to session or process group ``session``."""
    found = []
    mark_b = mark.encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue  # a zombie: dead, waiting for its parent to reap it
            cmdline = (d / "cmdline").read_bytes()
            try:
                environ = (d / "environ").read_bytes()
            except OSError:
                environ = b""
            if session in (int(fields[2]), int(fields[3])) or mark_b in cmdline or mark_b in environ:
                found.append((int(d.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile, or not ours to read
    return found


class RayHead:
    """``with RayHead(env, ["--num-cpus=2"]) as head: ...`` (or :meth:`start` / :meth:`stop`)."""

    def __init__(self, env: dict[str, str], args: list[str] | None = None, gcs_port: int | None = None,
                 dashboard_port: int | None = None):
        # short: Unix socket paths under it (<temp>/session_<date>_<pid>/sockets/...) must stay under ~107 characters
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        ports = free_ports(10)
        self.gcs = gcs_port or ports.pop()
        self.dash, self.agent = dashboard_port or ports.pop(), ports.pop()
        # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on SIGTERM the head stops its processes at once; by default it first
        # asks the GCS to drain the node for up to 30 s, and the GCS, signalled with the whole group, is gone by then
        # PIXELDRL_TEST_RAY_CLUSTER: inherited by every process the cluster starts, also by those that leave the head's
        # session (workers, job entrypoints) and name the temp dir nowhere else: how survivors() knows them
        self.env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                    "PIXELDRL_TEST_RAY_CLUSTER": self.temp_dir}
        self.env.pop("RAY_ADDRESS", None)
        lo, hi = _port_range()
        self.cmd = RAY + [
            "start", "--head", "--block", f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash}", f"--dashboard-agent-listen-port={self.agent}",
            f"--dashboard-agent-grpc-port={ports.pop()}", f"--runtime-env-agent-port={ports.pop()}",
            f"--metrics-export-port={ports.pop()}", f"--ray-client-server-port={ports.pop()}",
            f"--node-manager-port={ports.pop()}", f"--object-manager-port={ports.pop()}",
            f"--min-worker-port={lo}", f"--max-worker-port={hi}", "--disable-usage-stats", *(args or []),
        ]
        self.log = Path(self.temp_dir) / "ray_start.log"
        self.proc: subprocess.Popen | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dash}"

    def start(self, timeout: float = 180) -> RayHead:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.output()}")
            try:
                # public health endpoints (no token needed): the dashboard reaches the GCS, and the head's agent (it
                # runs the jobs) its raylet. Up to then the agents ignore SIGTERM: a stop would have to kill them.
                if http_get(self.dashboard_url + "/api/gcs_healthz", timeout=5)[0] == 200 and \
                        http_get(f"http://127.0.0.1:{self.agent}/api/local_raylet_healthz", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the dashboard did not answer within {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def survivors(self) -> list[tuple[int, str]]:
        """``(pid, command line)`` of the live processes of this cluster: those in the head's session or process
        group, and those (started elsewhere, e.g. by the autoscaler) that carry its temp dir in argv or environment."""
        return marked_processes(self.temp_dir, self.proc.pid if self.proc is not None else -1)

    def stop(self, timeout: float = 60) -> list[tuple[int, str]]:
        """Stop this cluster, and nothing else: SIGTERM to the head (``ray start --block`` stops its processes in
        order, raylet first, GCS last, like ``ray stop``), then SIGTERM to what is left of its process group, then
        SIGKILL to the group; last, any process of the cluster still alive outside the group (see
        :meth:`survivors`) is killed by pid. Returns those last ones.

        (SIGTERM to the whole group at once also works, but the GCS then goes down with the raylet and the head
        waits ~30 s on it about every other time.)
        """
        if self.proc is None:
            return []
        pgid = self.proc.pid  # start_new_session: the session and process group leader
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout / 2
        while time.time() < deadline and self.proc.poll() is None:
            time.sleep(0.5)
        # the rest of the group: what the head did not start itself (the autoscaler's fake nodes), or, if the head
        # hung, everything
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if _group_alive(pgid):
                _killpg(pgid, sig)
            deadline = time.time() + timeout / 4
            while time.time() < deadline and (self.proc.poll() is None or _group_alive(pgid)):
                time.sleep(0.5)
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)
        deadline = time.time() + 10  # what left the group (fake nodes' raylets) dies with its raylet or GCS
        while time.time() < deadline and self.survivors():
            time.sleep(0.5)
        stray = self.survivors()
        for pid, _ in stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return stray

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def shutdown(self, timeout: float = 60) -> list[str]:
        """:meth:`stop`, then :meth:`cleanup`; what outlived the cluster, one line each (a test asserts it empty)."""
        stray = self.stop(timeout=timeout)
        left = self.survivors()
        self.cleanup()
        return ([f"processes of the test cluster outlived its process group: {stray}"] if stray else []) + (
            [f"processes of the test cluster survived: {left}"] if left else [])

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in process group ``pgid``."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False

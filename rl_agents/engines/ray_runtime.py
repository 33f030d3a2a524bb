"""The project's Ray runtime: the one ``ray.init`` (:func:`connect`), the head watchdog, and where actors go
(placement-group bundles, node affinity). Shared by the Ray A3C engine, RLlib APPO and sweeps; no training here."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.util import get_current_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from rl_agents.config import TrainConfig


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def connect(address: str | None, num_cpus: float | None = None) -> bool:
    """Connect to Ray (``address``, else ``RAY_ADDRESS``, else a local Ray on 127.0.0.1); True when this call
    started it (and so must shut it down). The one ``ray.init`` of the project: training and sweeps use it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        tighten_token_file()
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(num_cpus or 0))
        # Ray 2.60 turns token authentication on for a local cluster and warns at every start that it did ("Set
        # RAY_AUTH_MODE=disabled to opt out"): we want it on, so the notice is noise. Setting RAY_AUTH_MODE=token
        # here instead would not do: Ray has read its config at import, and the driver would then be refused by its
        # own GCS. Other warnings of that logger (auth disabled by the user) still show.
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        quiet = _DropMessage("Token authentication is enabled")
        auth_log.addFilter(quiet)
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
        finally:
            auth_log.removeFilter(quiet)
        tighten_token_file()  # the token this start may have written
    return True


def tighten_token_file(path: str | Path | None = None) -> Path | None:
    """Make Ray's token file (``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) readable by its owner only: Ray
    2.60 writes it world-readable, and the token is the key to the cluster. Returns the file, None when there is
    none."""
    token = Path(path or os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token.is_file():
        return None
    if token.stat().st_mode & 0o077:
        token.chmod(0o600)
    return token


EXIT_HEAD_LOST = 75  # EX_TEMPFAIL: the cluster went away; the same command with --resume on a new one continues


class HeadWatchdog:
    """Ends the driver when the Ray head goes away: a TCP connection to its GCS is tried every 0.2 s; when the
    connection is refused (nothing listens: the GCS has stopped) or has failed for ``timeout_s`` (the head
    unreachable), the process prints what happened and exits with :data:`EXIT_HEAD_LOST`.

    Why a process exit, and why this fast: a driver whose node's raylet dies with the head is ended by Ray within
    seconds with exit status 1 and no word on the console (the reason goes to a log file under the session dir);
    a driver on another node blocks on actors that died with the head until Ray's reconnect timeout (60 s). On the
    head's own machine this is a race that Ray can still win under load (status 1, no message). Nothing
    can be saved at that point (the learner died with the cluster): ``checkpoints/last.pt`` is as the last periodic
    checkpoint wrote it.
    """

    def __init__(self, gcs_address: str, timeout_s: float, checkpoint: Path | None):
        host, port = gcs_address.rsplit(":", 1)
        self.addr, self.timeout_s, self.checkpoint = (host, int(port)), timeout_s, checkpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-head-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing_since, refused = None, 0
        while not self._stop.wait(0.2):
            try:
                socket.create_connection(self.addr, timeout=2).close()
                failing_since, refused = None, 0
                continue
            except ConnectionRefusedError:
                refused += 1
            except OSError:
                refused = 0
            failing_since = failing_since or time.monotonic()
            if refused or time.monotonic() - failing_since >= self.timeout_s:
                self._give_up("stopped (connection refused)" if refused else
                              f"unreachable for {self.timeout_s:g} s")

    def _give_up(self, what: str) -> None:
        if self._stop.is_set() or not ray.is_initialized():  # this process shut Ray down itself: nothing is lost
            return
        where = f"{self.checkpoint} is as last written" if self.checkpoint else "no checkpoint was written"
        print(f"\nerror: the Ray cluster's head (GCS at {self.addr[0]}:{self.addr[1]}) is {what}: the cluster is "
              f"gone, and this run cannot go on. {where}; start a cluster and run the same command with --resume.",
              file=sys.stderr, flush=True)
        os._exit(EXIT_HEAD_LOST)

    def stop(self) -> None:
        self._stop.set()


def ray_bundles(cfg: TrainConfig) -> list[dict[str, float]]:
    """The placement-group layout of a Ray A3C run: ``[driver + evaluator, learner, worker 0, worker 1, ...]``.

    Sweeps reserve exactly this (:func:`rl_agents.experiment.sweep.trial_resources`) and the engine pins each actor
    to its own bundle of it (:func:`pin`): one definition, so the two cannot drift apart.
    """
    learner = {"CPU": max(cfg.ray.learner_cpus, 0.01)}
    if cfg.ray.learner_gpus:
        learner["GPU"] = cfg.ray.learner_gpus
    return [{"CPU": 0.01}, learner] + [{"CPU": cfg.ray.worker_cpus}] * cfg.num_workers


def pin(cfg: TrainConfig, index: int) -> dict[str, Any]:
    """Actor options that pin an actor to bundle ``index`` of the placement group this code runs in, if any.

    Left to "any bundle", the learner (0.25 CPU) can take half of a worker's bundle (0.5 CPU) and leave the last
    worker with no bundle that fits: the trial then waits forever. Outside a placement group of our layout, none.
    """
    pg = get_current_placement_group()
    if pg is None or pg.bundle_specs != ray_bundles(cfg):
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)}


def on_this_node() -> dict[str, Any]:
    """Actor options that put an actor on the driver's node when it has room (soft: elsewhere otherwise)."""
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)}

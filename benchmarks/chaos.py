"""Faults of the cluster, injected and measured: the head stopped mid-run (row 10), a node removed and added back
(row 2), the learner killed (row 3), a slow learner under fast workers (row 8). Each case runs its own Ray cluster on
127.0.0.1 (own temp dir and ports), stops exactly that cluster, and returns what it measured; ``tests/benchmarks/test_chaos.py``
runs the same functions shorter and asserts on them. Results to ``benchmarks/results/chaos.json``.

    python -m benchmarks.chaos --json benchmarks/results/chaos.json
    python -m benchmarks.chaos --suite --json benchmarks/results/chaos.json   # every row, a table per row
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import ray

from rl_agents.algo.agent import build_network
from rl_agents.algo.model import count_parameters
from rl_agents.config import load_config
from rl_agents.engines.ray_actors import Learner
from rl_agents.experiment.checkpoint import read_checkpoint
from rl_agents.experiment.lifecycle import train_distributed
from rl_agents.experiment.provenance import describe, write_json
from tests.ray_head import BIN, RayHead

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"


def _sets(args: list[str]) -> list[str]:
    return [x for a in args for x in ("--set", a)]


class KillLearnerAfterCheckpoint:
    """An ``on_report`` callback for fault drills (tests and ``benchmarks/chaos.py``): kills the learner actor once,
    after ``checkpoints/last.pt`` exists, and records ``killed = [{"update", "checkpoint_update", "t"}]``.

    It waits for the learner to be ``lead`` updates past that checkpoint, so that the restore has work to redo; once
    the learner reaches ``by_update`` it kills it whatever the lead. Reports land at chance moments against the
    checkpoint cadence (on a busy machine every report of a short run can fall just after a save), and a drill
    must not end without its fault. The checkpoint read here is the one the restore uses: the driver, which calls
    this, is also the only writer of ``last.pt``, so no save can land between the read and the kill.
    """

    def __init__(self, last: str | Path, lead: int = 2, by_update: int | None = None):
        self.last, self.lead, self.by_update = Path(last), lead, by_update
        self.killed: list[dict[str, Any]] = []
        self.seen: list[tuple[int, int | None]] = []  # (learner update, checkpoint update) per report: a miss's why

    def __call__(self, state: dict[str, Any]) -> None:
        if self.killed:
            return
        update = int(state["stats"]["update"])
        at = read_checkpoint(self.last).update if self.last.exists() else None
        self.seen.append((update, at))
        if at is not None and (update >= at + self.lead or (self.by_update is not None and update >= self.by_update)):
            ray.kill(state["learner"], no_restart=True)
            self.killed.append({"update": update, "checkpoint_update": at, "t": time.time()})


@contextlib.contextmanager
def _loopback_only():
    """Keep every node and the driver on 127.0.0.1: Ray turns "127.0.0.1" into the machine's address when a driver
    connects (``resolve_ip_for_localhost``) unless multi-node clusters are off, as the fake-cluster test runs them.
    Undone on exit, so that what runs next in this process sees Ray as it was."""
    import ray._private.ray_constants as ray_constants

    env, flag = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the nodes' processes read it when they start
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        if env is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = env


def head_stop(out: Path, epochs: int = 8, head_timeout_s: float = 10) -> dict[str, Any]:
    """Row 10. A head started as the README starts one (token auth, 127.0.0.1), a training run connected to it by
    ``RAY_ADDRESS``; once ``last.pt`` exists, every process of the head is SIGKILLed (what ``ray stop --force`` does).
    Measures the driver's exit status and time and its message; then the same command with ``--resume`` on a new
    head, to the end."""

    env = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    cmd = [sys.executable, "train.py", "--config", str(SMOKE),
           *_sets(["budget.max_minutes=null", f"budget.epochs={epochs}", "eval.checkpoint_every=4", "eval.every=1000", "tracking.mlflow=false",
                   f"ray.head_timeout_s={head_timeout_s}"]), "--output-dir", str(out), "--quiet"]
    last = out / "checkpoints" / "last.pt"
    res: dict[str, Any] = {"case": "head stopped", "head_timeout_s": head_timeout_s}
    head = RayHead(env, ["--num-cpus=2"]).start()
    proc = None
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "RAY_ADDRESS": f"127.0.0.1:{head.gcs}"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 240
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        if not last.exists():
            raise RuntimeError("no checkpoint before the deadline:\n" + (proc.communicate(timeout=30)[0] or "")[-3000:])
        t_kill = time.time()
        os.killpg(head.proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=120)
        res.update(exit_status=proc.returncode, exit_after_s=round(time.time() - t_kill, 2),
                   message=next((ln for ln in stdout.splitlines() if ln.startswith("error: the Ray cluster")), None),
                   output_tail=stdout[-3000:])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        head.stop()
        head.cleanup()
    res["checkpoint_update"] = read_checkpoint(last).update
    head2 = RayHead(env, ["--num-cpus=2"]).start()
    try:
        t0 = time.time()
        r = subprocess.run([*cmd, "--resume"], cwd=ROOT, env={**env, "RAY_ADDRESS": f"127.0.0.1:{head2.gcs}"},
                           capture_output=True, text=True, timeout=600)
    finally:
        head2.stop()
        head2.cleanup()
    res["resume"] = {"exit_status": r.returncode, "wall_s": round(time.time() - t0, 1),
                     "output_tail": (r.stdout + r.stderr)[-2000:]}
    if r.returncode == 0:
        m = json.loads((out / "metrics.json").read_text())
        res["resume"].update(updates=m["updates"], planned=epochs * -(-m["n_train"] // 4), stopped_by=m["stopped_by"],
                             val_dice=m["val/dice"])
    return res


def node_removal(out: Path, epochs: int = 80, remove_at: int = 40, down_s: float = 5) -> dict[str, Any]:
    """Row 2. A 3-node cluster on one machine (``ray.cluster_utils.Cluster``: a head and two 1-CPU nodes, each its
    own raylet on 127.0.0.1), 2 workers of 1 CPU; at update ``remove_at`` the node of a worker (not the learner's,
    not the head) is removed without grace, and added back ``down_s`` seconds later. The recipe of
    ``test_training.py::test_pa3c_learns_on_easy_synthetic_data`` (batch 8, easy synthetic)."""
    import ray
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: socket paths live under it
    node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "temp_dir": temp}
    # on 2 busy cores a raylet can miss the GCS's default health checks (5 misses of a 3 s period) and be taken for
    # dead (seen once in the full test suite): give them 60 s, so that only the removal kills a node
    head_args = {**node_args, "include_dashboard": False,
                 "_system_config": {"health_check_failure_threshold": 20}}
    events: list[dict[str, Any]] = []
    per_worker: list[dict] = []

    def remove_then_add(state):
        upd = state["stats"]["update"]
        per_worker.append({"t": time.time(), "update": upd, **{str(k): v for k, v in
                                                               state["stats"]["per_worker_updates"].items()}})
        if not events and upd >= remove_at and all(state["worker_nodes"]):
            by_id = {n.node_id: n for n in nodes}
            index, victim = next((i, by_id[w]) for i, w in enumerate(state["worker_nodes"])
                                 if w in by_id and w != state["learner_node"])
            cluster.remove_node(victim, allow_graceful=False)
            nodes.remove(victim)
            events.append({"event": "removed", "t": time.time(), "update": upd, "worker": index,
                           "worker_updates": state["stats"]["per_worker_updates"].get(index, 0)})
        elif len(events) == 1 and time.time() - events[0]["t"] >= down_s:
            nodes.append(cluster.add_node(**node_args))
            events.append({"event": "added", "t": time.time(), "update": upd})

    cfg = load_config(SMOKE, ["budget.max_minutes=null", "optim.batch_size=8", f"budget.epochs={epochs}", f"eval.every={epochs}",
                              "tracking.report_every_s=0.5", "ray.worker_cpus=1", "ray.learner_cpus=0.25", "tracking.mlflow=false"])
    with _loopback_only():
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        try:
            nodes = [cluster.add_node(**node_args) for _ in range(2)]
            ray.init(address=cluster.address, log_to_driver=False)
            m = train_distributed(cfg, out, quiet=True, on_report=remove_then_add)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
    res: dict[str, Any] = {"case": "node removed and added back", "events": events,
                           "updates": m["updates"], "planned": epochs * -(-m["n_train"] // 8),
                           "stopped_by": m["stopped_by"], "worker_restarts": m["workers/restarts"],
                           "val_dice": m["val/dice"], "wall_s": m["wall_time_s"]}
    if len(events) == 2:  # the updates the cluster made while the node was gone: training went on without it
        during = [p["update"] for p in per_worker if events[0]["t"] <= p["t"] <= events[1]["t"]]
        res["updates_while_node_was_gone"] = (max(during) - events[0]["update"]) if during else 0
        w, before = str(events[0]["worker"]), events[0]["worker_updates"]
        back = next((p["t"] for p in per_worker if p["t"] > events[1]["t"] and p.get(w, 0) > before), None)
        # removal to the removed node's worker's first gradient applied, from the node added back
        res["worker_back_after_s"] = None if back is None else round(back - events[0]["t"], 2)
    return res


def learner_kill(out: Path, epochs: int = 40) -> dict[str, Any]:
    """Row 3. A 2-worker run on a local Ray; once the learner is 2 updates past its checkpoint, its process is
    killed. Measures the restore (which update it came back at, against the checkpoint's), the gradients computed
    on the dead learner's newer weights that reached the new one (must be 0), and the end of the run."""
    import ray

    kill = KillLearnerAfterCheckpoint(out / "checkpoints" / "last.pt", lead=2)

    cfg = load_config(SMOKE, ["budget.max_minutes=null", f"budget.epochs={epochs}", "tracking.report_every_s=0.3", "eval.checkpoint_every=4",
                              "eval.every=1000", "tracking.mlflow=false"])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        m = train_distributed(cfg, out, quiet=True, on_report=kill)
    finally:
        ray.shutdown()
    return {"case": "learner killed", "killed": kill.killed, "restores": m["learner/restore_log"],
            "gradients_ahead_of_learner": m["perf/gradients_ahead_of_learner"], "updates": m["updates"],
            "planned": epochs * -(-m["n_train"] // 4), "stopped_by": m["stopped_by"], "val_dice": m["val/dice"]}


def object_store_usage() -> tuple[int, int]:
    """``(bytes, objects)`` in the object stores of every node of the connected cluster."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    # the connected cluster's address: None would autodetect, and fail when another Ray runs on the machine
    st = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return int(st.object_store_bytes_used), int(st.num_local_objects)


def slow_learner(out: Path, workers: int = 4, delay_s: float = 0.25, epochs: int = 6) -> dict[str, Any]:
    """Row 8. A learner that takes ``delay_s`` longer for every push (a busy or slow device) under ``workers`` fast
    workers. Every worker blocks on its push until the learner answers, so at most one gradient per worker is in
    flight: the object store (sampled every 0.2 s) holds at most about three model-sized objects per worker (its
    gradient, the weights sent back, and its previous weights until it replaces them) and a few of the driver's and
    the evaluator's, however long the run and whatever the speed difference. The peaks of the first and second half
    of the run show that it does not grow."""
    import ray

    class SlowLearner(Learner):
        def push(self, worker, version, grads, stats):
            time.sleep(delay_s)
            return super().push(worker, version, grads, stats)

    samples: list[tuple[int, int]] = []

    def sample(state):
        samples.append(object_store_usage())

    cfg = load_config(SMOKE, ["budget.max_minutes=null", f"budget.epochs={epochs}", f"num_workers={workers}",
                              f"ray.worker_cpus={1.5 / workers}", "ray.learner_cpus=0.25", "tracking.report_every_s=0.2",
                              "eval.every=1000", "tracking.mlflow=false"])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        m = train_distributed(cfg, out, quiet=True, on_report=sample, learner_cls=SlowLearner)
    finally:
        ray.shutdown()

    model_bytes = 4 * (count_parameters(build_network(cfg, 1)) + cfg.pa3c.reward_kernel ** 2)
    half = len(samples) // 2
    return {"case": "slow learner", "workers": workers, "learner_delay_s": delay_s, "samples": len(samples),
            "peak_object_store_bytes": max(b for b, _ in samples), "peak_objects": max(n for _, n in samples),
            "peak_bytes_first_half": max(b for b, _ in samples[:half]),
            "peak_bytes_second_half": max(b for b, _ in samples[half:]),
            "model_bytes": model_bytes, "bound_bytes": (3 * workers + 4) * model_bytes, "updates": m["updates"],
            "updates_per_s": m["perf/updates_per_s"], "stopped_by": m["stopped_by"]}


def suite(pytest_args: list[str] | None = None) -> dict[str, Any]:
    """The whole reliability suite: every test that takes the ``reliability`` fixture (CI's fast cases and the long
    ones marked ``chaos``, which the default test command leaves out), run by pytest in a child process. Each case
    records what it measured (row, fault, data lost, time to recover) through ``CHAOS_RECORD``; pytest's verdict
    is "survived". A case that fails records nothing (``main`` lists it under ``failed``)."""

    with tempfile.TemporaryDirectory() as tmp:
        record, junit = Path(tmp) / "record.jsonl", Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "reliability",
               f"--junitxml={junit}", *(pytest_args or [])]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "CHAOS_RECORD": str(record)}, capture_output=True,
                              text=True)
        wall = time.time() - t0
        records = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
        tests = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            nodeid = case.get("classname").replace(".", "/") + ".py::" + case.get("name")
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            tests.append({"test": nodeid, "outcome": outcome, "duration_s": round(float(case.get("time")), 1)})
    verdict = {t["test"]: t for t in tests}
    rows = [{**r, "survived": verdict.get(r["test"], {}).get("outcome") == "passed",
             "duration_s": verdict.get(r["test"], {}).get("duration_s")} for r in records]
    return {"command": " ".join(["python", "-m", "pytest", *cmd[3:]]), "exit_status": proc.returncode,
            "wall_s": round(wall, 1), "tests": tests, "rows": sorted(rows, key=lambda r: r["row"]),
            "output_tail": proc.stdout[-3000:]}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README's table: one line per fault (a parametrised case's variants merged), in row order."""
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    for r in rows:
        m = merged.setdefault((r["row"], r["fault"]), {**r, "recover": []})
        m["survived"] = m["survived"] and r["survived"]
        if r["recover_s"] is not None:
            m["recover"].append(r["recover_s"])
    lines = ["| # | fault injected | survived | data lost | time to recover |", "|---|---|---|---|---|"]
    for (row, fault), m in sorted(merged.items(), key=lambda kv: kv[0][0]):
        worst = max(m["recover"], default=None)
        t = m["recovery"] if worst is None else \
            f"{f'{worst * 1e3:.0f} ms' if worst < 1 else f'{worst:.1f} s'} ({m['recovery']})"
        lines.append(f"| {row} | {fault} | {'yes' if m['survived'] else '**no**'} | {m['data_lost']} | {t} |")
    return "\n".join(lines)


def _test_name(record: dict[str, Any]) -> str:
    return record["test"].rsplit("::", 1)[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="benchmarks/results/chaos.json")
    p.add_argument("--only", nargs="*", default=None, help="cases to run: head_stop node_removal learner_kill "
                                                           "slow_learner")
    p.add_argument("--suite", action="store_true", help="run the whole reliability suite (pytest -m reliability) "
                                                           "instead of the cases; its per-row table to the JSON")
    p.add_argument("pytest_args", nargs="*", help="with --suite: more pytest arguments (after --)")
    args = p.parse_args()

    cases = {"head_stop": head_stop, "node_removal": node_removal, "learner_kill": learner_kill,
             "slow_learner": slow_learner}
    command = "python " + " ".join(sys.argv)
    before = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    if args.suite:  # the cases' figures are kept as they were
        new = {**suite(args.pytest_args), "invoked_as": command, "machine": describe()}
        old = before.get("suite")
        if args.pytest_args and old:  # a rerun of some tests (-k ...): the others' records are kept, and said so
            # by test name: a module moved since (tests/x.py -> tests/a/x.py) is the same test
            rerun = {_test_name(t) for t in new["tests"]}
            kept = [t for t in old["tests"] if _test_name(t) not in rerun]
            new["tests"] = kept + new["tests"]
            new["rows"] = sorted([r for r in old["rows"] if _test_name(r) not in rerun] + new["rows"],
                                 key=lambda r: r["row"])
            new["kept_from"] = {"invoked_as": old["invoked_as"], "wall_s": old["wall_s"],
                                "tests": sorted(t["test"] for t in kept)}
        new["failed"] = [t["test"] for t in new["tests"] if t["outcome"] in ("failure", "error")]
        rec = {**before, "suite": new}
        write_json(args.json, rec)
        print(markdown(rec["suite"]["rows"]))
        print(f"{len(rec['suite']['tests'])} tests, failed: {rec['suite']['failed'] or 'none'}; "
              f"{rec['suite']['wall_s']} s; wrote {args.json}")
        sys.exit(1 if rec["suite"]["exit_status"] else 0)
    rec: dict[str, Any] = {"command": command, "machine": describe(), "cases": {},
                           **({"suite": before["suite"]} if "suite" in before else {})}
    if args.only and before:  # a rerun of some cases keeps the others' figures
        rec["cases"] = before["cases"]
        rec["cases_from"] = {"command": before["command"], "cases": [c for c in before["cases"] if c not in args.only]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in cases.items():
            if args.only and name not in args.only:
                continue
            t0 = time.time()
            r = fn(Path(tmp) / name)
            r["case_wall_s"] = round(time.time() - t0, 1)
            rec["cases"][name] = r
            print(name, json.dumps({k: v for k, v in r.items() if k != "output_tail"}, default=str)[:600], flush=True)
    write_json(args.json, rec)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""`ray job submit` end to end on a Ray cluster of the test's own (127.0.0.1, token authentication, its own temp dir
and ports, see ``tests/ray_head.py``): the smoke config submitted with ``--working-dir .``, status SUCCEEDED
(`ray job status`), the checkpoints it wrote loaded and evaluated; and a submission with a missing or wrong token
refused, by `ray job submit` and by the dashboard's Jobs API. The cluster is stopped by signalling its own process
group, never with `ray stop` (which would stop every Ray cluster on the machine), and no process of it may survive.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ray_head import BIN, RAY, RayHead, cluster_head_auth_env, http_get, listening_addresses

ROOT = Path(__file__).resolve().parents[2]
PIXELDRL = str(BIN / "pixeldrl") if (BIN / "pixeldrl").exists() else None

# subprocess budgets (s); each test's timeout is larger than the sum of what it may spend
START, SUBMIT, STATUS, EVALUATE, REFUSED, STOP = 180, 420, 60, 120, 60, 100


@pytest.fixture(scope="module")
def token_cluster():
    """One head node (2 CPUs) with token authentication for the tests of this module."""
    token = secrets.token_hex(16)
    env = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
           # token auth as the cluster file starts its head, the same for `ray start` and `ray job submit`
           **cluster_head_auth_env(), "RAY_AUTH_TOKEN": token}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # the job gets its store from the submission, as the README shows
    env["MLFLOW_EXPERIMENT_ID"] = "424242"  # what mlflow.set_experiment leaves in a shell's or parent's environment
    head = RayHead(env, ["--num-cpus=2"])
    head.token, head.client_env, head.succeeded = token, {**head.env}, set()
    try:
        head.start(timeout=START)
        yield head
    finally:
        problems = head.shutdown(timeout=STOP - 40)
    assert not problems, problems


def _evaluate(checkpoint: Path, out: Path) -> dict:
    cmd = [PIXELDRL] if PIXELDRL else [sys.executable, "-m", "rl_agents.cli"]
    r = subprocess.run([*cmd, "evaluate", "--checkpoint", str(checkpoint), "--split", "val", "--json", str(out)],
                       capture_output=True, text=True, timeout=EVALUATE)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(START + SUBMIT + STATUS + 2 * EVALUATE + 60)
def test_ray_job_submit_smoke(token_cluster: RayHead, tmp_path: Path):
    head = token_cluster
    out = tmp_path / "run"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the user's store, outside Ray's copy of the working dir
    job_id = "pixeldrl-smoke-" + secrets.token_hex(4)
    job = subprocess.run(
        RAY + ["job", "submit", "--address", head.dashboard_url, "--submission-id", job_id,
               "--working-dir", str(ROOT), "--runtime-env-json",
               json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": store}}), "--",
               "python", "train.py", "--config", "tune_configs/smoke.yaml", "--output-dir", str(out), "--quiet"],
        cwd=ROOT, env=head.client_env, capture_output=True, text=True, timeout=SUBMIT)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:] + head.output()
    status = subprocess.run(RAY + ["job", "status", "--address", head.dashboard_url, job_id],
                            env=head.client_env, capture_output=True, text=True, timeout=STATUS)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr  # status SUCCEEDED
    head.succeeded.add(job_id)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers/n"] == 2 and metrics["updates"] >= 1 and "val/dice" in metrics
    assert metrics["perf/updates_per_s"] > 0
    # the checkpoints load and give what the run reported: best.pt is the model behind metrics.json's val/dice
    best = _evaluate(out / "checkpoints" / "best.pt", tmp_path / "eval_best.json")
    assert best["n_images"] > 0 and best["n_images"] == metrics["n_val"]
    assert best["dice"] == pytest.approx(metrics["val/dice"], abs=1e-6)
    last = _evaluate(out / "checkpoints" / "last.pt", tmp_path / "eval_last.json")
    assert last["n_images"] == best["n_images"] and 0.0 <= last["dice"] <= 1.0
    final = [h for h in metrics["history"] if "val/dice" in h and h.get("update") == metrics["updates"]]
    assert final, "no validation pass at the last update"
    assert last["dice"] == pytest.approx(final[-1]["val/dice"], abs=1e-6)  # last.pt: the weights at the end
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)  # the job's run is in the store it was given, where mlflow ui and compare look
    exp = client.get_experiment_by_name("pixeldrl")
    assert exp is not None, f"no experiment in {store}; the job printed:\n" + job.stdout[-3000:]
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.metrics["val/dice"] == pytest.approx(metrics["val/dice"])


@pytest.mark.timeout(START + 3 * REFUSED + 60 + STOP)
def test_a_missing_or_wrong_token_is_refused(token_cluster: RayHead, tmp_path: Path, reliability):
    head = token_cluster
    home = tmp_path / "home"  # no ~/.ray/auth_token to fall back on
    home.mkdir()
    no_token = {k: v for k, v in head.client_env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    cases = {
        "missing": {**no_token, "HOME": str(home)},  # the client knows auth is on, but has no token: never sends
        "missing-no-mode": {**{k: v for k, v in no_token.items() if k != "RAY_AUTH_MODE"}, "HOME": str(home)},
        "wrong": {**head.client_env, "RAY_AUTH_TOKEN": secrets.token_hex(16)},
    }
    refused = set()
    for name, env in cases.items():
        job_id = f"refused-{name}-{secrets.token_hex(4)}"
        refused.add(job_id)
        r = subprocess.run(RAY + ["job", "submit", "--address", head.dashboard_url, "--submission-id", job_id,
                                  "--", "python", "-c", "print('should never run')"],
                           env=env, capture_output=True, text=True, timeout=REFUSED)
        text = r.stdout + r.stderr
        assert r.returncode != 0, (name, text[-3000:])
        assert "AuthenticationError" in text and "token" in text.lower(), (name, text[-3000:])
    jobs = head.dashboard_url + "/api/jobs/"
    assert http_get(jobs)[0] == 401  # no Authorization header
    assert http_get(jobs, {"Authorization": f"Bearer {secrets.token_hex(16)}"})[0] == 403
    assert http_get(jobs, {"Authorization": head.token})[0] == 403  # the token without "Bearer "
    # a submission straight to the Jobs API without / with a wrong token
    body = json.dumps({"entrypoint": "python -c \"print('should never run')\"", "submission_id": "refused-http"})
    for headers in ({}, {"Authorization": f"Bearer {secrets.token_hex(16)}"}):
        req = urllib.request.Request(jobs, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code in (401, 403)
    refused.add("refused-http")
    # the head's dashboard agent also takes job submissions, on the node's address as well as 127.0.0.1: the token
    # guards it too. (Ray 2.60 has no option to keep the agent, GCS and raylet ports off the node's address.)
    agent_jobs = f"http://127.0.0.1:{head.agent}/api/job_agent/jobs/"
    req = urllib.request.Request(agent_jobs, data=json.dumps({"entrypoint": "python -c \"print('never')\"",
                                                               "submission_id": "refused-agent"}).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    refused.add("refused-agent")
    assert listening_addresses(head.dash) == {"127.0.0.1"}  # the dashboard and its Jobs API: loopback only
    status, listing = http_get(jobs, {"Authorization": f"Bearer {head.token}"})
    assert status == 200, listing
    ran = {j.get("submission_id") for j in json.loads(listing)}
    assert not ran & refused, ran
    assert ran <= head.succeeded, f"jobs on the cluster besides the smoke job: {ran - head.succeeded}"
    reliability(11, "jobs submitted without / with a wrong Ray token (CLI, Jobs API, the head's job agent)",
                f"none: {len(refused)} submissions refused (401 / 403), none ran; the dashboard on 127.0.0.1 only",
                None, "refused")

"""Cluster launcher configs, checked offline with Ray's own validator and for the settings that matter."""

from __future__ import annotations

import copy
import os
import re
import secrets
import stat
import sys
from pathlib import Path

import jsonschema
import pytest
import requests
import tomllib
import yaml
from mlflow.tracking import MlflowClient
from ray.autoscaler._private.util import prepare_config, validate_config

from rl_agents.experiment import tracking
from tests.conftest import local_server

ROOT = Path(__file__).resolve().parents[2]
CLOUDS = ["aws", "gcp"]


def _load(cloud: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / f"{cloud}.yaml").read_text())


@pytest.mark.parametrize("cloud", CLOUDS)
def test_cluster_yaml_passes_rays_validator(cloud):
    validate_config(prepare_config(copy.deepcopy(_load(cloud))))
    broken = _load(cloud)
    broken["available_node_types"]["gpu_learner"]["min_workrs"] = 0  # a typo Ray must reject
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("cloud", CLOUDS)
def test_cluster_yaml_settings_that_matter(cloud):
    c = _load(cloud)
    types = c["available_node_types"]
    assert types[c["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no training work
    for name in ("gpu_learner", "cpu_worker"):
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] >= 1
    spot = yaml.safe_dump(types["gpu_learner"]["node_config"]) + yaml.safe_dump(types["cpu_worker"]["node_config"])
    assert spot.count("spot") + spot.count("SPOT") + spot.count("preemptible") >= 2
    assert 0 < c["idle_timeout_minutes"] <= 10
    head = " ".join(c["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head and "mlflow_server.sh" in head
    assert "RAY_AUTH_MODE=token" in " ".join(c["worker_start_ray_commands"])
    assert c["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("pip install" in s and "/home/ray/pixeldrl" in s for s in c["setup_commands"])
    assert "2.60.0" in c["docker"]["image"]  # the Ray version this project pins
    if cloud == "aws":
        perms = c["provider"]["security_group"]["IpPermissions"]
        assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]  # SSH only


def test_kuberay_manifests_have_what_matters():
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    spec = cluster["spec"]
    assert cluster["kind"] == "RayCluster" and spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token" and spec["rayVersion"] == "2.60.0"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu-learner", "cpu-worker"}
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["replicas"] == 0 and g["maxReplicas"] >= 1
    gpu = groups["gpu-learner"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu-worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("python /home/ray/pixeldrl/train.py --config ") and "ray.learner_gpus=1" in entry
    config = entry.split("--config ")[1].split()[0].replace("/home/ray/pixeldrl/", "")
    assert (ROOT / config).is_file()


def test_kuberay_image_matches_ray_and_project_versions():
    # the Dockerfile's Ray base image must match the RayCluster's rayVersion, and the image tag the project version

    docker = (ROOT / "cluster" / "kuberay" / "Dockerfile").read_text()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    base = re.search(r"^FROM rayproject/ray:(\S+?)-", docker, re.M)
    assert base and base.group(1) == cluster["spec"]["rayVersion"]
    images = {c["image"] for g in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert images == {f"pixeldrl-mg:{version}"}
    assert f"pixeldrl-mg:{version}" in docker and "pip install" in docker


def test_fake_multinode_config_mirrors_the_cloud_node_types():
    fake = yaml.safe_load((ROOT / "cluster" / "fake_multinode.yaml").read_text())
    assert fake["provider"]["type"] == "fake_multinode"
    types = fake["available_node_types"]
    assert types["gpu_learner"]["resources"]["GPU"] == 1 and types["gpu_learner"]["min_workers"] == 0
    assert "GPU" not in types["cpu_worker"]["resources"] and types["cpu_worker"]["min_workers"] == 0
    assert "GPU" not in types[fake["head_node_type"]]["resources"]


# vCPUs and GPUs of the GCP machine types our configs use (from GCP's machine-type tables)
GCP_MACHINES = {"n2-standard-4": (4, 0), "g2-standard-4": (4, 1), "c2-standard-16": (16, 0)}


def test_gcp_node_types_declare_their_cpus_and_gpus():
    """Ray's GCP provider fills in TPU resources only: an autoscaled type that declares no CPU/GPU is never started
    for work that needs them. Every worker type must declare what its machine has."""
    c = _load("gcp")
    for name, t in c["available_node_types"].items():
        if name == c["head_node_type"]:
            continue
        cpus, gpus = GCP_MACHINES[t["node_config"]["machineType"]]
        accel = sum(a["acceleratorCount"] for a in t["node_config"].get("guestAccelerators", []))
        assert t["resources"].get("CPU") == cpus, f"{name}: resources {t['resources']} lack CPU: {cpus}"
        assert t["resources"].get("GPU", 0) == gpus == accel, f"{name}: resources {t['resources']} vs {accel} GPU(s)"


def _services_on_all_interfaces(text: str) -> list[str]:
    """Lines of a cluster file that put a service on 0.0.0.0 (a firewall rule's CIDR 0.0.0.0/0 is not a bind)."""
    return [ln.strip() for ln in text.splitlines() if "0.0.0.0" in ln and "0.0.0.0/" not in ln
            and not ln.strip().startswith("#")]


def test_no_cluster_file_exposes_an_unauthenticated_service():
    """MLflow and the dashboard listen beyond loopback on a cluster only behind authentication: MLflow through
    cluster/mlflow_server.sh (basic auth, the Ray token as password), the dashboard where Ray's token auth is on."""
    files = sorted(p for p in (ROOT / "cluster").rglob("*") if p.is_file() and p.suffix in (".yaml", ".sh", ""))
    assert len(files) >= 5
    for path in files:
        text = path.read_text()
        assert not re.search(r"mlflow server(?!.*--app-name basic-auth)", text.replace("\\\n", " ")), (
            f"{path}: an MLflow server started without basic auth")
        for line in _services_on_all_interfaces(text):
            if "mlflow_server.sh" in line:
                continue  # authenticated: the script's own check below
            if "dashboard-host" in line or "--dashboard-host" in line:
                assert re.search(r"authOptions:\s*\n\s*mode: token", text) or "RAY_AUTH_MODE=token" in text, (
                    f"{path}: the dashboard on all interfaces without Ray's token auth")
                continue
            if path.name == "mlflow_server.sh":
                continue
            pytest.fail(f"{path}: a service on 0.0.0.0 with no authentication: {line}")
    script = (ROOT / "cluster" / "mlflow_server.sh").read_text()
    assert "--app-name basic-auth" in script and "admin_password = $TOKEN" in script
    for cloud in CLOUDS:  # every node (and so every trial and job) logs with the credentials
        c = _load(cloud)
        assert any("PIXELDRL_MLFLOW_AUTH=ray-token" in cmd for cmd in c["head_start_ray_commands"])
        assert any("PIXELDRL_MLFLOW_AUTH=ray-token" in cmd for cmd in c["worker_start_ray_commands"])


@pytest.mark.timeout(180)
def test_the_cluster_mlflow_server_refuses_requests_without_the_ray_token(tmp_path: Path, monkeypatch):
    """cluster/mlflow_server.sh as the head runs it (here on 127.0.0.1): a request without the credentials, or with
    a wrong token, is refused; a node with PIXELDRL_MLFLOW_AUTH=ray-token logs through the client as training does."""
    token = secrets.token_hex(16)
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_TOKEN": token,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = str(ROOT / "cluster" / "mlflow_server.sh")
    with local_server(lambda port: [script, "127.0.0.1", str(port), str(tmp_path / "store")], tmp_path, "/health",
                      150, env) as (base, _):
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=5"
        assert requests.get(search, timeout=30).status_code == 401
        assert requests.get(search, auth=("pixeldrl", "not-the-token"), timeout=30).status_code == 401
        assert requests.get(search, auth=("pixeldrl", token), timeout=30).status_code == 200
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("PIXELDRL_MLFLOW_AUTH", "ray-token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        exp = tracking.ensure_experiment("cluster-auth")  # the path every run and trial takes
        assert MlflowClient(base).get_experiment(exp).name == "cluster-auth"
    ini = tmp_path / "store" / "mlflow_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600  # it holds the password

"""Cluster launcher configs, checked offline with Ray's own validator and for the settings that matter."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

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
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head and "mlflow server" in head
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

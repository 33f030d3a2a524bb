"""Run every command block of the README as written, in order, in a fresh clone, and record what happened.

A README that users copy from has to work as written. This script reads the fenced ``bash`` and ``python`` blocks of
``README.md`` and the ``docs/`` pages (:data:`DOCS`, in that order), runs each command in the clone it lives in (a fresh ``git clone`` with ``../shared`` beside it, and
a fresh virtual environment that the Quickstart's ``pip install`` fills), and writes for every command: what ran,
exit status, wall time, and the tail of its output, to ``benchmarks/results/readme_commands.json``.

Every command has an entry in :data:`PLAN` (``tests/test_readme_commands.py`` fails when the README and the plan
disagree), which says how it is run:

- ``run``: as written, to the end.
- ``cap``: as written, then Ctrl-C (SIGINT, what a user presses) after ``cap_s`` seconds or once ``until`` exists:
  training runs of up to an hour and sweeps of hours that the rest of the README only needs started (a checkpoint).
  Recorded as stopped, with the time; a command that failed before its cap counts as failed.
- ``serve``: a server (``mlflow ui``): started, its page fetched from 127.0.0.1, stopped.
- ``skip``: cannot run on this machine (no cloud account, no Docker engine, no Kubernetes cluster, no network); the
  reason is recorded. What is tested offline instead is said in the README.

Placeholders a user replaces (``scans/``, ``case7.nii.gz``, ``image``, ``x``, ``<model id>``) are filled by the
entry's ``setup`` (files made before the command runs) or ``prelude`` (Python run before the block); a changed
value (``subs``) is listed in the JSON beside the command as written.

    python3 -m venv /tmp/rc-venv && git clone -q . /work/rc && cd /work/rc && \\
        PATH=/tmp/rc-venv/bin:$PATH python benchmarks/readme_commands.py --json benchmarks/results/readme_commands.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Step:
    kind: str = "run"                      # run | cap | serve | skip
    cap_s: float = 0.0                     # cap: Ctrl-C after this long
    until: str = ""                        # cap: ... or a few seconds after this file exists
    reason: str = ""                       # skip: why; otherwise a note on what was changed and why
    subs: dict[str, str] = field(default_factory=dict)   # placeholder -> value, applied to the command
    setup: str = ""                        # name of a function in SETUPS run before the command
    prelude: str = ""                      # Python run before a python block (placeholders)
    cwd: str = "clone"                     # clone | main: reports over sweeps of hours run where those sweeps are
    ray_head: bool = False                 # a local Ray head with token auth on 127.0.0.1:8265 for this command


NO_CLOUD = "no cloud account on this machine; the config is validated offline by tests/test_cluster.py"
NO_K8S = ("no Docker engine and no Kubernetes cluster on this machine (docker and kubectl are clients only); the "
          "manifests are parsed and checked by tests/test_cluster.py")

PLAN: dict[str, Step] = {
    # Quickstart
    'pip install torch==2.13.0 -e ".[test]" && python train.py': Step(),
    "python -m pytest -q": Step(kind="skip", reason="the test suite is what .ci/run runs (same command); its time "
                                "is in the CI run of this commit, not repeated here"),
    # Training and evaluation
    "python train.py --config tune_configs/lgg_cpu.yaml --output-dir runs/lgg": Step(
        kind="cap", cap_s=900, until="runs/lgg/checkpoints/best.pt",
        reason="a 55-minute run; stopped with Ctrl-C once its first best.pt exists (the commands below need it)"),
    "python train.py --config tune_configs/lgg_cpu.yaml --output-dir runs/lgg --resume": Step(
        kind="cap", cap_s=60, reason="continues the run above; stopped with Ctrl-C after 60 s"),
    "python train.py --config tune_configs/heart_cpu.yaml --output-dir runs/heart": Step(
        kind="cap", cap_s=900, until="runs/heart/checkpoints/best.pt",
        reason="a 12-minute run; stopped with Ctrl-C once its first best.pt exists (predict below needs it)"),
    "python train.py --set lr=3e-4 --set t_max=5 --set data.synthetic.difficulty=hard": Step(
        kind="cap", cap_s=60, reason="a 10-minute run; stopped with Ctrl-C after 60 s"),
    "pixeldrl baseline --config tune_configs/lgg_cpu.yaml --output-dir runs/unet": Step(
        kind="cap", cap_s=90, reason="a 55-minute run; stopped with Ctrl-C after 90 s"),
    "pixeldrl evaluate --checkpoint runs/lgg/checkpoints/best.pt --split test --json runs/lgg/test.json": Step(),
    "pixeldrl evaluate --checkpoint runs/lgg/checkpoints/best.pt --split test --postprocess auto --json runs/lgg/test_pp.json": Step(),
    "pixeldrl env-demo": Step(),
    # Use a trained model
    "pixeldrl predict --checkpoint runs/lgg/checkpoints/best.pt scans/ --output-dir masks/ --overlay --gif": Step(
        setup="scans", reason="scans/ = 3 LGG slices as downloaded (TIFF)"),
    "pixeldrl predict --checkpoint runs/heart/checkpoints/best.pt case7.nii.gz --output-dir masks/": Step(
        setup="scans", reason="case7.nii.gz = the first left-atrium volume of ../shared/data/la_heart"),
    "from rl_agents.experiment.predict import segment_array\n"
    'masks, uncertainty = segment_array("runs/lgg/checkpoints/best.pt", image)': Step(
        prelude="import numpy as np\nfrom PIL import Image\n"
                "image = np.asarray(Image.open(sorted(__import__('glob').glob('scans/*.tif'))[0]))\n",
        reason="image = one LGG slice as read by Pillow"),
    'pip install -e ".[export]"': Step(),
    "pixeldrl export --checkpoint runs/lgg/checkpoints/best.pt --format onnx": Step(),
    "pixeldrl export --checkpoint runs/lgg/checkpoints/best.pt --format torchscript": Step(),
    "import onnxruntime as ort\n"
    'masks, uncertainty = ort.InferenceSession("runs/lgg/checkpoints/best.onnx").run(None, {"images": x})\n'
    "import torch\n"
    'masks, uncertainty = torch.jit.load("runs/lgg/checkpoints/best.ts.pt")(torch.from_numpy(x))': Step(
        prelude="import json, numpy as np\n"
                "_, c, s, _ = json.load(open('runs/lgg/checkpoints/best.onnx.json'))['inputs']['images']['shape']\n"
                "x = np.random.default_rng(0).random((3, c, s, s), dtype=np.float32)\n",
        reason="x = a batch of 3 random images of the shape the export's JSON gives"),
    "import mlflow, torch\n"
    'model = mlflow.pytorch.load_model("models:/<model id>")\n'
    "masks = model(torch.from_numpy(x))": Step(
        prelude="import mlflow, numpy as np\n"
                "_ids = [e.experiment_id for e in mlflow.search_experiments()]\n"
                "_m = mlflow.search_logged_models(experiment_ids=_ids, output_format='list', max_results=1, "
                "order_by=[{'field_name': 'creation_time', 'ascending': False}])[0]\n"
                "_shape = mlflow.models.get_model_info(f'models:/{_m.model_id}').signature.inputs.to_dict()[0]"
                "['tensor-spec']['shape']\n"
                "x = np.random.default_rng(0).random((3, *_shape[1:]), dtype=np.float32)\n",
        subs={"<model id>": "{model_id}"},
        reason="<model id> = the newest model logged in this clone's MLflow store; x = a batch of 3 random images"),
    # Distributed training on Ray
    "python train.py --set num_workers=2 --set worker_cpus=1 --set learner_cpus=0": Step(
        kind="cap", cap_s=60, reason="a 10-minute run; stopped with Ctrl-C after 60 s"),
    "python train.py --config tune_configs/smoke.yaml": Step(),
    "export RAY_AUTH_MODE=token": Step(),
    "python train.py --config tune_configs/smoke.yaml --set engine=rllib_appo --set num_workers=0 --set "
    "batch_size=8 --set epochs=60": Step(),
    "ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env-json "
    '"{\\"env_vars\\": {\\"MLFLOW_TRACKING_URI\\": \\"sqlite:///$PWD/mlflow.db\\"}}" -- python train.py --config '
    "tune_configs/lgg_cpu.yaml --set num_workers=14 --set learner_gpus=1 --output-dir /shared/runs/lgg": Step(
        ray_head=True,
        subs={"tune_configs/lgg_cpu.yaml": "tune_configs/smoke.yaml", "num_workers=14": "num_workers=2",
              "learner_gpus=1": "learner_gpus=0", "/shared/runs/lgg": "$PWD/runs/job"},
        reason="on a local head (token auth, 127.0.0.1:8265, 2 CPUs): the smoke config with 2 workers, no GPU, "
               "and an output folder that exists here, instead of 14 workers and a GPU learner"),
    # Sweeps and tracking
    "python train.py --tune tune_configs/sweep_asha.yaml": Step(
        kind="cap", cap_s=180, reason="a sweep of hours; stopped with Ctrl-C after 180 s (Tune saves its state)"),
    "python train.py --tune tune_configs/sweep_asha.yaml --resume": Step(
        kind="cap", cap_s=90, reason="resumes the sweep above; stopped with Ctrl-C after 90 s"),
    "python train.py --tune tune_configs/ablation.yaml": Step(kind="cap", cap_s=75,
                                                           reason="stopped with Ctrl-C after 75 s"),
    "python train.py --tune tune_configs/fewshot.yaml": Step(kind="cap", cap_s=75,
                                                           reason="stopped with Ctrl-C after 75 s"),
    "python train.py --tune tune_configs/cv_heart.yaml": Step(kind="cap", cap_s=75,
                                                           reason="stopped with Ctrl-C after 75 s"),
    "pixeldrl cv-report --experiment cv-heart": Step(
        cwd="main", reason="over the full 10-trial sweep in the main checkout's runs/tune (50 minutes of training)"),
    "python train.py --tune tune_configs/ablation_heart.yaml": Step(kind="cap", cap_s=75,
                                                                     reason="stopped with Ctrl-C after 75 s"),
    "pixeldrl ablation-report --experiment ablation-heart": Step(
        cwd="main", reason="over the ablation sweep in the main checkout's runs/tune (hours of training)"),
    "python train.py --tune tune_configs/ablation_heart.yaml --variants no-attention,no-dilation": Step(
        kind="cap", cap_s=75, reason="stopped with Ctrl-C after 75 s"),
    "pixeldrl ablation-report --experiment ablation-heart --merge benchmarks/results/ablation_heart.json": Step(
        cwd="main", reason="over the heart ablation's architecture rows in the main checkout's runs/tune, pooled "
                           "with the earlier report of its other rows (hours of training)"),
    "pixeldrl compare --experiment sweep-asha --metric val/dice": Step(),
    "mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db": Step(kind="serve"),
    # Clusters
    "ray get-auth-token --generate": Step(kind="skip", reason="writes ~/.ray/auth_token for the cloud cluster below; "
                                          "not needed without one"),
    "ray up cluster/aws.yaml": Step(kind="skip", reason=NO_CLOUD),
    "ray dashboard cluster/aws.yaml &": Step(kind="skip", reason=NO_CLOUD),
    "RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env-json "
    "'{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"http://127.0.0.1:5000\"}}' -- python train.py --config "
    "tune_configs/paper_brain.yaml --set data.format=parquet --set data.path=s3://BUCKET/lgg --set num_workers=14 "
    "--set learner_gpus=1 --output-dir /home/ray/runs/paper": Step(kind="skip", reason=NO_CLOUD),
    "ray down cluster/aws.yaml": Step(kind="skip", reason=NO_CLOUD),
    "docker build -f cluster/kuberay/Dockerfile -t REGISTRY/pixeldrl-mg:0.1.0 . && docker push "
    "REGISTRY/pixeldrl-mg:0.1.0": Step(kind="skip", reason=NO_K8S),
    "kubectl apply -f cluster/kuberay/raycluster.yaml": Step(kind="skip", reason=NO_K8S),
    "kubectl apply -f cluster/kuberay/rayjob.yaml": Step(kind="skip", reason=NO_K8S),
    "kubectl port-forward svc/pixeldrl-head-svc 8265 5000": Step(kind="skip", reason=NO_K8S),
    "kubectl delete -f cluster/kuberay/rayjob.yaml -f cluster/kuberay/raycluster.yaml": Step(kind="skip",
                                                                                             reason=NO_K8S),
    "export RAY_FAKE_CLUSTER=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token "
    "RAY_AUTH_TOKEN=$(openssl rand -hex 16)": Step(),
    "ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=1 "
    "--autoscaling-config=cluster/fake_multinode.yaml": Step(),
    "ray job submit -- python $PWD/train.py --config $PWD/tune_configs/smoke.yaml --set num_workers=4 --set "
    "worker_cpus=1 --set learner_cpus=1 --set learner_gpus=1": Step(),
    "ray status": Step(),
    "ray stop": Step(),
    # Data
    "pixeldrl prepare-data ../shared/data/lgg_kaggle_3m shards/lgg --format lgg --shard-size 256": Step(),
    "pixeldrl prepare-data ../shared/data/kvasir_seg shards/kvasir --format folder --skip-bad": Step(),
    "pixeldrl prepare-data ../shared/data/lgg_kaggle_3m s3://my-bucket/lgg/v1 --format lgg": Step(
        kind="skip", reason="no object store reachable from this machine (no network, no credentials); the s3:// "
                            "path goes through pyarrow's filesystem layer, tested with a local file:// URI"),
    "pixeldrl data-info --format lgg --path ../shared/data/lgg_kaggle_3m --channels 1": Step(),
    "pixeldrl data-info --format parquet --path shards/lgg --k-shot 50": Step(),
    # The pixel-agent environment
    "import gymnasium as gym\n"
    "import pixelrl_env\n"
    'env = gym.make("PixelSegBatch-v0", batch_size=32, t_max=10, action_set="paper",\n'
    '               data={"format": "lgg", "path": "../shared/data/lgg_kaggle_3m", "size": 128, "channels": [1]})\n'
    "obs, info = env.reset(seed=0)\n"
    "obs, r, terminated, truncated, info = env.step(env.action_space.sample())\n"
    'info["reward_map"]\n'
    'info["state"]': Step(),
}


def readme_blocks(text: str) -> list[tuple[str, str, list[str]]]:
    """``(section, language, commands)`` for every ``bash`` and ``python`` fenced block, in order. A bash command is
    one logical line (``\\`` continuations joined, comments dropped); a python block is one command."""
    out, section = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"^```(bash|python)\s*$", line)
        if not m:
            i += 1
            continue
        body = []
        i += 1
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if m.group(1) == "python":
            code = [_strip_comment(b) for b in body]
            out.append((section, "python", ["\n".join(c for c in code if c.strip())]))
            continue
        cmds, cur = [], ""
        for b in body:
            b = _strip_comment(b)
            if not b.strip():
                continue
            if b.endswith("\\"):
                cur += b[:-1].strip() + " "
                continue
            cmds.append((cur + b.strip()).strip())
            cur = ""
        out.append((section, "bash", cmds))
    return out


def _strip_comment(line: str) -> str:
    """Drop a trailing ``# comment`` that follows two spaces, or a whole-line comment (not ``#`` inside a URI)."""
    if line.lstrip().startswith("#"):
        return ""
    return re.sub(r"\s{2,}#.*$", "", line).rstrip()


def readme_commands(text: str) -> list[tuple[str, str, str]]:
    return [(sec, lang, c) for sec, lang, cmds in readme_blocks(text) for c in cmds]


# the README, then the docs pages in the order a user meets them (later commands need what earlier ones wrote:
# predict in training.md reads the run the README's first commands trained)
DOCS = ("README.md", "docs/training.md", "docs/distributed.md", "docs/sweeps.md", "docs/clusters.md", "docs/data.md",
        "docs/results.md", "docs/reliability.md", "docs/architecture.md", "docs/cost.md")


def doc_commands(root: Path) -> list[tuple[str, str, str]]:
    """Every command of :data:`DOCS` in order, each section named with its page (``docs/training.md: ...``)."""
    return [(f"{page}: {sec}", lang, c) for page in DOCS for sec, lang, c in readme_commands((root / page).read_text())]


# --- placeholders -----------------------------------------------------------------------------------------------

def _setup_scans(clone: Path) -> None:
    """``scans/`` with 3 LGG slices (FLAIR TIFFs of one patient, as downloaded) and ``case7.nii.gz``."""
    scans = clone / "scans"
    scans.mkdir(exist_ok=True)
    patient = sorted(p for p in (SHARED / "lgg_kaggle_3m").iterdir() if p.is_dir())[0]
    tifs = sorted(p for p in patient.glob("*.tif") if not p.stem.endswith("_mask"))
    for t in tifs[len(tifs) // 2: len(tifs) // 2 + 3]:
        shutil.copy(t, scans / t.name)
    shutil.copy(sorted((SHARED / "la_heart" / "imagesTr").glob("*.nii.gz"))[0], clone / "case7.nii.gz")


SETUPS = {"scans": _setup_scans}


# --- running ----------------------------------------------------------------------------------------------------

def _tail(text: str, n: int = 12) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [ln[:300] for ln in lines[-n:]]


def _run_shell(cmd: str, cwd: Path, env: dict, step: Step, log: Path) -> dict:
    """Run one bash command line; return status, time, whether it was capped, and the environment it left (so that
    ``export`` carries to the next command, as in a user's shell)."""
    env_file = log.with_suffix(".env")
    script = f"{cmd}\n__rc=$?\nenv -0 > {shlex.quote(str(env_file))}\nexit $__rc\n"
    t0 = time.time()
    capped = killed = False
    with open(log, "wb") as out:
        # SIGINT back to its default in the child, as in a terminal: a process started in the background (`cmd &`)
        # inherits an ignored SIGINT, and bash and Python started so never see Ctrl-C
        proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while proc.poll() is None:
            time.sleep(1)
            if step.kind != "cap":
                continue
            if time.time() - t0 > step.cap_s or (step.until and (cwd / step.until).exists()):
                if step.until and (cwd / step.until).exists():
                    time.sleep(5)  # let the checkpoint write finish
                capped = True
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground group
                try:
                    proc.wait(timeout=180)
                except subprocess.TimeoutExpired:  # Ctrl-C did not stop it: that is a failure of the command
                    killed = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
    wall = time.time() - t0
    new_env = env
    if env_file.exists() and env_file.stat().st_size:
        new_env = dict(kv.split("=", 1) for kv in env_file.read_text().split("\0") if "=" in kv)
        env_file.unlink()
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "stopped_by_ctrl_c": capped and not killed,
            "killed_after_ctrl_c": killed, "output_tail": _tail(log.read_text(errors="replace"))}, new_env


def _run_python(code: str, cwd: Path, env: dict, step: Step, log: Path) -> dict:
    t0 = time.time()
    r = subprocess.run([shutil.which("python", path=env["PATH"]) or sys.executable, "-c", step.prelude + code],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    log.write_text(r.stdout + r.stderr)
    return {"rc": r.returncode, "wall_s": round(time.time() - t0, 1), "stopped_by_ctrl_c": False,
            "output_tail": _tail(r.stdout + r.stderr)}


def _serve(cmd: str, cwd: Path, env: dict, log: Path) -> dict:
    """Start the server, fetch its page from 127.0.0.1:5000 until it answers (<= 120 s), stop it."""
    t0 = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        status, ready = None, None
        while time.time() - t0 < 120 and proc.poll() is None:
            try:
                with urllib.request.urlopen("http://127.0.0.1:5000/", timeout=5) as r:
                    status, ready = r.status, round(time.time() - t0, 1)
                    break
            except OSError:
                time.sleep(1)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"rc": 0 if status == 200 else 1, "wall_s": round(time.time() - t0, 1), "stopped_by_ctrl_c": False,
            "http_status": status, "answered_after_s": ready, "output_tail": _tail(log.read_text(errors="replace"))}


def _model_id(cwd: Path, env: dict) -> str:
    code = ("import mlflow; print(mlflow.search_logged_models(experiment_ids=[e.experiment_id for e in "
            "mlflow.search_experiments()], output_format='list', max_results=1, "
            "order_by=[{'field_name': 'creation_time', 'ascending': False}])[0].model_id)")
    r = subprocess.run([shutil.which("python", path=env["PATH"]), "-c", code], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else "<none found>"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="benchmarks/results/readme_commands.json")
    p.add_argument("--main", default=str(ROOT.parent / "main"),
                   help="checkout whose runs/tune holds the finished sweeps (for the report commands)")
    p.add_argument("--only", default="", help="run only commands whose text contains this (debugging)")
    p.add_argument("--reuse", default=None, help="an earlier JSON of this script: take its entries before --from")
    p.add_argument("--from", dest="start", type=int, default=0, help="first command to run (with --reuse)")
    p.add_argument("--to", dest="stop", type=int, default=None, help="last command to run (a part of the README)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from machine import describe, write_json
    from tests.ray_head import RayHead

    clone = ROOT
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    commands = doc_commands(clone)
    missing = [c for _, _, c in commands if c not in PLAN]
    if missing:
        raise SystemExit("README commands without a plan entry in benchmarks/readme_commands.py:\n" +
                         "\n".join(missing))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    logs = clone / "runs" / "readme_commands"
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["CI"] = "true"
    rec = {"command": "python " + " ".join(sys.argv), "commit": commit, "clone": str(clone),
           "python": shutil.which("python", path=env["PATH"]), "commands": []}
    t_all = time.time()
    for n, (section, lang, cmd) in enumerate(commands):
        if args.only and args.only not in cmd:
            continue
        step = PLAN[cmd]
        if args.stop is not None and n > args.stop:
            break
        if n < args.start:
            old = next((e for e in json.loads(Path(args.reuse).read_text())["commands"] if e["n"] == n), None)
            if old is not None and old["as_written"] != cmd:
                raise SystemExit(f"--reuse {args.reuse}: entry {n} is not {cmd!r}")
            if old is None or (not old.get("ran") and step.kind != "skip"):
                old = {"n": n, "section": section, "language": lang, "as_written": cmd, "how": step.kind,
                       "note": "not run in this check", "ran": False, "not_reached": True}
            rec["commands"].append({**old, "reused_from": str(args.reuse)})
            print(f"[{n:2d}] reused from {args.reuse}", flush=True)
            continue
        entry = {"n": n, "section": section, "language": lang, "as_written": cmd, "how": step.kind,
                 "note": step.reason}
        if step.kind == "skip":
            entry["ran"] = False
            rec["commands"].append(entry)
            print(f"[{n:2d}] skip  {cmd.splitlines()[0][:90]}  ({step.reason[:60]})", flush=True)
            continue
        run_cmd = cmd
        for a, b in step.subs.items():
            b = b.format(model_id=_model_id(clone, env)) if "{model_id}" in b else b
            run_cmd = run_cmd.replace(a, b)
        if run_cmd != cmd:
            entry["ran_as"] = run_cmd
        if step.setup:
            SETUPS[step.setup](clone)
        cwd = Path(args.main) if step.cwd == "main" else clone
        if step.cwd == "main":
            entry["cwd"] = str(cwd)
        log = logs / f"{n:02d}.log"
        head = None
        run_env = env
        if step.ray_head:
            import secrets
            run_env = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
            head = RayHead({**run_env, "RAY_AUTH_MODE": "token"}, ["--num-cpus=2"], dashboard_port=8265).start()
        try:
            if step.kind == "serve":
                res = _serve(run_cmd, cwd, run_env, log)
            elif lang == "python":
                res = _run_python(run_cmd, cwd, run_env, step, log)
            else:
                res, new_env = _run_shell(run_cmd, cwd, run_env, step, log)
                if not step.ray_head:
                    env = new_env
        finally:
            if head is not None:
                head.stop()
                head.cleanup()
        entry.update(ran=True, **res)
        # a capped run that Ctrl-C stopped counts as working when it was still running (its exit status after
        # Ctrl-C is the program's choice); a command that ended by itself must exit 0
        entry["ok"] = res["stopped_by_ctrl_c"] or (res["rc"] == 0 and not res.get("killed_after_ctrl_c"))
        rec["commands"].append(entry)
        mark = "ok  " if entry["ok"] else "FAIL"
        print(f"[{n:2d}] {mark} {res['wall_s']:7.1f} s  {cmd.splitlines()[0][:90]}"
              f"{'  (Ctrl-C)' if res['stopped_by_ctrl_c'] else ''}", flush=True)
        if not entry["ok"]:
            print("      " + "\n      ".join(res["output_tail"]), flush=True)
        write_json(args.json, rec)  # so far: a cut run keeps what it measured
    rec["wall_s"] = round(time.time() - t_all, 1)
    rec["machine"] = describe()  # imports torch: installed by the Quickstart's first command
    rec["failed"] = [e["n"] for e in rec["commands"] if e.get("ran") and not e["ok"]]
    write_json(args.json, rec)
    print(f"wrote {args.json}: {sum(e.get('ran', False) for e in rec['commands'])} ran, "
          f"{len(rec['failed'])} failed, {sum(not e.get('ran') for e in rec['commands'])} not run "
          f"({rec['wall_s']} s)")


if __name__ == "__main__":
    main()

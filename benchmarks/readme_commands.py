"""Run every command block of the README as written, in order, in a fresh clone, and record what happened.

A README that users copy from has to work as written. This script reads the fenced ``bash`` and ``python`` blocks of
``README.md`` and the ``docs/`` pages (:data:`DOCS`, in that order), runs each command in the clone it lives in (a fresh ``git clone`` with ``../shared`` beside it, and
a fresh virtual environment that the Quickstart's ``pip install`` fills), and writes for every command: what ran,
exit status, wall time, and the tail of its output, to ``benchmarks/results/readme_commands.json``.

Every command has an entry in :data:`PLAN` (``tests/benchmarks/test_readme_commands.py`` fails when the README and the plan
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
        PATH=/tmp/rc-venv/bin:$PATH python -m benchmarks.readme_commands --json benchmarks/results/readme_commands.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.readme_plan import PLAN, Step
from rl_agents.experiment.provenance import command, describe, write_json
from tests.ray_head import RayHead

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


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
        "docs/results.md", "docs/reliability.md", "docs/architecture.md", "docs/cost.md", "docs/config.md")


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


def _setup_my_data(clone: Path) -> None:
    """``my_data/`` as a user's own folder: 40 Kvasir-SEG pairs in ``images/`` and ``masks/``."""
    for sub in ("images", "masks"):
        (clone / "my_data" / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((SHARED / "kvasir_seg" / sub).iterdir())[:40]:
            shutil.copy(f, clone / "my_data" / sub / f.name)


SETUPS = {"scans": _setup_scans, "my_data": _setup_my_data}


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


_BACKGROUND: list[subprocess.Popen] = []  # servers a README block leaves running for the commands after it


def _serve(cmd: str, cwd: Path, env: dict, log: Path, url: str, keep: bool) -> dict:
    """Start the server, fetch ``url`` until it answers (<= 120 s); stop it, or with ``keep`` leave it running for
    the next commands (:func:`_stop_background`)."""
    t0 = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    status, ready = None, None
    while time.time() - t0 < 120 and proc.poll() is None:
        try:
            with urllib.request.urlopen(url or "http://127.0.0.1:5000/", timeout=5) as r:
                status, ready = r.status, round(time.time() - t0, 1)
                break
        except OSError:
            time.sleep(1)
    _BACKGROUND.append(proc)
    if not keep or status != 200:
        _stop_background()
    return {"rc": 0 if status == 200 else 1, "wall_s": round(time.time() - t0, 1), "stopped_by_ctrl_c": False,
            "http_status": status, "answered_after_s": ready, "output_tail": _tail(log.read_text(errors="replace"))}


def _stop_background() -> None:
    """Ctrl-C to each server left running (as its user would stop it), then SIGKILL after 30 s."""
    while _BACKGROUND:
        proc = _BACKGROUND.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _model_id(cwd: Path, env: dict) -> str:
    code = ("import mlflow; print(mlflow.search_logged_models(experiment_ids=[e.experiment_id for e in "
            "mlflow.search_experiments()], output_format='list', max_results=1, "
            "order_by=[{'field_name': 'creation_time', 'ascending': False}])[0].model_id)")
    r = subprocess.run([shutil.which("python", path=env["PATH"]), "-c", code], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else "<none found>"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="benchmarks/results/readme_commands.json")
    p.add_argument("--main", default=str(ROOT.parent / "main"),
                   help="checkout whose runs/tune holds the finished sweeps (for the report commands)")
    p.add_argument("--only", default="", help="run only commands whose text contains this (debugging)")
    p.add_argument("--section", default="", help="run only the commands of sections whose name contains this (e.g. "
                                                 "'Use a trained model'; what they need must be there already)")
    p.add_argument("--reuse", default=None, help="an earlier JSON of this script: take its entries before --from")
    p.add_argument("--from", dest="start", type=int, default=0, help="first command to run (with --reuse)")
    p.add_argument("--to", dest="stop", type=int, default=None, help="last command to run (a part of the README)")
    return p.parse_args()


def _reused(n: int, section: str, lang: str, cmd: str, step: Step, reuse: str) -> dict:
    """Entry ``n`` of an earlier run's JSON (``--reuse``), which must be of the same command."""
    old = next((e for e in json.loads(Path(reuse).read_text())["commands"] if e["n"] == n), None)
    if old is not None and old["as_written"] != cmd:
        raise SystemExit(f"--reuse {reuse}: entry {n} is not {cmd!r}")
    if old is None or (not old.get("ran") and step.kind != "skip"):
        old = {"n": n, "section": section, "language": lang, "as_written": cmd, "how": step.kind,
               "note": "not run in this check", "ran": False, "not_reached": True}
    return {**old, "reused_from": str(reuse)}


def _run(entry: dict, cmd: str, lang: str, step: Step, clone: Path, main_dir: Path, env: dict,
         log: Path) -> tuple[dict, dict]:
    """Run one command as its plan says; returns ``(result, env)``, the environment the shell left for the next."""

    run_cmd = cmd
    for a, b in step.subs.items():
        b = b.format(model_id=_model_id(clone, env)) if "{model_id}" in b else b
        run_cmd = run_cmd.replace(a, b)
    if run_cmd != cmd:
        entry["ran_as"] = run_cmd
    if step.setup:
        SETUPS[step.setup](clone)
    cwd = main_dir if step.cwd == "main" else clone
    if step.cwd == "main":
        entry["cwd"] = str(cwd)
    head, run_env = None, env
    if step.ray_head:
        run_env = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        head = RayHead({**run_env, "RAY_AUTH_MODE": "token"}, ["--num-cpus=2"], dashboard_port=8265).start()
    try:
        if step.kind in ("serve", "background"):
            return _serve(run_cmd, cwd, run_env, log, step.url, keep=step.kind == "background"), env
        if lang == "python":
            return _run_python(run_cmd, cwd, run_env, step, log), env
        res, new_env = _run_shell(run_cmd, cwd, run_env, step, log)
        return res, (env if step.ray_head else new_env)
    finally:
        if head is not None:
            head.stop()
            head.cleanup()


def main() -> None:
    args = _args()
    clone = ROOT
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    commands = doc_commands(clone)
    missing = [c for _, _, c in commands if c not in PLAN]
    if missing:
        raise SystemExit("README commands without a plan entry in benchmarks/readme_plan.py:\n" + "\n".join(missing))
    logs = clone / "runs" / "readme_commands"
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["CI"] = "true"
    rec = {"command": command(), "commit": commit, "clone": str(clone),
           "python": shutil.which("python", path=env["PATH"]), "commands": []}
    t_all = time.time()
    for n, (section, lang, cmd) in enumerate(commands):
        step = PLAN[cmd]
        if (args.only and args.only not in cmd) or (args.stop is not None and n > args.stop) or \
                (args.section and args.section not in section):
            continue
        if n < args.start:
            rec["commands"].append(_reused(n, section, lang, cmd, step, args.reuse))
            print(f"[{n:2d}] reused from {args.reuse}", flush=True)
            continue
        entry = {"n": n, "section": section, "language": lang, "as_written": cmd, "how": step.kind,
                 "note": step.reason}
        if step.kind == "skip":
            rec["commands"].append({**entry, "ran": False})
            print(f"[{n:2d}] skip  {cmd.splitlines()[0][:90]}  ({step.reason[:60]})", flush=True)
            continue
        res, env = _run(entry, cmd, lang, step, clone, Path(args.main), env, logs / f"{n:02d}.log")
        entry.update(ran=True, **res)
        # a capped run that Ctrl-C stopped counts as working when it was still running (its exit status after
        # Ctrl-C is the program's choice); a command that ended by itself must exit 0
        entry["ok"] = res["stopped_by_ctrl_c"] or (res["rc"] == 0 and not res.get("killed_after_ctrl_c"))
        rec["commands"].append(entry)
        print(f"[{n:2d}] {'ok  ' if entry['ok'] else 'FAIL'} {res['wall_s']:7.1f} s  {cmd.splitlines()[0][:90]}"
              f"{'  (Ctrl-C)' if res['stopped_by_ctrl_c'] else ''}", flush=True)
        if not entry["ok"]:
            print("      " + "\n      ".join(res["output_tail"]), flush=True)
        if step.stop_servers:
            _stop_background()
        write_json(args.json, rec)  # so far: a cut run keeps what it measured
    _stop_background()
    rec["wall_s"] = round(time.time() - t_all, 1)
    rec["machine"] = describe()
    rec["failed"] = [e["n"] for e in rec["commands"] if e.get("ran") and not e["ok"]]
    write_json(args.json, rec)
    print(f"wrote {args.json}: {sum(e.get('ran', False) for e in rec['commands'])} ran, "
          f"{len(rec['failed'])} failed, {sum(not e.get('ran') for e in rec['commands'])} not run "
          f"({rec['wall_s']} s)")

if __name__ == "__main__":
    main()

"""Every guard's test fails without its guard: for each protection, a copy of the repository with that protection
switched off (text replacements in one file), and the protection's test run against the copy; the row passes when
that test fails there (and passes on the real code, which CI checks).

    python -m benchmarks.mutation --json benchmarks/results/mutation.json [--rows 'name;...'] [--skip-slow] [--update]

The copy is the tracked files of this checkout in a temporary folder, put first on ``PYTHONPATH`` so that its
packages shadow the installed ones; the real checkout is never edited. A guard that a dependency provides (MLflow's
artifact-path checks, Pillow's pixel limit) is switched off in a copy of that package placed in the copy, where it
shadows the installed one for every process of the test run (servers included). The rows of the reliability table
(docs/reliability.md) name the guards that make them hold.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.gpu_prepare import working_tree_files
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]
CK, LC = "rl_agents/experiment/checkpoint.py", "tests/rl_agents/experiment/test_lifecycle.py"
BAD = "tests/rl_agents/cli/test_bad_input.py"
DIST, A3C = "tests/rl_agents/engines/test_distributed.py", "rl_agents/engines/ray_a3c.py"
CHAOS, IO = "tests/benchmarks/test_chaos.py", "pixelrl_env/io.py"
BAD_DATA, SEC = "tests/pixelrl_env/test_bad_data.py", "tests/system/test_security.py"


@dataclass
class Guard:
    name: str
    file: str
    old: str
    new: str
    test: str  # pytest node id (or -k expression after "::-k ")
    slow: bool = False
    timeout_s: float | None = None  # a missing guard that makes its test wait: the test failing by this limit
    chaos: bool = False  # the test is marked chaos (deselected by default): run with -m chaos
    module: str | None = None  # a dependency's guard: its installed package is copied into the copy and edited there
    also: tuple[tuple[str, str], ...] = ()  # more replacements in the same file

    @property
    def source(self) -> Path:
        return Path(importlib.util.find_spec(self.module).origin) if self.module else ROOT / self.file

    def target(self, copy: Path) -> Path:
        """The file to edit in ``copy``; a dependency's whole package is copied there first (it then shadows the
        installed one for every process of the test, servers included)."""
        if not self.module:
            return copy / self.file
        package = Path(importlib.util.find_spec(self.module.split(".")[0]).origin).parent
        shutil.copytree(package, copy / package.name, ignore=shutil.ignore_patterns("__pycache__"))
        for dist in importlib.metadata.packages_distributions().get(package.name, []):  # bundled shared libraries
            if (libs := package.parent / f"{dist.lower()}.libs").is_dir():  # (Pillow's: ../pillow.libs)
                shutil.copytree(libs, copy / libs.name)
        return copy / package.name / self.source.relative_to(package)


GUARDS = [
    Guard("safe loading (weights_only=True)", CK,
          "torch.load(path, map_location=map_location, weights_only=True)",
          "torch.serialization.load(path, map_location=map_location, weights_only=False)",
          f"{LC}::test_every_torch_load_in_the_project_is_weights_only"),
    Guard("a refused checkpoint never falls back to .prev", CK, "        except CheckpointError:\n            raise\n",
          "", f"{LC}::test_a_crafted_checkpoint_never_runs_its_code"),
    Guard("the .prev fallback of a damaged checkpoint", CK,
          "for candidate in (path, previous_path(path)) if fallback else (path,):", "for candidate in (path,):",
          f"{LC}::test_checkpoint_is_atomic_keeps_the_previous_and_falls_back_when_damaged"),
    Guard("the SHA-256 check", CK, "    if content_digest(payload) != want:", "    if False:",
          f"{LC}::test_checkpoint_is_atomic_keeps_the_previous_and_falls_back_when_damaged"),
    Guard("a checkpoint without a digest refused", CK, "        if os.environ.get(ALLOW_UNDIGESTED) != \"1\":",
          "        if False:", f"{LC}::test_a_checkpoint_without_its_digest_is_refused_unless_the_user_says"),
    Guard("Ctrl-C deferred until a checkpoint is written", CK, "    with _ctrl_c_after():",
          "    with contextlib.nullcontext():",
          f"{LC}::test_ctrl_c_inside_a_checkpoint_write_waits_for_the_whole_file"),
    Guard("the disk-full cleanup", CK, "            tmp.unlink(missing_ok=True)\n", "",
          f"{LC}::test_a_write_that_runs_out_of_space_keeps_the_previous_checkpoint"),
    Guard("a hung worker killed at worker_timeout_s", "rl_agents/engines/ray_a3c.py",
          "limit = self.cfg.ray.worker_timeout_s", "limit = 20 * self.cfg.ray.worker_timeout_s",
          "tests/rl_agents/engines/test_distributed.py::"
          "test_a_hung_worker_is_killed_by_the_timeout_and_the_run_finishes", slow=True),
    Guard("the head watchdog's exit 75", "rl_agents/engines/ray_runtime.py", "        os._exit(EXIT_HEAD_LOST)",
          "        return", "tests/rl_agents/engines/test_ray_runtime.py::"
          "test_the_head_watchdog_ends_the_driver_with_status_75_naming_the_head_and_checkpoint"),
    Guard("Ray's token file made owner-only", "rl_agents/engines/ray_runtime.py", "        token.chmod(0o600)",
          "        pass", "tests/rl_agents/engines/test_ray_runtime.py::"
          "test_connecting_makes_the_token_file_readable_by_its_owner_only"),
    Guard("the Parquet page CRC", "pixelrl_env/parquet.py", "page_checksum_verification=True",
          "page_checksum_verification=False", "tests/pixelrl_env/test_parquet.py"),
    Guard("the cluster MLflow server's basic auth", "cluster/mlflow_server.sh", "mlflow server --app-name basic-auth",
          "mlflow server", "tests/cluster/test_cluster.py::-k unauthenticated or refuses"),
    Guard("the served model binds 127.0.0.1", "rl_agents/experiment/serve.py", '    host: str = "127.0.0.1"',
          '    host: str = "0.0.0.0"', "tests/rl_agents/experiment/test_serve.py::"
          "test_a_served_model_answers_over_http_and_survives_bad_requests"),
    Guard("sweeps resume only from private storage", "rl_agents/experiment/sweep_storage.py",
          "        for p in (Path(storage), folder, *folder.glob(\"*.pkl\")):", "        for p in ():",
          "tests/rl_agents/experiment/test_sweep_storage.py"),
    Guard("a trained run never replaced without --resume/--overwrite", "rl_agents/cli/training.py",
          "    if found and not allowed:", "    if False:", "tests/rl_agents/cli/test_cli.py::"
          "test_train_refuses_to_replace_a_trained_run_without_resume_or_overwrite"),
    Guard("predict checks every input before writing", "rl_agents/experiment/predict.py",
          "    preflight(found.files, m.in_channels, m.cfg.data.channels, m.cfg.data.context)\n", "",
          "tests/rl_agents/experiment/test_predict.py::"
          "test_an_input_the_model_cannot_take_is_refused_in_one_line_before_anything_is_written"),
    Guard("unwritable outputs are one line", "rl_agents/cli/__init__.py",
          "    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:",
          "    except KeyError as e:", f"{BAD}::-k cannot_be_written"),
    Guard("weights that do not fit their config are one line", "rl_agents/algo/model.py",
          "    except RuntimeError as e:", "    except KeyError as e:", f"{BAD}::-k does_not_fit or another_network"),
    Guard("evaluate refuses data of other channels", "rl_agents/experiment/evaluate.py",
          "        if images.shape[1] != int(model.in_channels):", "        if False:",
          f"{BAD}::test_a_three_channel_model_evaluated_on_one_channel_volumes"),
    # --- the fault rows of the reliability table (docs/reliability.md), each by the guard that makes it hold
    Guard("Ray restarts a killed worker", A3C, "max_restarts=cfg.ray.worker_max_restarts,", "max_restarts=0,",
          f"{DIST}::test_a_killed_worker_is_restarted_and_training_goes_on", timeout_s=240),
    Guard("a gradient is applied once (its id)", "rl_agents/engines/ray_actors.py", "            if gid in self.seen:",
          "            if False:", f"{DIST}::test_learner_applies_a_gradient_id_once"),
    Guard("a worker dead past worker_max_restarts ends the run", A3C,
          "            if isinstance(e, ActorDiedError) and self.restarts[i] >= self.cfg.ray.worker_max_restarts:",
          "            if False:", f"{LC}::test_worker_restarts_used_up_end_the_run_with_a_clear_error",
          timeout_s=240),
    Guard("a dead learner is restored from last.pt", A3C,
          "        ckpt = self.read_last_checkpoint() if self.read_last_checkpoint is not None else None",
          "        ckpt = None",
          f"{DIST}::test_a_killed_learner_is_restored_from_its_checkpoint_and_the_run_finishes"),
    Guard("the learner's restore limit", A3C, "        if n >= limit:", "        if False:",
          f"{LC}::test_a_dead_learner_past_its_restore_limit_ends_the_run_with_a_clear_error", timeout_s=300),
    Guard("a resume restores the RNG streams (one process)", "rl_agents/engines/local.py",
          '        if "env" in ckpt.rng and "torch" in ckpt.rng:', "        if False:",
          f"{LC}::test_a_driver_killed_with_sigkill_resumes_to_the_uninterrupted_result"),
    Guard("a resumed Ray run's learner starts from the checkpoint", A3C,
          "        self._start_learner(resume.agent if resume else None, self.pixel_agent_steps)",
          "        self._start_learner(None, self.pixel_agent_steps)",
          f"{DIST}::test_a_ray_run_killed_with_sigkill_resumes_to_the_planned_updates", slow=True, chaos=True),
    Guard("a sweep's --resume restores Tune's state", "rl_agents/experiment/sweep.py",
          "    if resume and tune.Tuner.can_restore(str(storage_dir)):", "    if False:",
          "tests/rl_agents/experiment/test_sweep.py::-k interrupted_sweep_resumes and sigkill", slow=True,
          chaos=True, timeout_s=600),
    Guard("Ray restarts a worker whose node was removed", A3C, "max_restarts=cfg.ray.worker_max_restarts,",
          "max_restarts=0,", f"{CHAOS}::test_a_node_removed_and_added_back_training_goes_on_and_reaches_its_dice",
          slow=True, chaos=True, timeout_s=420),
    Guard("a worker waits for the learner's answer (one gradient in flight)", "rl_agents/engines/ray_actors.py",
          "            version, weights, done, applied = ray.get(learner.push.remote(self.index, self.version, grads,\n"
          "                                                                     {**stats, \"gradient_id\": "
          "next(self.gradient_ids)}))\n            self._set(version, weights)\n",
          "            learner.push.remote(self.index, self.version, grads, {**stats, \"gradient_id\": "
          "next(self.gradient_ids)})\n",
          f"{CHAOS}::test_a_slow_learner_bounds_what_is_in_flight", slow=True, chaos=True, timeout_s=420),
    Guard("Ray restarts the evaluator and reruns its pass", A3C, "max_restarts=EVALUATOR_MAX_RESTARTS,",
          "max_restarts=0,", f"{DIST}::test_an_evaluator_that_dies_mid_pass_is_restarted_and_the_pass_is_run_again",
          timeout_s=240),
    Guard("a truncated image caught by a full decode", IO,
          "            im.load()  # forces a full decode so that truncation is caught here", "            pass",
          BAD_DATA),
    Guard("NaN pixels refused", IO, "        if not np.isfinite(arr).all():", "        if False:", BAD_DATA),
    Guard("a non-binary mask refused", IO, "        if set(values.tolist()) <= {0, top}:", "        if True:",
          BAD_DATA),
    Guard("a 1-pixel image refused", IO, "        small = min(im.size) < MIN_SIDE", "        small = False",
          BAD_DATA),
    Guard("a mask of another size than its image refused", IO, "    if image.shape[:2] != mask.shape:",
          "    if False:", BAD_DATA),
    Guard("a huge image refused from its header (Pillow's MAX_IMAGE_PIXELS)", "PIL/Image.py",
          "MAX_IMAGE_PIXELS: int | None = int(1024 * 1024 * 1024 // 4 // 3)", "MAX_IMAGE_PIXELS: int | None = None",
          f"{BAD_DATA}::test_the_huge_file_is_refused_before_it_is_decoded", module="PIL.Image"),
    Guard("the cluster's Ray token authentication", "cluster/aws.yaml", "RAY_AUTH_MODE=token ray start --head",
          "RAY_AUTH_MODE=disabled ray start --head",
          "tests/cluster/test_ray_job.py::test_a_missing_or_wrong_token_is_refused", timeout_s=420),
    Guard("MLflow's Host/Origin checks (on unless --disable-security-middleware)", "tests/conftest.py",
          '    return lambda port: [sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port)]',
          '    return lambda port: [sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port),'
          ' "--disable-security-middleware"]', f"{SEC}::test_spoofed_host_and_foreign_origin_are_refused"),
    Guard("MLflow served on 127.0.0.1 only", "tests/conftest.py", '"--host", "127.0.0.1", "--port", str(port)]',
          '"--host", "0.0.0.0", "--port", str(port)]', f"{SEC}::test_mlflow_listens_on_loopback_only"),
    # MLflow checks twice (the requested path, then the resolved one inside the artifact directory): both off
    Guard("MLflow's artifact-path checks", "mlflow/utils/uri.py", "def validate_path_is_safe(path):",
          "def validate_path_is_safe(path):\n    return _decode(path)\n\n\ndef _switched_off(path):",
          f"{SEC}::test_artifact_paths_cannot_leave_the_artifact_root", module="mlflow.utils.uri",
          also=(("    if not real_constructed_path.is_relative_to(real_base_dir):", "    if False:"),)),
]


def copy_repo(dest: Path) -> None:
    for f in working_tree_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)


def run_test(copy: Path, test: str, timeout_s: float, chaos: bool = False) -> tuple[int, float, str]:
    path, _, sel = test.partition("::")
    args = [path, "-k", sel[3:]] if sel.startswith("-k ") else [f"{path}::{sel}" if sel else path]
    args += ["-m", "chaos"] if chaos else []
    env = {**os.environ, "PYTHONPATH": str(copy), "CI": os.environ.get("CI", "")}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s)
        return r.returncode, time.perf_counter() - t0, r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - t0, f"timed out after {timeout_s:g} s (the guard's absence hung the test)"


def check(guard: Guard, timeout_s: float, mutate: bool = True) -> dict:
    """Run ``guard``'s test on a copy with the guard switched off (``mutate=False``: on an unchanged copy, the
    control: the test must pass there, so a failure above is the guard's absence and not the copy). A mutated test
    killed at its time limit counts as failing only when the control, under the same limit, passes."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = Path(tmp)
        copy_repo(copy)
        target = guard.target(copy)
        text = target.read_text()
        for old, new in ((guard.old, guard.new), *guard.also):
            if text.count(old) != 1:
                return {"guard": guard.name, "error": f"{guard.file}: the guard's text is found {text.count(old)} "
                                                      "times (expected once); update benchmarks/mutation.py"}
            text = text.replace(old, new)
        if mutate:
            target.write_text(text)
        rc, wall, tail = run_test(copy, guard.test, guard.timeout_s or timeout_s, guard.chaos)
    if rc in (2, 3, 4, 5):  # interrupted, internal error, usage error, nothing collected: the test never ran
        return {"guard": guard.name, "error": f"pytest exit {rc}: the test did not run", "output_tail": tail[-600:]}
    why = next((line.strip() for line in tail.splitlines() if line.startswith("E ")), tail[-200:])
    row = {"guard": guard.name, "file": guard.file, "test": guard.test, "fails_without_its_guard": rc != 0,
           "pytest_exit": rc, "wall_s": round(wall, 1), **({"failure": why[:300]} if rc != 0 else
                                                           {"output_tail": tail[-600:]})}
    if rc == -1 and mutate:  # killed at the limit: a failure only if the test, guard in place, ends well inside it
        control = check(guard, timeout_s, mutate=False)
        row.update(control_pytest_exit=control.get("pytest_exit"), control_wall_s=control.get("wall_s"),
                   fails_without_its_guard=control.get("pytest_exit") == 0)
    return row


def markdown(rec: dict) -> str:
    """docs/reliability.md's guard table from a run's JSON."""
    lines = ["| guard | switched off in | its test | fails without its guard |", "|---|---|---|---|"]
    for r in rec["rows"]:
        path, _, sel = r["test"].partition("::")
        test = f"{Path(path).name}::{sel}" if sel else Path(path).name
        control = f", {r['control_wall_s']:.0f} s with its guard" if "control_wall_s" in r else ""
        how = f"yes ({r['wall_s']:.0f} s" + (f": killed at the limit{control})" if r["pytest_exit"] == -1 else ")")
        lines.append(f"| {r['guard']} | `{r['file']}` | `{test}` | "
                     f"{how if r.get('fails_without_its_guard') else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--table", action="store_true", help="print the guard table of --json's last run and stop")
    p.add_argument("--rows", default=None, help="guard names (substrings, separated by ';') to check")
    p.add_argument("--skip-slow", action="store_true", help="leave out the guards whose test runs minutes mutated")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds per mutated test")
    p.add_argument("--update", action="store_true",
                   help="keep the other rows of an existing --json file (each row carries the command that ran it)")
    args = p.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.json).read_text())))
        return
    wanted = [g for g in GUARDS if (not args.rows or any(r in g.name for r in args.rows.split(";")))
              and not (args.skip_slow and g.slow)]
    rec = {"command": command(argv), "machine": describe(), "rows": []}
    if args.update and Path(args.json).exists():
        names, kept = {g.name for g in wanted}, {g.name for g in GUARDS}  # a renamed or removed guard's row goes
        old = json.loads(Path(args.json).read_text())
        rec["rows"] = [{"command": old["command"], **r} for r in old["rows"] if r["guard"] in kept - names]
    order = {g.name: k for k, g in enumerate(GUARDS)}
    for g in wanted:
        row = {**check(g, args.timeout), "command": rec["command"], "ran_at": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                             time.gmtime())}
        rec["rows"] = sorted([r for r in rec["rows"] if r["guard"] != g.name] + [row],
                             key=lambda r: order.get(r["guard"], len(order)))
        verdict = "error: " + row["error"] if "error" in row else \
            ("yes" if row["fails_without_its_guard"] else "NO: the test passed without its guard")
        print(f"{g.name:58s} fails without its guard: {verdict} ({row.get('wall_s', 0):.0f} s)", flush=True)
        write_json(args.json, rec)
    bad = [r["guard"] for r in rec["rows"] if not r.get("fails_without_its_guard")]
    rec["all_fail_without_their_guard"] = not bad
    write_json(args.json, rec)
    if bad:
        raise SystemExit(f"guards whose test passed without them (or could not be switched off): {bad}")


if __name__ == "__main__":
    main()

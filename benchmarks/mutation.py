"""Every guard's test fails without its guard: for each protection, a copy of the repository with that protection
switched off (one text replacement in one file), and the protection's test run against the copy; the row passes when
that test fails there (and passes on the real code, which CI checks).

    python -m benchmarks.mutation --json benchmarks/results/mutation.json [--rows name,...] [--skip-slow]

The copy is the tracked files of this checkout in a temporary folder, put first on ``PYTHONPATH`` so that its
packages shadow the installed ones; the real checkout is never edited.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]
CK, LC = "rl_agents/experiment/checkpoint.py", "tests/rl_agents/experiment/test_lifecycle.py"
BAD = "tests/rl_agents/cli/test_bad_input.py"


@dataclass
class Guard:
    name: str
    file: str
    old: str
    new: str
    test: str  # pytest node id (or -k expression after "::-k ")
    slow: bool = False


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
]


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


def run_test(copy: Path, test: str, timeout_s: float) -> tuple[int, float, str]:
    path, _, sel = test.partition("::")
    args = [path, "-k", sel[3:]] if sel.startswith("-k ") else [f"{path}::{sel}" if sel else path]
    env = {**os.environ, "PYTHONPATH": str(copy), "CI": os.environ.get("CI", "")}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s)
        return r.returncode, time.perf_counter() - t0, (r.stdout + r.stderr)[-600:]
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - t0, f"timed out after {timeout_s:g} s (the guard's absence hung the test)"


def check(guard: Guard, timeout_s: float, mutate: bool = True) -> dict:
    """Run ``guard``'s test on a copy with the guard switched off (``mutate=False``: on an unchanged copy, the
    control: the test must pass there, so a failure above is the guard's absence and not the copy)."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = Path(tmp)
        copy_repo(copy)
        target = copy / guard.file
        text = target.read_text()
        if text.count(guard.old) != 1:
            return {"guard": guard.name, "error": f"{guard.file}: the guard's text is found {text.count(guard.old)} "
                                                  "times (expected once); update benchmarks/mutation.py"}
        if mutate:
            target.write_text(text.replace(guard.old, guard.new))
        rc, wall, tail = run_test(copy, guard.test, timeout_s)
    failed = rc != 0  # pytest: 1 = a test failed; -1 = killed at the time limit
    return {"guard": guard.name, "file": guard.file, "test": guard.test, "fails_without_its_guard": failed,
            "pytest_exit": rc, "wall_s": round(wall, 1), **({} if failed else {"output_tail": tail})}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--rows", default=None, help="comma-separated guard names (substrings) to check")
    p.add_argument("--skip-slow", action="store_true", help="leave out the guards whose test runs minutes mutated")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds per mutated test")
    args = p.parse_args(argv)
    wanted = [g for g in GUARDS if (not args.rows or any(r in g.name for r in args.rows.split(",")))
              and not (args.skip_slow and g.slow)]
    rec = {"command": command(argv), "machine": describe(), "rows": []}
    for g in wanted:
        row = check(g, args.timeout)
        rec["rows"].append(row)
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

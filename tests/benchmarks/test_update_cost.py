"""benchmarks/update_cost.py at toy size: one run writes a breakdown per row with its provenance, the phases and the
overhead add up to the wall time, the U-Net row is beside the PA3C rows, and a row the installed code rejects is
reported as skipped with the reason instead of ending the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_update_cost_dry_run_breaks_each_update_down(tmp_path: Path):
    out = tmp_path / "update_cost.json"
    args = ["--dry-run", "--rows", "pa3c,pa3c-reference,unet", "--add-row", "bogus rollout_mode=nope",
            "--add-row", "future no_such_option=true", "--json", str(out)]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.update_cost", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["command"].startswith("python -m benchmarks.update_cost --dry-run --rows pa3c,pa3c-reference,unet")
    assert {"cpu", "cores", "python", "torch"} <= res["machine"].keys() and res["machine"]["threads"] == 1
    assert res["matmul_peak_gflop_per_s"] > 0
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["pa3c", "pa3c-reference", "unet", "bogus", "future"]

    for name in ("pa3c", "pa3c-reference", "unet"):
        r = rows[name]
        assert r["status"] == "ok" and r["size"] == 32
        assert r["gflop_per_update"] > 0 and r["gflop_per_s"] > 0 and r["fraction_of_peak"] > 0
        assert abs(sum(r["phases_ms"].values()) + r["overhead_ms"] - r["ms_per_update"]) < 1e-6
        assert r["overhead_ms"] >= -1e-6 and all(v >= 0 for v in r["phases_ms"].values())
        assert {"forward", "backward", "optimizer"} <= r["phases_ms"].keys()
        assert abs(r["ms_per_image"] * r["images_per_update"] - r["ms_per_update"]) < 1e-9
        assert 0 < len(r["top_ops"]) <= 10 and all(o["self_ms"] >= 0 and o["calls"] > 0 for o in r["top_ops"])

    pa3c, ref, unet = rows["pa3c"], rows["pa3c-reference"], rows["unet"]
    # the CV protocol: batch 4, t_max 5 for PA3C (one forward per step), the sweep's U-Net variant with batch 8
    assert (pa3c["batch_size"], pa3c["t_max"], pa3c["phase_calls"]["forward"]) == (4, 5, 5)
    assert {"env_step", "returns", "loss"} <= pa3c["phases_ms"].keys()
    assert unet["model"] == "unet" and unet["batch_size"] == 8 and "engine_step_ms" in unet
    assert ref["hooks"] == ["reference_path"] and ref["speedup_vs_reference"] == 1.0
    assert pa3c["per_image_vs_unet"] == pa3c["ms_per_image"] / unet["ms_per_image"]
    assert pa3c["speedup_vs_reference"] == ref["ms_per_image"] / pa3c["ms_per_image"]

    assert rows["bogus"]["status"] == "skipped" and "rollout_mode" in rows["bogus"]["reason"]
    assert rows["future"]["status"] == "skipped" and "no_such_option" in rows["future"]["reason"]

    # the README table is generated from the JSON, skipped rows included
    table = subprocess.run([sys.executable, "-m", "benchmarks.update_cost", "--from-json", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "| pa3c | 32 |" in table and "| unet | 32 |" in table and "skipped: ValueError" in table

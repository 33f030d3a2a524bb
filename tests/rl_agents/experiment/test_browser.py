"""What a user sees in `mlflow ui`: a finished run's page lists its metrics and its overlay images, checked in a real
headless Chromium (Debian's package, driven by Playwright). `.ci/run` installs both; elsewhere the test skips when
either is missing, under CI=true it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rl_agents.cli import main
from tests.conftest import mlflow_ui

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what this machine's closed network needs: no background connections, no sandbox as root
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{what} is missing (CI=true: .ci/run installs it)")
        pytest.skip(f"{what} is missing")


@pytest.mark.slow
def test_mlflow_ui_shows_a_runs_metrics_and_overlays_in_a_browser(tmp_path: Path, monkeypatch):
    _need("Debian's chromium (apt-get install chromium)", CHROMIUM is not None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright (pip install playwright)", False)

    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["train", "--config", str(ROOT / "tune_configs" / "smoke.yaml"), "--set", "num_workers=0",
                 "--set", "budget.epochs=1", "--set", "tracking.experiment=browser", "--set", "tracking.run_name=browser-run",
                 "--output-dir", str(tmp_path / "run"), "--quiet"]) == 0
    run = mlflow.search_runs(experiment_names=["browser"], output_format="list")[0]
    exp_id, run_id = run.info.experiment_id, run.info.run_id
    metric_names = sorted(run.data.metrics)
    assert "val/dice" in metric_names

    with mlflow_ui(store, tmp_path) as (base, _):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}", timeout=60_000)
            page.get_by_text("browser-run").first.wait_for(timeout=60_000)
            page.get_by_text("val/dice", exact=True).first.wait_for(timeout=60_000)  # the metrics table
            for name in ("val/dice", "losses/policy"):
                if name in metric_names:
                    assert page.get_by_text(name, exact=True).count() >= 1, name
            page.screenshot(path=str(tmp_path / "run_page.png"))

            page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts", timeout=60_000)
            page.get_by_text("overlays", exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("overlays", exact=True).first.click()  # open the folder: its PNGs are listed
            png = page.get_by_text(".png").first
            png.wait_for(timeout=60_000)
            png.click()  # the artifact viewer shows the image itself
            img = page.locator("img[src^='blob:']").first  # the viewer fetches the PNG and shows it as a blob
            img.wait_for(timeout=60_000)
            assert img.evaluate("i => i.complete && i.naturalWidth") > 0  # decoded, not a broken-image icon
            page.screenshot(path=str(tmp_path / "artifacts_page.png"))
            browser.close()

"""``pixeldrl compare``: the runs of an MLflow experiment side by side, read from a store that must already exist."""

from __future__ import annotations

from pathlib import Path

from rl_agents.config import canonical_key
from rl_agents.experiment.tracking import search_runs, tracking_uri


def _canonical_params(df):
    """Runs logged before the config had sections hold flat params (``params.t_max``): their values join today's
    columns (``params.pa3c.t_max``), so that old and new runs compare on one column."""
    for col in [c for c in df.columns if c.startswith("params.")]:
        key = col[len("params."):]
        new = f"params.{canonical_key(key)}"
        if new != col:
            df[new] = df[new].where(df[new].notna(), df[col]) if new in df.columns else df[col]
            df = df.drop(columns=[col])
    return df


def _missing_store(uri: str) -> str | None:
    """The local path of a store ``uri`` names that does not exist (SQLite file or file store), else None."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri.removeprefix("file:"))
    else:
        return None
    return None if path.exists() else str(path)


def compare(experiment: str = "pixeldrl", metric: str = "val/dice", max_runs: int = 50) -> tuple[list[str], list[list]]:
    """Runs of ``experiment`` best first by ``metric``: the params that differ between them, and key metrics.

    Training runs and sweep trials only: a sweep's parent run (its params describe the sweep, not a config) and
    trial attempts superseded by a retry are left out, so that every param shown really varies between configs.
    """
    uri = tracking_uri()
    missing = _missing_store(uri)
    if missing:  # opening it would create an empty store here and then report no experiment
        raise ValueError(f"no MLflow store at {missing}: run this where you trained (its mlflow.db), or pass "
                         f"--tracking-uri (or set MLFLOW_TRACKING_URI)")
    df = search_runs(experiment, metric, max_runs)
    for tag in ("tags.sweep_file", "tags.superseded_by"):
        if tag in df.columns:
            df = df[df[tag].isna()]
    if df.empty:
        return [], []
    df = _canonical_params(df)
    pcols = sorted(c for c in df.columns if c.startswith("params.") and c != "params.tracking.run_name"
                   and df[c].astype(str).nunique(dropna=False) > 1)  # sorted: MLflow's column order varies
    mcols = [f"metrics.{m}" for m in dict.fromkeys([metric, "val/dice", "val/biou", "val/hd95", "params",
                                                    "wall_time_s"]) if f"metrics.{m}" in df.columns]
    header = ["run", "status", *[c[len("params."):] for c in pcols], *[c[len("metrics."):] for c in mcols]]
    rows = []
    for _, r in df.iterrows():
        rows.append([r.get("tags.mlflow.runName", r["run_id"][:8]), r["status"], *[str(r[c]) for c in pcols],
                     *[r[c] for c in mcols]])
    return header, rows


"""What the command modules share: the consoles, table cells, the metrics table, and an output folder removed
again when a command fails before writing into it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def removed_if_left_empty(path: str | Path):
    """A local folder this command creates is removed again if the command fails before writing a file into it."""
    p = None if "://" in str(path) else Path(path)
    existed = p is None or p.exists()
    try:
        yield
    except BaseException:
        if not existed and p.is_dir():
            for d in sorted((q for q in p.rglob("*") if q.is_dir()), key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only empty ones: a checkpoint or shard already written stays
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def cell(v) -> str:
    """A table cell: counts with thousands separators, other numbers to 4 significant digits, never exponents for
    numbers a person reads (a parameter count, seconds); text (a param as MLflow stores it) parsed first."""
    if isinstance(v, str):  # a param: an integer one (seed, fold) stays as typed
        try:
            v = float(v) if any(c in v for c in ".eE") else v
        except ValueError:
            return v
        if isinstance(v, str):
            return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if v != v:  # NaN: not logged for this run
        return "-"
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1e-3:
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"
    return f"{v:.3g}"


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    for col in ("Dice", "IoU", "PPV", "Sens", "BIoU", "HD95", "params", "wall s"):
        table.add_column(col, justify="right")
    g = metrics.get
    table.add_row(*(f"{g('val/' + k, float('nan')):.3f}" for k in ("dice", "iou", "ppv", "sensitivity", "biou")),
                  f"{g('val/hd95', float('nan')):.2f}", f"{g('params', 0):,}", f"{g('wall_time_s', 0):.0f}")
    console.print(table)

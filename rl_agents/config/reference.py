"""``docs/config.md``, generated: every key of :class:`TrainConfig` with its type, default and the comment that
documents it in :mod:`rl_agents.config.sections` (or :mod:`pixelrl_env.data_config` for ``data``)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
import typing
from pathlib import Path

import yaml

from pixelrl_env import data_config
from rl_agents.config.load import LEGACY
from rl_agents.config.sections import SECTIONS, TrainConfig

INTRO = """# Configuration reference

Generated from the field comments of `rl_agents/config/sections.py` and `pixelrl_env/data_config.py` by
`pixeldrl config-reference --write docs/config.md`; a test fails when this page and the code differ.

A config is read in three layers: the defaults below (the README's main job: synthetic data, the `small` network),
then a YAML file (`--config tune_configs/lgg_cpu.yaml`), then `--set section.key=value` (values read as YAML:
`1e-3`, `true`, `[1]`, `null`). Sweep files set the same dotted keys. Every command that trains or reads data
(`train`, `baseline`, `data-info`, `env-demo`) takes `--config` and `--set`.

```yaml
engine: ray
num_workers: 4
data: {format: lgg, path: ../shared/data/lgg_kaggle_3m, size: 64, channels: [1]}
pa3c: {t_max: 5}
optim: {batch_size: 4, lr: 1.0e-3}
budget: {max_minutes: 30}
```
"""


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def field_docs(cls) -> dict[str, str]:
    """Each field's documentation: the comment lines directly above it, then the comment at the end of its line."""
    source = inspect.getsource(inspect.getmodule(cls))
    lines, comments = source.splitlines(), _comments(source)
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out = {}
    for item in node.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        above, at = [], item.lineno - 1
        while at >= 1 and lines[at - 1].strip().startswith("#"):
            above.insert(0, comments[at])
            at -= 1
        trailing = [comments[n] for n in range(item.lineno, item.end_lineno + 1) if n in comments
                    and not lines[n - 1].strip().startswith("#")]
        out[item.target.id] = " ".join([*above, *trailing])
    return out


def _default(value) -> str:
    text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _type(tp) -> str:
    args = typing.get_args(tp)
    if type(None) in args:  # X | None: "X or null"
        return f"{_type(next(a for a in args if a is not type(None)))} or null"
    return getattr(tp, "__name__", None) if not args else str(tp).replace("typing.", "")


def _table(cls, prefix: str, defaults) -> list[str]:
    """One row per field of ``cls``; the defaults are read from ``defaults``, an instance."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        cell = docs.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {_type(hints[f.name])} | `{_default(getattr(defaults, f.name))}` | {cell} |")
    return rows


def render() -> str:
    """The whole page, as ``docs/config.md`` must hold it."""
    hints = typing.get_type_hints(TrainConfig)
    main = TrainConfig()
    out = [INTRO, "## Top level", "", *_table(TrainConfig, "", main), ""]
    out += ["## `data`", "", "Where the data comes from and how it is prepared (`pixelrl_env/data_config.py`; "
            "[data.md](data.md)). The defaults are the main job's; a YAML file's `data` and each section below are "
            "merged into the defaults key by key.", "", *_table(data_config.DataConfig, "data.", main.data), ""]
    for name in SECTIONS:
        out += [f"## `{name}`", "", inspect.getdoc(hints[name]).splitlines()[0], "",
                *_table(hints[name], f"{name}.", getattr(main, name)), ""]
    out += ["## Flat keys (before the sections)", "",
            "Configs, `--set`, sweep files, checkpoints and MLflow runs from before the sections used flat keys. They "
            "still load, with a one-line notice naming the new places; `pixeldrl compare` shows old and new runs in "
            "one column.", "", "| flat key | now |", "|---|---|",
            *[f"| `{old}` | `{new}` |" for old, new in sorted(LEGACY.items())], ""]
    return "\n".join(out)


def check(path: Path) -> str | None:
    """None when ``path`` holds :func:`render`'s page; else what to run."""
    if path.is_file() and path.read_text() == render():
        return None
    return f"{path} is not current: run `pixeldrl config-reference --write {path}`"


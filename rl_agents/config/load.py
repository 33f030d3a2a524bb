"""Reading a :class:`TrainConfig`: defaults, then a YAML file, then ``--set key=value`` overrides, each checked by
the field's declared type. Flat keys from before the sections (``t_max``, ``eval_every``) still load, with a
one-line notice, from YAML files, ``--set``, sweep files, checkpoints and MLflow params."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from pixelrl_env.data_config import DataConfig
from rl_agents.config.checks import validate
from rl_agents.config.sections import RENAMED, SECTIONS, TrainConfig

# keys added after the config had sections: they never had a flat form
SECTIONED_ONLY = {"tracking.system_metrics"}
# flat key -> its dotted place in the sections
LEGACY: dict[str, str] = {
    **{f.name: f"{section}.{f.name}" for section in SECTIONS
       for f in dataclasses.fields(typing.get_type_hints(TrainConfig)[section])
       if f"{section}.{f.name}" not in {*RENAMED.values(), *SECTIONED_ONLY}},  # ray.address was never "address"
    **RENAMED,
}
_NOTIFIED: set[str] = set()


def notify_flat(keys: list[str], where: str) -> None:
    """One line on stderr, once per source, naming the flat keys and their places."""
    if not keys or where in _NOTIFIED:
        return
    _NOTIFIED.add(where)
    moved = ", ".join(f"{k} -> {LEGACY[k]}" for k in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    print(f"note: {where} uses flat config keys, deprecated ({moved}); see docs/config.md", file=sys.stderr)


def canonical_key(key: str) -> str:
    """A dotted key in today's sections: ``t_max`` -> ``pa3c.t_max``; keys already in place are returned as given."""
    head, dot, rest = key.partition(".")
    return LEGACY[head] + dot + rest if head in LEGACY else key


def upgrade(d: dict, where: str) -> dict:
    """A config dict with any flat keys moved into their sections (a copy; ``d`` is left as it was). A key given both
    ways keeps its sectioned value: a sweep resumed from a flat base sets its sampled keys in their sections."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: a config must be a mapping, got {type(d).__name__}")
    flat = [k for k in d if k in LEGACY]
    out: dict = {}
    for k in flat:
        set_key(out, LEGACY[k], d[k])
    for k, v in d.items():  # a key given in its section wins over the same key given flat
        if k not in LEGACY:
            out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else (
                dict(v) if isinstance(v, dict) else v)
    notify_flat(flat, where)
    return out


def set_key(d: dict, key: str, value: Any) -> None:
    """Set a dotted key (``pa3c.t_max``) in a nested dict, creating sections on the way."""
    parts = canonical_key(key).split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"--set {key}: {p} is not a section")
    d[parts[-1]] = value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """YAML reads '3e-4' as a string (YAML 1.1 floats need a dot); convert by the field's declared type."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args or tp is Any:
            return None
        raise ValueError(f"config key {key} cannot be null")
    base = next((a for a in args if a is not type(None)), tp) if args and type(None) in args else tp
    try:
        if base is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if base is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    except ValueError:
        raise ValueError(f"config key {key} expects {getattr(base, '__name__', base)}, got {value!r}") from None
    if base in (int, float, bool, str) and not isinstance(value, base if base is not float else (int, float)):
        raise ValueError(f"config key {key} expects {base.__name__}, got {value!r}")
    return value


def from_dict(cls, d: dict, prefix: str = ""):
    """A dataclass from a (nested) dict; keys it lacks take the defaults, unknown keys are an error."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(names)}")
    kwargs = {}
    types = typing.get_type_hints(cls)
    for k, v in d.items():
        if dataclasses.is_dataclass(types[k]):  # a section: the keys it lacks keep this class's defaults
            if v is not None and not isinstance(v, dict):
                raise ValueError(f"config section {prefix + k} must be a mapping, got {type(v).__name__}")
            merged = {**dataclasses.asdict(getattr(cls(), k)), **(v or {})}
            kwargs[k] = from_dict(types[k], merged, prefix + k + ".")
        elif k == "split" and isinstance(v, list):
            kwargs[k] = tuple(float(x) for x in v)
        else:
            kwargs[k] = _coerce(v, types[k], prefix + k)
    return cls(**kwargs)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping; errors name the file and what it is (``what``: "config", "sweep")."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:  # one line with the place, not the parser's traceback
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{what} file {where}: not valid YAML: {problem}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} file {p} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``key=value`` strings as (key, value), values parsed as YAML (1e-3, true, [1], null)."""
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out.append((k.strip(), yaml.safe_load(v)))
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; the result validated."""
    raw: dict = to_dict(TrainConfig())
    if path is not None:
        for k, v in upgrade(read_yaml_mapping(path, "config"), f"config file {path}").items():
            raw[k] = {**raw[k], **v} if isinstance(raw.get(k), dict) and isinstance(v, dict) else v
    pairs = parse_overrides(overrides)
    notify_flat([k.split(".")[0] for k, _ in pairs if k.split(".")[0] in LEGACY], "--set")
    return _built(raw, pairs)


def _built(raw: dict, pairs) -> TrainConfig:
    """``raw`` with the dotted ``(key, value)`` pairs set, as a checked and validated config."""
    for k, v in pairs:
        set_key(raw, k, v)
    cfg = from_dict(TrainConfig, raw)
    validate(cfg)
    return cfg


def config_from_dict(d: dict, where: str = "a saved config") -> TrainConfig:
    """Rebuild a config saved as a dict (a checkpoint's, a sweep's base); keys it lacks take today's defaults, flat
    keys from before the sections are moved into them."""
    return from_dict(TrainConfig, upgrade(d, where))


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: ``{"pa3c": {"t_max": 5}}`` -> ``{"pa3c.t_max": 5}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def override(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with dotted keys set (``{"budget.max_minutes": 2}``), type-checked and validated like
    ``--set``; ``cfg`` is left as it was."""
    return _built(to_dict(cfg), values.items())


def data_with(base: DataConfig, path: str | Path | None = None, overrides: list[str] | None = None) -> DataConfig:
    """A data section for reading data with a model trained elsewhere (``pixeldrl evaluate``): ``base`` (the
    checkpoint's), or the ``data`` section of the config file ``path``, then ``data.*`` overrides; checked."""
    data = load_config(path).data if path is not None else base
    raw = {"data": dataclasses.asdict(data)}
    for k, v in parse_overrides(overrides):
        if not canonical_key(k).startswith("data."):
            raise ValueError(f"--set {k}: only data.* keys apply here (the model's other keys come from its checkpoint)")
        set_key(raw, k, v)
    out = from_dict(DataConfig, raw["data"], "data.")
    out.validate()
    return out

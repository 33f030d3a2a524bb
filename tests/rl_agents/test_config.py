"""The sectioned TrainConfig: keys in their sections, flat keys from before still read (with one notice), the
reference page current."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from rl_agents.cli import main
from rl_agents.config import LEGACY, config_from_dict, load_config, override, to_dict, upgrade
from rl_agents.config import load as config_load
from rl_agents.config.reference import check, field_docs, render
from rl_agents.config.sections import PA3CConfig, TrainConfig
from rl_agents.experiment.loaded import load_model
from rl_agents.experiment.sweep import trial_config
from rl_agents.experiment.compare import _canonical_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    monkeypatch.setattr(config_load, "_NOTIFIED", set())


def test_sectioned_keys_from_yaml_and_set(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("pa3c: {t_max: 4}\noptim: {lr: 3e-4}\ndata: {size: 32}\n")
    cfg = load_config(f, ["network.preset=medium", "eval.every=7"])
    assert (cfg.pa3c.t_max, cfg.optim.lr, cfg.network.preset, cfg.eval.every) == (4, 3e-4, "medium", 7)
    assert cfg.pa3c.gamma == 0.95 and cfg.optim.batch_size == 8  # keys a section leaves out keep their defaults
    assert cfg.data.size == 32 and cfg.data.synthetic["n_patients"] == 40  # the main job's data, merged key by key
    assert capsys.readouterr().err == ""  # nothing deprecated here


def test_flat_keys_load_the_same_config_with_one_line_notice(tmp_path, capsys):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("t_max: 4\nlr: 3.0e-4\neval_every: 7\nray_address: auto\nworker_cpus: 0.5\n")
    new.write_text("pa3c: {t_max: 4}\noptim: {lr: 3.0e-4}\neval: {every: 7}\nray: {address: auto, worker_cpus: 0.5}\n")
    assert load_config(old) == load_config(new)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t_max -> pa3c.t_max" in err[0] and "eval_every -> eval.every" in err[0]
    assert load_config(None, ["t_max=4"]).pa3c.t_max == 4
    assert "--set uses flat config keys" in capsys.readouterr().err


def test_every_flat_key_has_one_place_and_round_trips():
    flat = {k: getattr(getattr(TrainConfig(), v.split(".")[0]), v.split(".")[1]) for k, v in LEGACY.items()}
    assert len(LEGACY) == 55 and len(set(LEGACY.values())) == 55  # the 60 flat fields less data, model, engine, num_workers, seed
    cfg = config_from_dict({**flat, "model": "unet", "engine": "local", "num_workers": 0, "seed": 3})
    assert cfg == TrainConfig(model="unet", engine="local", seed=3)
    assert upgrade({"t_max": 3, "data": {"size": 16}}, "x") == {"pa3c": {"t_max": 3}, "data": {"size": 16}}


def test_unknown_keys_and_bad_sections_are_named():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['pa3c.tmax'\]"):
        load_config(None, ["pa3c.tmax=3"])
    with pytest.raises(ValueError, match="config section pa3c must be a mapping"):
        load_config(None, ["pa3c=3"])
    with pytest.raises(ValueError, match="pa3c.t_max must be >= 1, got 0"):
        load_config(None, ["pa3c.t_max=0"])
    with pytest.raises(ValueError, match="config key optim.lr expects float"):
        load_config(None, ["optim.lr=fast"])


def test_override_copies_and_validates():
    base = load_config(None, [])
    changed = override(base, {"budget.max_minutes": 2, "num_workers": 2, "ray.worker_slowdown": [1.0, 3.0]})
    assert changed.budget.max_minutes == 2.0 and changed.ray.worker_slowdown == [1.0, 3.0]
    assert base.budget.max_minutes == 10.0 and base.num_workers == 0
    with pytest.raises(ValueError, match="worker_slowdown needs at most num_workers"):
        override(base, {"ray.worker_slowdown": [2.0]})


def test_a_checkpoint_written_before_the_sections_still_loads(capsys):
    """``fixtures/before_sections_best.pt`` was written by commit f248b9d (the flat config) with ``python train.py
    --config tune_configs/smoke.yaml --set num_workers=0 --set max_updates=6 --set t_max=2 --set head_stride=2 --set
    step_features=once --set eval_every=3 --set checkpoint_every=3``: today's loader rebuilds its config in sections
    and its network strictly, and says once where the keys went."""
    model, cfg = load_model(ROOT / "tests" / "fixtures" / "before_sections_best.pt")
    want = load_config(ROOT / "tune_configs" / "smoke.yaml", [
        "num_workers=0", "budget.max_updates=6", "pa3c.t_max=2", "network.head_stride=2", "network.step_features=once",
        "eval.every=3", "eval.checkpoint_every=3"])
    assert cfg.tracking.experiment == "before-sections" and cfg.tracking.run_name is None
    assert override(cfg, {"tracking.experiment": "pixeldrl"}) == want
    assert model.head_stride == 2 and model.step_features == "once"
    assert "flat config keys, deprecated" in capsys.readouterr().err


def test_mlflow_params_before_and_after_compare_on_one_column():
    df = pd.DataFrame({"params.t_max": ["10", None], "params.pa3c.t_max": [None, "5"], "params.data.size": ["64", "64"],
                       "params.run_name": ["a", None]})
    out = _canonical_params(df)
    assert list(out["params.pa3c.t_max"]) == ["10", "5"] and "params.t_max" not in out.columns
    assert "params.tracking.run_name" in out.columns and list(out["params.data.size"]) == ["64", "64"]


def test_field_docs_read_comments_above_and_beside():
    docs = field_docs(PA3CConfig)
    assert docs["t_max"] == "steps per episode"
    assert docs["rollout_mode"].startswith("online: each step's forward keeps its graph | recompute:")
    assert all(docs[f] for f in docs), [f for f in docs if not docs[f]]


def test_the_config_reference_page_is_current(tmp_path):
    assert check(ROOT / "docs" / "config.md") is None, "run: pixeldrl config-reference --write docs/config.md"
    stale = tmp_path / "config.md"
    stale.write_text(render().replace("steps per episode", "steps"))
    assert main(["config-reference", "--check", str(stale)]) == 1
    assert main(["config-reference", "--write", str(stale)]) == 0 and check(stale) is None


def test_the_shipped_configs_use_sections_only(capsys):
    for f in sorted((ROOT / "tune_configs").glob("*.yaml")):
        raw = yaml.safe_load(f.read_text())
        if "search_space" in raw or "base" in raw:
            continue
        assert not set(raw) & set(LEGACY), f.name
        load_config(f)
    assert "flat config keys" not in capsys.readouterr().err


def test_a_key_given_in_its_section_wins_over_the_same_key_flat():
    """A sweep started before the sections keeps a flat base; a trial's sampled key, set in its section, must win."""
    assert upgrade({"lr": 1e-3, "optim": {"lr": 5e-4}}, "x") == {"optim": {"lr": 5e-4}}
    cfg = trial_config({**{k: v for k, v in to_dict(TrainConfig()).items() if k != "optim"}, "lr": 1e-3},
                       {"optim.lr": 5e-4})
    assert cfg.optim.lr == 5e-4

"""The import graph of ``pixelrl_env`` and ``rl_agents``, every import counted (those inside functions too): no
circle, no layer importing the one above it, no engine importing another engine."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rl_agents.engines.base import Engine
from rl_agents.experiment.lifecycle import ENGINES, engine_class

ROOT = Path(__file__).resolve().parents[2]
# bottom to top: the environment and data; the network, PA3C and the config; ways to train; runs, reports, tools;
# the command line
LAYERS = [("pixelrl_env",), ("rl_agents.config", "rl_agents.algo"), ("rl_agents.engines",), ("rl_agents.experiment",),
          ("rl_agents.cli", "rl_agents")]
# what engines may share: no engine module imports another engine
ENGINE_SHARED = {"rl_agents.engines", "rl_agents.engines.base", "rl_agents.engines.ray_runtime",
                 "rl_agents.engines.ray_actors"}


def engine_of(module: str) -> str:
    """The engine a module belongs to: its file, or its package under ``rl_agents/engines`` (``rllib``)."""
    return ".".join(module.split(".")[:3])


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("pixelrl_env", "rl_agents"):
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found |= {module, *(f"{module}.{a.name}" for a in node.names)}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    return next(i for i, prefixes in enumerate(LAYERS)
                if any(module == p or module.startswith(p + ".") for p in prefixes))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_relative_and_function_level_imports_and_circles(tmp_path):
    pkg = tmp_path / "pixelrl_env"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pixelrl_env import a\n")
    known = {"pixelrl_env", "pixelrl_env.a", "pixelrl_env.b"}
    g = {m: imports_of(m, pkg / (m.split(".")[-1] + ".py") if "." in m else pkg / "__init__.py", known) for m in known}
    assert g["pixelrl_env.a"] == {"pixelrl_env.b"} and g["pixelrl_env.b"] == {"pixelrl_env", "pixelrl_env.a"}
    assert cycles(g) == [["pixelrl_env.a", "pixelrl_env.b"]]


def test_no_import_circle():
    assert cycles(graph()) == []


def test_no_layer_imports_the_one_above():
    upward = sorted(f"{m} -> {t}" for m, ts in graph().items() for t in ts if layer(t) > layer(m))
    assert upward == []


@pytest.mark.parametrize("engine", sorted(m for m in modules() if m.startswith("rl_agents.engines.")
                                          and m not in ENGINE_SHARED))
def test_no_engine_imports_another_engine(engine):
    others = {t for t in graph()[engine] if t.startswith("rl_agents.engines") and t not in ENGINE_SHARED
              and engine_of(t) != engine_of(engine)}
    assert others == set(), f"{engine} imports {others}: shared code belongs in engines/base.py or ray_runtime.py"


@pytest.mark.parametrize("name", ["supervised", "hogwild", "ray", "rllib_appo", "local"])
def test_every_registered_engine_is_a_class_with_the_members_the_lifecycle_calls(name):
    assert set(ENGINES) == {"supervised", "hogwild", "ray", "rllib_appo", "local"}
    cls = engine_class(name)
    protocol = {m for m in vars(Engine) if not m.startswith("_")} | set(Engine.__annotations__)
    set_later = {"update", "total_updates", "pixel_agent_steps", "last_checkpoint", "read_last_checkpoint"}
    missing = sorted(m for m in protocol - set_later if not hasattr(cls, m))
    assert missing == [] and cls.name == name


MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400


def test_no_function_over_60_lines_and_no_module_over_400():
    """The project's size limits (docs: a newcomer reads a function on one screen, a module in one sitting)."""
    too_long = []
    for pkg in ("pixelrl_env", "rl_agents", "benchmarks"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            text = f.read_text()
            name = f.relative_to(ROOT).as_posix()
            if len(text.splitlines()) > MAX_MODULE_LINES:
                too_long.append(f"{name}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        too_long.append(f"{name}:{node.lineno} {node.name}: {n} lines")
    assert too_long == []


def test_every_file_and_module_the_architecture_page_names_exists():
    page = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:pixelrl_env|rl_agents|benchmarks|tests)/[\w/]+\.(?:py|sh))(?:::\w+)?`", page))
    assert len(paths) >= 8, paths  # the pattern found the page's paths
    assert sorted(p for p in paths if not (ROOT / p).is_file()) == []
    # the diagram's and the listing's bare names: modules of their package
    for pkg, names in (("pixelrl_env", ["data_config", "sources", "nifti", "parquet", "parquet_write", "folds",
                                        "prepare", "dataset", "env", "metrics", "postprocess"]),
                       ("rl_agents/engines", ["base", "ray_runtime", "local", "ray_a3c", "ray_actors", "hogwild",
                                              "supervised", "rllib"]),
                       ("rl_agents/experiment", ["lifecycle", "checkpoint", "tracking", "sweep", "loaded", "evaluate", "cv",
                                                 "ablation", "predict", "export", "provenance"]),
                       ("rl_agents/cli", ["parsers", "data", "training", "reports", "use"]),
                       ("benchmarks", ["chaos", "readme_commands", "readme_plan", "gpu_suite", "gpu_measure",
                                       "gpu_prepare", "update_cost", "latency"])):
        for name in names:
            assert name in page, f"{name} is not on the page"
            assert (ROOT / pkg / f"{name}.py").is_file() or (ROOT / pkg / name).is_dir(), f"{pkg}/{name}"

"""The shape of the package's imports: no cycles, no private names across packages, a light
top level, and no public name that hides a submodule."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it is installed as (pyproject.toml's package-dir)
SOURCES = {"physforecast": "physforecast", "backbones": "physforecast.backbones",
           "datasets": "physforecast.datasets"}  # fmt: skip


def module_files() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Edges module -> imported module (deferred imports in functions included) and the
    imports of another package's ``_private`` names."""
    mods = module_files()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*head, base] if base else head)
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    target = target if target in mods else base
                    if target not in mods or target == name:
                        continue
                    graph[name].add(target)
                    crosses = target.split(".")[:2] != name.split(".")[:2]
                    if alias.name.startswith("_") and not alias.name.startswith("__") and crosses:
                        private.append(f"{name} imports {target}.{alias.name}")
    return graph, private


def cycles(graph: dict[str, set[str]], skip: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    g = {m: {t for t in ts if t not in skip} for m, ts in graph.items() if m not in skip}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_and_no_private_imports():
    graph, private = import_graph()
    faces = {m for m, p in module_files().items() if p.name == "__init__.py"}
    assert cycles(graph, faces) == []
    assert private == []


def test_the_cycle_finder_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph, set()) == [["a", "b", "c"]]
    assert cycles(graph, {"b"}) == []


def _python(code: str, timeout: float) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter (its own ``sys.modules``)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh set of physforecast modules: an import that
    only works in some order (a hidden cycle through a package face) fails here."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(module_files())!r}\n"
        "bad = []\n"
        "for name in names:\n"
        "    for m in [m for m in sys.modules if m == 'physforecast' or m.startswith('physforecast.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        bad.append(f'{name}: {type(err).__name__}: {err}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = _python(code, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_top_level_and_the_cli_parser_import_no_torch():
    code = (
        "import sys\n"
        "import physforecast, physforecast.config\n"
        "from physforecast.cli import build_parser\n"
        "build_parser().format_help()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert physforecast.__version__\n"
    )
    out = _python(code, timeout=120)
    assert out.returncode == 0, out.stderr
    help_ = subprocess.run(
        [sys.executable, "-m", "physforecast.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_.returncode == 0 and "train" in help_.stdout


def test_a_supervised_config_imports_no_other_method_but_knows_their_sections():
    """The other methods are declared, not imported: a supervised config (what loading a
    supervised run reads) loads none of their packages; naming one imports it."""
    code = (
        "import sys\n"
        "from physforecast.config import Config, apply_overrides, config_from_dict\n"
        "from physforecast.registry import METHODS\n"
        "others = ('beamvq', 'stpad', 'inference', 'generative')\n"
        "def loaded():\n"
        "    return {p for p in others if any(m.startswith(f'physforecast.{p}') for m in sys.modules)}\n"
        "cfg = config_from_dict({'train': {'epochs': 2}})\n"
        "assert {'beamvq', 'stpad', 'students', 'vae'} <= set(METHODS.names())\n"
        "assert loaded() == set(), loaded()\n"
        "cfg = apply_overrides(Config(), ['method=stpad', 'stpad.members=3'])\n"
        "assert cfg.stpad.members == 3\n"
        "assert 'stpad' in loaded(), loaded()\n"
    )
    out = _python(code, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("package", ["physforecast", "physforecast.forecast", "physforecast.search",
                                     "physforecast.layers", "physforecast.beamvq",
                                     "physforecast.metrics", "physforecast.data",
                                     "physforecast.training"])  # fmt: skip
def test_no_exported_name_hides_a_submodule(package):
    pkg = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    for name in getattr(pkg, "__all__", []):
        if name in submodules:
            assert getattr(pkg, name) is importlib.import_module(f"{package}.{name}"), name


def test_rollout_is_a_function_at_the_top_and_a_module_in_forecast():
    import types

    import physforecast as pf

    assert callable(pf.rollout) and not isinstance(pf.rollout, types.ModuleType)
    module = importlib.import_module("physforecast.forecast.rollout")
    assert isinstance(module, types.ModuleType) and module.rollout is pf.rollout
    import physforecast.forecast

    assert physforecast.forecast.rollout is module

"""Imports point down: no circles between kohaku_data's modules, and no layer reaches above itself.

Every module under kohaku_data/ (and the migrations the wheel maps into kohaku_data.migrations) is
parsed with ast; every import counts, also one made inside a function (a lazy import hides a
dependency from import time, not from the design) and `importlib.import_module("kohaku_data…")`.
`from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`.

TIERS is the one table of the layering: a module may import its own layer and any layer of a
lower tier; layers that share a tier are independent of each other. A new module whose layer
the table does not know fails the test: place it here, on purpose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kohaku_data"
MIGRATIONS = ROOT / "migrations"  # setup.py maps it to kohaku_data.migrations

# Lowest tier first: {layer: module prefixes (a module belongs to the longest prefix it has)}.
TIERS: tuple[Mapping[str, tuple[str, ...]], ...] = (
    # Helpers every layer may use (paths and URLs, atomic writes, errors, settings, sources).
    {"base": ("kohaku_data", "kohaku_data.errors", "kohaku_data.atomic", "kohaku_data.ahead", "kohaku_data.progress",
              "kohaku_data.runtime", "kohaku_data.storage", "kohaku_data.tar_index", "kohaku_data.sources",
              "kohaku_data.config")},
    # The DB with its migrations; pure image bytes; the trainer's reader, importable without
    # the build machinery (design: train/ needs only storage and errors).
    {"db": ("kohaku_data.db", "kohaku_data.migrations"), "images": ("kohaku_data.images",),
     "train": ("kohaku_data.train",)},
    # Captions read the DB (and may not know who curates them: curation plugs in from above).
    {"captions": ("kohaku_data.captions",)},
    # What every writer keeps current (db + captions summaries); the plan and the executors
    # that curation steps and the builder both run on.
    {"keepers": ("kohaku_data.keepers",),
     "plan": ("kohaku_data.assembly.plan", "kohaku_data.assembly.lock", "kohaku_data.assembly.executor",
              "kohaku_data.assembly.executors", "kohaku_data.assembly.ray_executor")},
    # Steps on a plan and caption tag sources; the sample DB generator.
    {"curation": ("kohaku_data.curation",), "sample": ("kohaku_data.sample",)},
    {"assembly": ("kohaku_data.assembly",)},
    # Latents of a built dataset: assembly's executors, shard writer and parquet; export reads them.
    {"latents": ("kohaku_data.latents",)},
    {"export": ("kohaku_data.export",), "service": ("kohaku_data.service",)},
    {"cli": ("kohaku_data.cli",)},
)


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------
def module_files() -> dict[str, Path]:
    """Dotted module name → file, for the package and the mapped migrations."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    for path in sorted(MIGRATIONS.glob("*.py")):
        name = "kohaku_data.migrations" + ("" if path.stem == "__init__" else f".{path.stem}")
        found[name] = path
    return found


def _owner(name: str, modules: Iterable[str]) -> str | None:
    """The module `name` is, or the nearest package/module above it (None: not ours)."""
    known = set(modules)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """module → the kohaku_data modules it imports (`from pkg import name`: `pkg.name` when
    that is a module, else `pkg`)."""
    graph = {}
    for module, path in files.items():
        targets = {_owner(name, files) for name in imported_names(module, path) if name.startswith("kohaku_data")}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


# ---------------------------------------------------------------------------------------------
# The checks (plain functions, so that the tests below can show that they fail)
# ---------------------------------------------------------------------------------------------
def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One circle of imports as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def layer_of(module: str, tiers: tuple[Mapping[str, tuple[str, ...]], ...] = TIERS) -> tuple[int, str] | None:
    """(tier, layer) of the longest prefix in `tiers` that `module` has, or None."""
    best: tuple[int, int, str] | None = None
    for tier, layers in enumerate(tiers):
        for layer, prefixes in layers.items():
            for prefix in prefixes:
                if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), tier, layer)
    return None if best is None else (best[1], best[2])


def layer_violations(graph: Mapping[str, set[str]],
                     tiers: tuple[Mapping[str, tuple[str, ...]], ...] = TIERS) -> list[str]:
    """Imports that reach a layer of the same or a higher tier, and modules of no layer."""
    problems = []
    for module in sorted(graph):
        here = layer_of(module, tiers)
        if here is None:
            problems.append(f"{module}: in no layer of TIERS (tests/test_layers.py): place it there")
            continue
        for target in sorted(graph[module]):
            there = layer_of(target, tiers)
            if there is not None and there[1] != here[1] and there[0] >= here[0]:
                problems.append(f"{module} ({here[1]}, tier {here[0]}) imports {target} ({there[1]}, tier {there[0]})")
    return problems


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_no_circle_of_imports(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "circle of imports: " + " -> ".join(cycle)


def test_every_import_points_down(graph: dict[str, set[str]]) -> None:
    problems = layer_violations(graph)
    assert not problems, "imports against the layering (TIERS):\n" + "\n".join(problems)


def test_the_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "kohaku_data" / "low"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("def f():\n    from kohaku_data.high import thing\n    import kohaku_data.low.b\n")
    (pkg / "b.py").write_text("import importlib\nimportlib.import_module('kohaku_data.high')\n")
    (tmp_path / "kohaku_data" / "high.py").write_text("")
    files = {"kohaku_data.low": pkg / "__init__.py", "kohaku_data.low.a": pkg / "a.py",
             "kohaku_data.low.b": pkg / "b.py", "kohaku_data.high": tmp_path / "kohaku_data" / "high.py"}
    assert import_graph(files) == {"kohaku_data.low": {"kohaku_data.low.a"},
                                   "kohaku_data.low.a": {"kohaku_data.high", "kohaku_data.low.b"},
                                   "kohaku_data.low.b": {"kohaku_data.high"}, "kohaku_data.high": set()}


def test_the_checks_catch_a_circle_and_a_climb() -> None:
    graph = {"k.low.a": {"k.low.b"}, "k.low.b": {"k.top"}, "k.top": {"k.low.a"}, "k.side": set()}
    assert find_cycle(graph) == ["k.low.a", "k.low.b", "k.top", "k.low.a"]
    assert find_cycle({**graph, "k.top": set()}) is None
    tiers = ({"low": ("k.low",), "side": ("k.side",)}, {"top": ("k.top",)})
    assert layer_violations({**graph, "k.low.b": {"k.side"}, "k.top": {"k.low.a"}}, tiers) == [
        "k.low.b (low, tier 0) imports k.side (side, tier 0)"]
    assert layer_violations(graph, tiers) == ["k.low.b (low, tier 0) imports k.top (top, tier 1)"]
    assert layer_violations({"k.new": set()}, tiers) == ["k.new: in no layer of TIERS (tests/test_layers.py): place it there"]

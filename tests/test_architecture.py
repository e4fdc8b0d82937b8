"""The house plan's arrows, read from the source: every import, function-level ones included.

`layers` imports nothing of the project and holds one folder per family,
`models` only `layers`, `data` nothing above it; no module of `pipelines/`
imports a job module (`train`, `tune`, `evaluate`, `preview`, `compare`,
`serve`, `convert`) other than its own package; no import cycle anywhere; no
file under `pipelines/` is much longer than 400 lines.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMS = ("layers", "models", "data", "pipelines")
JOBS = {f"pipelines.{j}" for j in ("train", "tune", "evaluate", "preview", "compare", "serve", "convert")}
MAX_PIPELINE_LINES = 420


def _modules() -> dict[str, str]:
    out = {}
    for room in ROOMS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, room)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    return out


def _imports(path: str, module: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (resolved to the longest known module name)."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    out = set()
    for n in names:
        while n and n not in known:
            n = n.rpartition(".")[0]
        if n and n != module:
            out.add(n)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def _room(module: str) -> str:
    return module.split(".")[0]


def _job(module: str) -> str | None:
    return next((j for j in JOBS if module == j or module.startswith(j + ".")), None)


def test_the_graph_is_read(graph):
    assert "pipelines.train" in graph and "layers.shift.blurpool" in graph
    assert "pipelines.experiment" in graph["pipelines.train"]


def test_arrows_go_one_way(graph):
    allowed = {"layers": {"layers"}, "models": {"models", "layers"}, "data": {"data"},
               "pipelines": {"pipelines", "models", "layers", "data"}}
    wrong = [f"{m} -> {t}" for m, targets in graph.items() for t in targets if _room(t) not in allowed[_room(m)]]
    assert not wrong, wrong


def test_no_job_imports_another_job(graph):
    wrong = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
             if _job(t) is not None and _job(t) != _job(m)]
    assert not wrong, wrong


def test_no_import_cycles(graph):
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_layers_live_in_family_folders():
    """layers/ holds its `__init__.py` and one package per family (and `common/`), no flat modules (issue 26)."""
    top = os.path.join(ROOT, "layers")
    flat = [f for f in os.listdir(top) if f.endswith(".py") and f != "__init__.py"]
    folders = {d for d in os.listdir(top) if os.path.isfile(os.path.join(top, d, "__init__.py"))}
    assert not flat, f"modules directly under layers/: {flat}"
    assert {"shift", "harmonic", "group", "scale", "common"} <= folders, folders


def test_pipeline_files_stay_short():
    long = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "pipelines")):
        for f in files:
            if f.endswith(".py"):
                n = sum(1 for _ in open(os.path.join(dirpath, f)))
                if n > MAX_PIPELINE_LINES:
                    long.append(f"{f}: {n} lines")
    assert not long, long


def test_the_checker_sees_a_cycle_and_a_wrong_arrow(tmp_path):
    """The checks above can fail: a planted upward import and a planted cycle are found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from layers.x import y\n")
    b.write_text("import pipelines.train\n")
    known = {"layers.x", "pipelines.train", "models.m"}
    assert _imports(str(a), "models.m", known) == {"layers.x"}
    assert _imports(str(b), "pipelines.evaluate", known) == {"pipelines.train"}
    assert _job("pipelines.train") != _job("pipelines.evaluate")

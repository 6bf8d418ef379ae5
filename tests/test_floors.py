"""The floors of docs/architecture.md, held: each module of src/selfsup imports only modules of its own floor or
the floors below it (lazy imports inside functions count too), and no two modules import each other, directly or
around a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "selfsup"

# lowest first; a name is a module or a package (every module under it)
FLOORS = [
    ("ground", ["selfsup", "selfsup.config", "selfsup.budget", "selfsup.dist", "selfsup.batch_random",
                "selfsup.seed", "selfsup.progress", "selfsup.files", "selfsup.hub"]),
    ("data", ["selfsup.data"]),
    ("models · views · probe", ["selfsup.models", "selfsup.views", "selfsup.probe"]),
    ("objectives", ["selfsup.objectives"]),
    ("train", ["selfsup.train"]),
    ("eval · export · report", ["selfsup.eval", "selfsup.export", "selfsup.report", "selfsup.generate",
                                "selfsup.quantize", "selfsup.rundir", "selfsup.inspect", "selfsup.model_card",
                                "selfsup.onnx_export", "selfsup.plan"]),
    ("cli", ["selfsup.cli", "selfsup.__main__"]),
]


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    """The floor of the longest FLOORS name that is `module` or a package above it."""
    best, found = -1, None
    for level, (_, names) in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), level
    assert found is not None, f"{module} is on no floor: add it to FLOORS and docs/architecture.md"
    return found


def imports(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the selfsup modules it imports (`from selfsup import x` names module selfsup.x when there is one)."""
    modules = {module_name(p, src): p for p in src.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "selfsup"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "selfsup":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
        graph[name] = found - {name}
    return graph


def upward(graph: dict[str, set[str]], module: str) -> list[str]:
    mine = floor_of(module)
    return [f"{other} ({FLOORS[floor_of(other)][0]})" for other in sorted(graph[module]) if floor_of(other) > mine]


GRAPH = imports()


def test_every_module_is_on_a_floor():
    for module in GRAPH:
        floor_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    above = upward(GRAPH, module)
    assert not above, f"{module} ({FLOORS[floor_of(module)][0]}) imports from a floor above it: {', '.join(above)}"


def test_no_import_cycles():
    """Modules import each other in one direction only (a package's __init__ importing its own modules aside)."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH.get(todo.pop(), ()):
                if nxt not in seen and not start.startswith(nxt + "."):  # a package's own __init__
                    seen.add(nxt)
                    todo.append(nxt)
        return seen
    cycles = sorted(m for m in GRAPH if m in reach(m))
    assert not cycles, f"modules on an import cycle: {', '.join(cycles)}"


def test_an_upward_import_is_found_lazy_or_not(tmp_path):
    src = tmp_path / "selfsup"
    (src / "data").mkdir(parents=True)
    (src / "train").mkdir()
    (src / "seed.py").write_text("")
    (src / "train" / "trainer.py").write_text("from selfsup.data import cleaning\n")
    (src / "data" / "cleaning.py").write_text("def clean():\n    from selfsup.train.trainer import train\n")
    (src / "data" / "text.py").write_text("from selfsup import seed\nfrom selfsup.data import cleaning\n")
    graph = imports(src)
    assert graph["selfsup.data.text"] == {"selfsup.seed", "selfsup.data.cleaning"}
    assert upward(graph, "selfsup.data.cleaning") == ["selfsup.train.trainer (train)"]
    assert upward(graph, "selfsup.data.text") == [] and upward(graph, "selfsup.train.trainer") == []

"""The layout in ARCHITECTURE.md, enforced: which part of the library may import which, no cycles between modules,
no entry script imported by the library, and argparse only in utils/cli/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = {"train", "evolve", "val", "detect"}
PARTS = ("data", "training", "evaluation", "evolution", "plots")
# part -> the parts it must never import (ARCHITECTURE.md); "common" is utils/*.py outside the named packages.
FORBIDDEN = {
    "common": {"models", "data", "training", "evaluation", "evolution", "plots", "cli"},
    "models": {"data", "training", "evaluation", "evolution", "plots", "cli"},
    "data": {"models", "training", "evaluation", "evolution", "plots", "cli"},
    "evaluation": {"models", "training", "evolution", "plots", "cli"},
    "plots": {"models", "training", "evolution", "cli"},
    "training": {"evolution", "cli"},
    "evolution": {"models", "data", "training", "cli"},
    "cli": set(),
}
# The one adapter that evolves a training run may import training and data; the rest of evolution may not.
EXCEPTIONS = {"utils.evolution.training_objective": {"training", "data"}}


def part_of(module: str) -> str:
    pieces = module.split(".")
    if pieces[0] == "models":
        return "models"
    if module == "utils.cli" or module.startswith("utils.cli."):
        return "cli"
    return pieces[1] if len(pieces) > 1 and pieces[1] in PARTS else "common"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every absolute import in the file, lazy ones inside functions included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def library_imports(root: Path) -> dict[str, set[str]]:
    """module -> the project modules and entry scripts it imports (library modules under utils/ and models/)."""
    files = sorted([*root.glob("utils/**/*.py"), *root.glob("models/**/*.py")])
    modules = {module_name(root, path): path for path in files}
    graph = {}
    for module, path in modules.items():
        found = set()
        for name in imported_modules(path):
            if name.split(".")[0] in ENTRY_SCRIPTS or name == "argparse":
                found.add(name.split(".")[0])
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
        graph[module] = found
    return graph


def layout_violations(root: Path) -> list[str]:
    """Every broken rule, one line each (empty when the layout holds)."""
    graph = library_imports(root)
    problems = []
    for module, imports in sorted(graph.items()):
        part = part_of(module)
        for name in sorted(imports):
            if name in ENTRY_SCRIPTS:
                problems.append(f"{module} imports the entry script {name}")
            elif name == "argparse":
                if part != "cli":
                    problems.append(f"{module} imports argparse (flags live in utils/cli/)")
            elif part_of(name) in FORBIDDEN[part] - EXCEPTIONS.get(module, set()):
                problems.append(f"{module} ({part}) imports {name} ({part_of(name)})")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in find_cycles(graph)]
    return problems


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (package __init__ re-exports of their own modules aside)."""
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(graph.get(module, ())):
            if name not in graph or name.startswith(module + "."):
                continue
            if state.get(name) == "open":
                cycles.append([*path[path.index(name) :], name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_the_library_follows_architecture_md():
    assert layout_violations(ROOT) == []


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"utils/evaluation/bad.py": "from utils.training.loss import YoloLoss\n"}, "(evaluation) imports"),
        ({"utils/data/bad.py": "def f():\n    from models.yolo import build_model\n"}, "(data) imports models.yolo"),
        ({"utils/training/bad.py": "import train\n"}, "imports the entry script train"),
        ({"utils/plots/bad.py": "import argparse\n"}, "imports argparse"),
        ({"utils/evolution/runner.py": "from utils.training.trainer import train\n"}, "(evolution) imports"),
        (
            {"utils/a.py": "from utils.b import x\n", "utils/b.py": "from utils.a import y\n"},
            "import cycle: utils.a -> utils.b -> utils.a",
        ),
    ],
)
def test_the_checker_catches_a_bad_import(tmp_path, files, expected):
    write_tree(tmp_path, {"utils/__init__.py": "", "utils/training/loss.py": "", "utils/training/trainer.py": "",
                          "models/yolo.py": "", **files})  # fmt: skip
    problems = layout_violations(tmp_path)
    assert any(expected in problem for problem in problems), problems


def test_the_adapter_may_import_training(tmp_path):
    adapter = "from utils.training.trainer import train\n"
    write_tree(tmp_path, {"utils/training/trainer.py": "", "utils/evolution/training_objective.py": adapter})
    assert layout_violations(tmp_path) == []


def test_architecture_md_names_every_part():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for name in (*(f"`utils/{part}/`" for part in PARTS), "`models/`", "`utils/cli/`"):
        assert f"| {name} |" in text, f"ARCHITECTURE.md has no row for {name}"
    packages = {path.parent.name for path in (ROOT / "utils").glob("*/__init__.py")}
    assert packages == {*PARTS, "cli"}, "a new package needs its rules here and in ARCHITECTURE.md"

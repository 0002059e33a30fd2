"""The project's shape, as docs/overview.md describes it: the design card's files on top beside the
scripts and a few role packages, imports that run one way with no cycle, and no module too long to
read."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# The layers, lowest first: a module may import from its own layer and the ones before it.
LAYERS = (
    ("utils", "config", "files"),  # helpers and file reading
    ("layers", "generator", "discriminator", "dataset"),  # the paper's networks and the data
    ("evaluation", "speed"),
    ("training",),
    ("reporting",),
    ("benchmarking", "demo_app"),
    ("train", "predict", "demo", "benchmark"),  # the scripts: nothing imports them
)
SCRIPTS = set(LAYERS[-1])
PACKAGES = {"files", "evaluation", "speed", "training", "reporting", "benchmarking", "demo_app"}
TOP_FILES = {
    "README.md",
    "requirements.txt",
    "train.py",
    "config.py",
    "dataset.py",
    "generator.py",
    "discriminator.py",
    "layers.py",
    "utils.py",
    "predict.py",
    "demo.py",
    "benchmark.py",
    "pyproject.toml",
}
TOP_FOLDERS = {"data", "checkpoints", "results", "configs", "docs", "tests", "tools"}
MAX_LINES = 450


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project outside tests/ and tools/."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in ("tests", "tools") or any(p.startswith(".") for p in parts):
            continue
        found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function: `from a.b import c` gives a.b
    and a.b.c (c may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_the_top_level_is_the_design_card_the_scripts_and_the_role_packages():
    visible = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") and p.name != "__pycache__"}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name in visible}
    files = visible - folders
    assert {f for f in files if not f.startswith("requirements-")} == TOP_FILES
    assert folders == TOP_FOLDERS | PACKAGES
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package


def test_imports_run_one_way_and_nothing_imports_a_script():
    modules = project_modules()
    for name, path in modules.items():
        for target in imports_of(path):
            if layer_of(target) is None:  # the standard library and the packages installed
                continue
            assert target.split(".")[0] not in SCRIPTS, f"{name} imports the script {target}"
            assert layer_of(target) <= layer_of(name), f"{name} imports {target}, a later layer"


def test_no_import_cycle():
    modules = project_modules()
    graph = {
        name: {t for t in imports_of(path) if t in modules and t != name and not name.startswith(t + ".")}
        for name, path in modules.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        assert name not in trail, "import cycle: " + " -> ".join(trail[trail.index(name) :] + [name])
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, trail + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_module_is_too_long_to_read():
    long = {
        name: n for name, p in project_modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split by concern: {long}"


def runtime_project_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file needs to run: its imports outside `if TYPE_CHECKING:` blocks
    (those name type hints only), each `from package import module` counted as that module."""
    tree = ast.parse(path.read_text())
    hints_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in hints_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules or ({node.module} & modules.keys())
    return found


def test_train_py_reads_in_one_sitting():
    """The loop, the GAN step's call and the end of an epoch on a few screens, resting on a handful
    of modules: at most 250 lines, and at most 8 project modules imported to run."""
    train = ROOT / "train.py"
    assert len(train.read_text().splitlines()) <= 250
    needed = runtime_project_imports(train, project_modules())
    assert len(needed) <= 8, sorted(needed)
    assert "training.session" in needed and "training.step" in needed, sorted(needed)

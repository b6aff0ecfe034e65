"""Keep the house's shape: kernels <- workers <- platform; no `__init__.py` in the top-level folders."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bitsmith.platform.specs.job_kinds import JOB_KIND_TABLE

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["platform", "workers", "kernels", "migrations"])
def test_top_level_folders_are_namespace_portions(folder: str) -> None:
    assert not (ROOT / folder / "__init__.py").exists()


def test_kernels_import_only_torch_and_stdlib() -> None:
    for path in (ROOT / "kernels").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(("bitsmith.platform", "bitsmith.workers", "ray", "sqlalchemy")), (path, name)


def test_workers_use_only_specs_context_errors_from_platform() -> None:
    allowed = ("bitsmith.platform.specs", "bitsmith.platform.context", "bitsmith.platform.errors",
               "bitsmith.platform.digests")
    for path in (ROOT / "workers").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(("ray", "sqlalchemy", "alembic")), (path, name)
            if name.startswith("bitsmith.platform"):
                assert name.startswith(allowed), (path, name)


def test_only_store_opens_sessions() -> None:
    for path in ROOT.glob("platform/**/*.py"):
        if "store" in path.relative_to(ROOT).parts:
            continue
        for name in _imports(path):
            assert not name.startswith("sqlalchemy"), (path, name)


def test_stdlib_platform_is_not_shadowed_from_repo_root() -> None:
    code = "import platform, sys; print(platform.__file__); print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    first = out.stdout.splitlines()[0]
    assert str(ROOT) not in first and first.endswith("platform.py")
    assert out.stdout.splitlines()[1]


def test_cli_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys; from bitsmith.platform.cli.main import cli; "
            "heavy = [m for m in ('torch', 'ray', 'transformers', 'alembic', 'sqlalchemy') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The worker module of each job kind (from the one table): a recipe, importable only by the platform, never by
# another worker module.
JOB_MODULES = {entry.worker for entry in JOB_KIND_TABLE.values()}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["bitsmith", *parts])


def _resolved_imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an import statement anywhere in `path` (functions included) may load, relative ones
    resolved; `from X import Y` counts both X and X.Y (Y may be a submodule)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _cross_worker_imports(root: Path, job_modules: set[str]) -> list[tuple[str, str]]:
    """(module, job worker module it imports) for every module under `root`/workers importing another job's."""
    offenders = []
    for path in sorted((root / "workers").rglob("*.py")):
        own = _module_name(path, root)
        offenders += [(own, target) for target in sorted(_resolved_imports(path, root) & job_modules)
                      if target != own]
    return offenders


def test_no_worker_module_imports_another_jobs_worker_module() -> None:
    assert all(_module_name(ROOT / "workers" / f"{m.rsplit('.', 1)[1]}.py") == m for m in JOB_MODULES)
    assert _cross_worker_imports(ROOT, JOB_MODULES) == []


def test_the_cross_worker_check_finds_each_import_form(tmp_path: Path) -> None:
    """The check above can fail: absolute, relative, `from bitsmith.workers import quantize` and imports
    inside functions or sub-packages are all found; the platform may import worker modules."""
    (tmp_path / "workers" / "allocation").mkdir(parents=True)
    (tmp_path / "workers" / "quantize.py").write_text("import bitsmith.workers.calibration\n")
    (tmp_path / "workers" / "calibration.py").write_text("import torch\n")
    (tmp_path / "workers" / "search.py").write_text("def run(spec, ctx):\n    from .quantize import run\n")
    (tmp_path / "workers" / "eval.py").write_text("from bitsmith.workers import search\n")
    (tmp_path / "workers" / "allocation" / "levels.py").write_text("from ..quantize import plan_layers\n")
    jobs = {"bitsmith.workers.quantize", "bitsmith.workers.search", "bitsmith.workers.eval"}
    assert _cross_worker_imports(tmp_path, jobs) == [
        ("bitsmith.workers.allocation.levels", "bitsmith.workers.quantize"),
        ("bitsmith.workers.eval", "bitsmith.workers.search"),
        ("bitsmith.workers.search", "bitsmith.workers.quantize")]


def _platform_modules() -> dict[str, Path]:
    """Dotted name (bitsmith.platform....) -> file, packages named by their `__init__.py`."""
    modules = {}
    for path in sorted((ROOT / "platform").rglob("*.py")):
        parts = ("bitsmith", *path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The platform modules `name` imports anywhere in its file (inside functions too), relative or absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` imports a.b.c, or the module it names
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                cycles.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_check_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert _import_cycles(graph) == [["a", "b", "c"], ["e", "f"]]


def test_no_import_cycle_in_platform() -> None:
    modules = _platform_modules()
    graph = {name: _imported_modules(name, path, modules) for name, path in modules.items()}
    assert "bitsmith.platform.sweeps.driver" in graph["bitsmith.platform.sweeps"]  # the walk sees the package
    assert "bitsmith.platform.provenance" in graph["bitsmith.platform.sweeps.driver"]  # and imports in functions
    assert _import_cycles(graph) == []


def test_each_job_module_reads_top_down_from_run() -> None:
    for module in sorted(JOB_MODULES):
        path = ROOT / "workers" / f"{module.rsplit('.', 1)[1]}.py"
        functions = [n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)]
        assert functions[0] == "run", (path, functions[:3])

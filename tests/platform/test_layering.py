"""Keep the house's shape: kernels <- workers <- platform; no `__init__.py` in the top-level folders."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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


# The worker module of each job kind: a recipe, importable only by the platform, never by another worker module.
JOB_MODULES = {f"bitsmith.workers.{name}" for name in ("quantize", "search", "eval", "rl", "train", "noop")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["bitsmith", *parts])


def _resolved_imports(path: Path) -> set[str]:
    """Every module an import statement anywhere in `path` (functions included) may load, relative ones
    resolved; `from X import Y` counts both X and X.Y (Y may be a submodule)."""
    name = _module_name(path)
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


def test_no_worker_module_imports_another_jobs_worker_module() -> None:
    assert all(_module_name(ROOT / "workers" / f"{m.rsplit('.', 1)[1]}.py") == m for m in JOB_MODULES)
    offenders = []
    for path in (ROOT / "workers").rglob("*.py"):
        own = _module_name(path)
        offenders += [(own, target) for target in sorted(_resolved_imports(path) & JOB_MODULES) if target != own]
    assert offenders == []


def test_each_job_module_reads_top_down_from_run() -> None:
    for module in sorted(JOB_MODULES):
        path = ROOT / "workers" / f"{module.rsplit('.', 1)[1]}.py"
        functions = [n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)]
        assert functions[0] == "run", (path, functions[:3])

"""What makes a result reproducible: the code version and fingerprint, the environment, and the cache key."""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CODE_DIRS = ("platform", "workers", "kernels", "migrations")


def source_root() -> Path:
    """The folder holding platform/, workers/, kernels/ (the repo root for an editable install)."""
    import bitsmith.platform

    return Path(list(bitsmith.platform.__path__)[0]).resolve().parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def code_version() -> dict[str, Any]:
    """Package version + git commit + a hash of uncommitted changes to the code folders (None when clean).

    Recorded for provenance only: the cache key uses a job kind's `code_fingerprint`, so a commit that
    touches nothing a kind imports (a README edit) keeps its cache hits.
    """
    try:
        package = importlib.metadata.version("bitsmith")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    root = source_root()
    commit = dirty_hash = None
    if (root / ".git").exists():
        commit = (_git(["rev-parse", "HEAD"], root) or "").strip() or None
        diff = _git(["diff", "HEAD", "--", *CODE_DIRS], root) or ""
        untracked = _git(["ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS], root) or ""
        if untracked.strip():
            h = hashlib.sha256()
            for rel in sorted(untracked.split()):
                p = root / rel
                if p.is_file():
                    h.update(rel.encode() + b"\0" + p.read_bytes())
            diff += "\nuntracked:" + h.hexdigest()
        if diff.strip():
            dirty_hash = hashlib.sha256(diff.encode()).hexdigest()[:16]
    return {"package": package, "commit": commit, "dirty_hash": dirty_hash}


# -- code fingerprints ---------------------------------------------------------------------------
# Import name -> distribution of the libraries whose version can change a job's numbers. A module graph
# that imports one of them has its installed version (None when missing) in its fingerprint.
NUMERIC_LIBRARIES = {"torch": "torch", "transformers": "transformers", "triton": "triton", "numpy": "numpy",
                     "safetensors": "safetensors", "tokenizers": "tokenizers", "lm_eval": "lm_eval",
                     "compressed_tensors": "compressed-tensors", "scipy": "scipy"}


@dataclass(frozen=True)
class Fingerprint:
    """A hash of a module's source and every `bitsmith.*` module it imports, plus its numeric libraries."""

    digest: str
    modules: dict[str, str]              # module name -> sha256 of its source file
    libraries: dict[str, str | None]     # distribution -> installed version

    def record(self) -> dict[str, Any]:
        """The part of a run's `code_version` that identifies its code (and lets `reproduce` diff it)."""
        return {"fingerprint": self.digest, "modules": dict(self.modules), "libraries": dict(self.libraries)}


def code_fingerprint(module: str, root: Path | None = None) -> Fingerprint:
    """The fingerprint of `module` (e.g. "bitsmith.workers.quantize") over the source tree at `root`.

    Imports are found statically (`ast`, imports inside functions included, `if TYPE_CHECKING:` blocks
    not), so nothing is imported. Cached per process for the installed tree (`root=None`).
    """
    if root is None:
        return _installed_fingerprint(module)
    return _compute_fingerprint(module, Path(root))


def kind_fingerprint(kind: str, root: Path | None = None) -> Fingerprint:
    """The fingerprint of the worker module that runs `kind` jobs."""
    from .jobs import WORKER_MODULES, check_runnable

    check_runnable(kind)
    return code_fingerprint(WORKER_MODULES[kind], root)  # type: ignore[arg-type]


def derived_key(key: str, module: str, root: Path | None = None) -> str:
    """A derived artifact's key: the builder's own `key` mixed with the fingerprint of the module building it."""
    payload = json.dumps({"key": key, "code": code_fingerprint(module, root).digest}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _installed_fingerprint(module: str) -> Fingerprint:
    return _compute_fingerprint(module, source_root())


def _compute_fingerprint(module: str, root: Path) -> Fingerprint:
    modules: dict[str, str] = {}
    libraries: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in modules:
            continue
        path = module_file(name, root) or (_loaded_file(name) if name == module else None)
        if path is None:
            raise ValueError(f"no source file for module {name!r} under {root}")
        source = path.read_bytes()
        modules[name] = hashlib.sha256(source).hexdigest()
        local, external = _imports(ast.parse(source, filename=str(path)), name, path.name == "__init__.py")
        pending.extend(m for m in local if m not in modules and module_file(m, root) is not None)
        libraries.update(external)
    versions = {NUMERIC_LIBRARIES[lib]: _version(NUMERIC_LIBRARIES[lib]) for lib in sorted(libraries)}
    modules = dict(sorted(modules.items()))
    payload = json.dumps({"modules": modules, "libraries": versions}, sort_keys=True, separators=(",", ":"))
    return Fingerprint(hashlib.sha256(payload.encode()).hexdigest(), modules, versions)


def module_file(name: str, root: Path) -> Path | None:
    """The source file of `bitsmith.<dir>.<...>` under `root` (None for a namespace folder or another package)."""
    parts = name.split(".")
    if parts[0] != "bitsmith" or len(parts) < 2:
        return None
    base = root.joinpath(*parts[1:])
    for path in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _loaded_file(name: str) -> Path | None:
    """The source file of an imported module outside bitsmith (a test's or a notebook's builder)."""
    file = getattr(sys.modules.get(name), "__file__", None)
    return Path(file) if file and file.endswith(".py") else None


def _imports(tree: ast.Module, name: str, is_package: bool) -> tuple[set[str], set[str]]:
    """(`bitsmith.*` modules a module may import — with their parent packages —, numeric libraries it imports)."""
    package = name if is_package else name.rpartition(".")[0]
    local: set[str] = set()
    external: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _resolve_from(node, package)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]
        for target in targets:
            top = target.split(".")[0]
            if top == "bitsmith":
                parts = target.split(".")
                local.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
            elif top in NUMERIC_LIBRARIES:
                external.add(top)
    return local, external


def _resolve_from(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[:len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, at any depth, except those only run by type checkers."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _import_nodes(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str | None = None, extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions, device and determinism flags of the process that runs a job (the one environment capture:
    the run record's and the eval report's). `device` "auto" or None is the device torch would pick."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": {**dict(_package_versions()), **{name: _version(name) for name in extra_packages}},
    }
    device = None if device == "auto" else device
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = torch.cuda.is_available()
        env["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
        env["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
        env["default_dtype"] = str(torch.get_default_dtype()).replace("torch.", "")
        env["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    except ImportError:
        env["device"] = device or "cpu"
    env["cpu_count"] = os.cpu_count()
    return env


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str | None], ...]:
    """Installed versions of the libraries results depend on (fixed for the life of a process)."""
    out = []
    for name in ("torch", "transformers", "ray", "safetensors", "tokenizers", "numpy", "pydantic", "sqlalchemy"):
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def cache_key(kind: str, semantic_spec_json: str, input_digests: dict[str, str], fingerprint: str) -> str:
    """sha256 over kind, the semantic part of the canonical spec, input digests and the kind's code fingerprint."""
    payload = json.dumps({"kind": kind, "spec": json.loads(semantic_spec_json),
                          "inputs": dict(sorted(input_digests.items())), "code": fingerprint},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()

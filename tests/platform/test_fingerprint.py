"""One code-version rule: a job kind's fingerprint covers its worker module and every `bitsmith.*` module it
imports (kernels included) plus its numeric libraries; it keys runs and derived artifacts, nothing else does."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from bitsmith.platform.context import local_context
from bitsmith.platform.jobs import WORKER_MODULES
from bitsmith.platform.provenance import (code_fingerprint, code_version, derived_key, environment,
                                          kind_fingerprint, source_root)
from bitsmith.platform.reproduce import compare_runs
from bitsmith.platform.scheduler.submit import record_submission
from bitsmith.platform.specs import canonical_json, parse_spec, semantic_json

KINDS = sorted(k for k, module in WORKER_MODULES.items() if module)
CODE_DIRS = ("platform", "workers", "kernels", "migrations")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package source tree (and the README beside it) that a test may edit."""
    root = source_root()
    copy = tmp_path / "src"
    for name in CODE_DIRS:
        shutil.copytree(root / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "README.md", copy / "README.md")
    return copy


def fingerprints(root: Path) -> dict[str, str]:
    return {kind: kind_fingerprint(kind, root).digest for kind in KINDS}


def edit(path: Path) -> None:
    """A one-character change (a trailing space on the first line) that changes no behaviour."""
    first, rest = path.read_text().split("\n", 1)
    path.write_text(first + " \n" + rest)


def test_the_fingerprint_covers_the_worker_its_imports_and_numeric_libraries(tree: Path) -> None:
    quantize = kind_fingerprint("quantize", tree)
    assert {"bitsmith.workers.quantize", "bitsmith.kernels.gptq", "bitsmith.platform.specs.quantize"} <= set(
        quantize.modules)
    assert all(len(h) == 64 for h in quantize.modules.values()) and "torch" in quantize.libraries
    assert "bitsmith.kernels.gptq" not in kind_fingerprint("train", tree).modules
    assert "lm_eval" in kind_fingerprint("eval", tree).libraries  # imported (inside a function) by its backend
    assert quantize.record()["fingerprint"] == quantize.digest
    assert fingerprints(tree) == fingerprints(source_root())  # the copy fingerprints as the installed tree


def test_a_readme_or_other_change_outside_the_module_graph_keeps_every_fingerprint(tree: Path) -> None:
    before = fingerprints(tree)
    (tree / "README.md").write_text((tree / "README.md").read_text() + "\nA new paragraph.\n")
    (tree / "workers" / "scratch.py").write_text("import bitsmith.kernels.gptq\n")  # imported by no kind
    edit(next((tree / "migrations").rglob("*.py")))
    assert fingerprints(tree) == before


def test_a_one_character_gptq_change_invalidates_quantize_search_and_the_level_db_not_train(tree: Path) -> None:
    before = fingerprints(tree)
    level_key = "model+calibration+levels"  # what `level_db_key` covers; the platform adds the code
    db_before = derived_key(level_key, "bitsmith.workers.search", tree)
    edit(tree / "kernels" / "gptq.py")
    after = fingerprints(tree)
    assert {kind for kind in KINDS if before[kind] != after[kind]} == {"quantize", "search"}
    assert derived_key(level_key, "bitsmith.workers.search", tree) != db_before


def test_cached_artifact_mixes_in_the_fingerprint_of_the_module_defining_the_builder(tmp_path: Path) -> None:
    asked: list[str] = []
    ctx, _ = local_context(tmp_path / "run")
    ctx.derived_lookup = lambda key, kind: asked.append(key)  # type: ignore[func-returns-value]

    def build(out: Path) -> None:
        (out / "x").write_text("1")

    path = ctx.cached_artifact("settings", "level-db", build)
    assert asked == [derived_key("settings", __name__)] and (path / "x").read_text() == "1"
    assert derived_key("settings", __name__) != derived_key("settings", "bitsmith.workers.search")


def test_the_cache_key_ignores_the_commit_and_the_run_records_it_with_the_fingerprint(db) -> None:
    spec = parse_spec({"kind": "noop", "payload": "fp"})
    first = record_submission(db, spec, code={"package": "0.1.0", "commit": "a" * 40, "dirty_hash": None},
                              executor="local").run
    second = record_submission(db, spec, code={"package": "0.1.0", "commit": "b" * 40, "dirty_hash": "d"},
                               executor="local", no_cache=True).run
    assert first.cache_key == second.cache_key
    assert first.code_version["commit"] == "a" * 40 and second.code_version["dirty_hash"] == "d"
    noop = kind_fingerprint("noop")
    assert first.code_version["fingerprint"] == noop.digest and first.code_version["modules"] == noop.modules
    assert first.code_version["libraries"] == noop.libraries
    assert {"package", "commit", "dirty_hash"} <= set(code_version())


def test_reproduce_names_the_modules_that_changed(tree: Path) -> None:
    before = code_fingerprint("bitsmith.workers.quantize", tree).record()
    edit(tree / "kernels" / "gptq.py")
    after = code_fingerprint("bitsmith.workers.quantize", tree).record()

    def run(run_id: str, code: dict) -> SimpleNamespace:
        return SimpleNamespace(id=run_id, status="succeeded", environment={}, code_version=code)

    report = compare_runs(run("a", before), run("b", after), {}, {}, {}, {})
    assert report.changed_modules == {"bitsmith.kernels.gptq": "changed"}
    assert report.code_diff == {"fingerprint": (before["fingerprint"], after["fingerprint"])}
    old = {"package": "0.1.0", "commit": "c" * 40, "dirty_hash": None}  # a run recorded before fingerprints
    assert compare_runs(run("a", old), run("b", after), {}, {}, {}, {}).changed_modules is None


@pytest.mark.parametrize("kind, extra", [("train", {"inputs": {"corpus": "c"}}),
                                         ("quantize", {"inputs": {"model": "m", "calibration": "c"}}),
                                         ("eval", {"inputs": {"model": "m", "data": "d"},
                                                   "tasks": [{"type": "token_ppl"}]}),
                                         ("search", {"inputs": {"model": "m", "calibration": "c"},
                                                     "budget": {"type": "avg_bits", "bits_per_weight": 3.0}}),
                                         ("rl", {"inputs": {"policy": "p", "data": "d"}})])
def test_threads_default_to_the_cpus_resolved_into_the_spec_and_so_the_key(kind: str, extra: dict) -> None:
    """Before: `threads` stayed unset and the worker used `resources.cpus`, which is not in the key."""
    one, four = (parse_spec({"kind": kind, **extra, "resources": {"cpus": cpus}}) for cpus in (1, 4))
    assert (one.compute.threads, four.compute.threads) == (1, 4)
    assert semantic_json(one) != semantic_json(four)
    pinned = [parse_spec({"kind": kind, **extra, "resources": {"cpus": cpus}, "compute": {"threads": 2}})
              for cpus in (1, 4)]
    assert semantic_json(pinned[0]) == semantic_json(pinned[1]) and pinned[0].compute.threads == 2
    assert parse_spec(json.loads(canonical_json(one))) == one  # a stored spec parses back to itself


def test_the_environment_records_the_device_auto_resolved_to_and_extra_packages() -> None:
    import torch

    assert environment("auto")["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert environment("cpu")["device"] == "cpu" and environment()["device"] == environment("auto")["device"]
    env = environment("cpu", ("pytest",))
    assert env["packages"]["pytest"] == pytest.__version__ and env["packages"]["torch"] == torch.__version__

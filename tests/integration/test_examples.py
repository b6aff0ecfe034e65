"""Every spec in examples/ validates, and the demo pipeline refers only to spec files that exist."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bitsmith.platform.pipeline import load_pipeline
from bitsmith.platform.specs import load_spec, read_spec_file
from bitsmith.platform.sweeps import child_specs, load_sweep_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPECS = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.name != "pipeline.yaml")


@pytest.mark.parametrize("path", SPECS, ids=[str(p.relative_to(EXAMPLES)) for p in SPECS])
def test_example_spec_validates(path: Path) -> None:
    data = read_spec_file(path)
    if data.get("kind") == "sweep":  # a sweep: every child must validate
        assert child_specs(load_sweep_spec(data, source=str(path)))
    else:
        assert load_spec(path).kind


def test_demo_pipeline_jobs_validate() -> None:
    stages = load_pipeline(EXAMPLES / "demo" / "pipeline.yaml")
    assert len(stages) == 3
    names = set()
    for stage in stages:
        for job in stage.jobs:
            spec = load_spec(job.spec_file, job.overrides)
            names.add(spec.name)
    assert len(names) == sum(len(s.jobs) for s in stages), "every demo job needs its own name"


def test_demo_needs_no_optional_extra() -> None:
    """`make demo` installs only the package: no demo job exports, evaluates with lm_eval or sweeps, and the
    workers it runs import with lm_eval, optuna, compressed-tensors, triton and psycopg unavailable."""
    kinds = set()
    for stage in load_pipeline(EXAMPLES / "demo" / "pipeline.yaml"):
        for job in stage.jobs:
            spec = load_spec(job.spec_file, job.overrides)
            kinds.add(spec.kind)
            assert getattr(spec, "export", "none") == "none" and getattr(spec, "backend", "native") == "native"
    assert "sweep" not in kinds
    blocked = ("lm_eval", "optuna", "compressed_tensors", "triton", "psycopg")
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            "import importlib\nimport bitsmith.platform.cli.main, bitsmith.platform.pipeline\n"
            f"for kind in {sorted(kinds)!r}:\n    importlib.import_module('bitsmith.workers.' + kind)\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


_SET = re.compile(r"--set\s+(\S+=\S+)")
COMMENTED = [(path, line) for path in SPECS for line in path.read_text().splitlines()
             if line.lstrip().startswith("#") and _SET.search(line)]


@pytest.mark.parametrize("path,line", COMMENTED, ids=[f"{p.relative_to(EXAMPLES)}:{i}" for i, (p, _) in
                                                      enumerate(COMMENTED)])
def test_overrides_suggested_in_example_comments_validate(path: Path, line: str) -> None:
    assert load_spec(path, _SET.findall(line)).kind

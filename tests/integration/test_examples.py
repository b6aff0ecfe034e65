"""Every spec in examples/ validates, and the demo pipeline refers only to spec files that exist."""
from __future__ import annotations

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

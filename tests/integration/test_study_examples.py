"""The SmolLM2 study's pipeline: every job validates, and its GPTQ baseline is the search's uniform row's job."""
from __future__ import annotations

from pathlib import Path

from bitsmith.platform.pipeline import load_pipeline
from bitsmith.platform.specs import load_spec
from bitsmith.workers.allocation.uniform import uniform_quantize_spec

STUDY = Path(__file__).resolve().parents[2] / "examples" / "studies" / "smollm2"


def test_the_study_pipeline_jobs_validate_with_distinct_names() -> None:
    specs = [load_spec(job.spec_file, job.overrides) for stage in load_pipeline(STUDY / "pipeline.yaml")
             for job in stage.jobs]
    assert [s.kind for s in specs].count("search") == 1
    assert len({s.name for s in specs}) == len(specs)


def test_the_study_gptq_baseline_is_the_quantize_job_the_search_builds_its_uniform_row_from() -> None:
    search = load_spec(STUDY / "search-evo3.yaml")
    gptq = load_spec(STUDY / "quantize-gptq3.yaml")
    built = uniform_quantize_spec(search, 3)
    ignore = {"name", "tags", "resources"}
    assert gptq.model_dump(exclude=ignore) == built.model_dump(exclude=ignore)
    assert "sm-study-gptq3/model" in search.inputs.baselines

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


def test_the_study_accuracy_task_is_held_out_pydoc_text(pydoc_corpus) -> None:
    """Every passage and right answer of the bundled multiple-choice file comes from the pydoc test split, none
    from the calibration split the search and GPTQ see, and the eval job reads that file."""
    import re

    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.evaluators.choice import read_choice_file

    def joined(split: str) -> str:
        return " ".join(re.sub(r"\s+", " ", t).strip() for t in read_texts(pydoc_corpus, split))

    test, calibration = joined("test"), joined("calibration")
    records = read_choice_file(STUDY / "pydoc_continuation_mc.jsonl")
    assert len(records) == 48
    for r in records:
        passage = f"{r['question']} {r['choices'][r['label']]}"
        assert passage in test and r["question"] not in calibration
        assert sum(choice in test for choice in r["choices"]) == len(r["choices"])  # distractors: other test docs
    tasks = load_spec(STUDY / "eval.yaml").tasks
    root = STUDY.parents[2]
    assert [root / t.file for t in tasks if t.type == "choice"] == [STUDY / "pydoc_continuation_mc.jsonl"]

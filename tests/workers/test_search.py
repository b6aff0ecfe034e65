"""`search` jobs on the trained test LM: quality against the baselines, outputs, reuse, resume, bisect."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from bitsmith.platform.context import local_context
from bitsmith.platform.specs import parse_spec
from bitsmith.workers import quant_format, search
from bitsmith.workers.allocation.levels import AllocationModel, load_level_db

torch.set_num_threads(1)
log = logging.getLogger(__name__)

# Per-channel levels with plain GPTQ (no act-order, no clipping: not the level defaults) make 2-4 bits hurt this
# small model enough that allocations differ measurably; with the better default quantizer 3 bits cost it under 1 %
# and no allocation beats uniform. The methods are compared on one level database, so uniform here is every layer
# at one of its widths (the default uniform row, built as a `quantize` job, is tested in test_search_baselines.py).
LEVELS = {"bits": [2, 3, 4], "group_size": None, "sequences": 32, "seq_len": 128, "method": {"type": "gptq"},
          "mse_clip": False}
REPORT = {"uniform": "levels"}
EVO = {"type": "evo", "generations": 20, "offspring": 16, "fitness_sequences": 16, "fitness_seq_len": 128,
       "stages": [{"survivors": 4, "sequences": 2}, {"survivors": 1, "sequences": 8}]}


class SharedDerived:
    """A stand-in for the platform's derived-artifact store shared by every run of this module."""

    def __init__(self, root: Path):
        self.root, self.stored = root, []

    def lookup(self, key: str, kind: str) -> Path | None:
        path = self.root / f"{kind}-{key}"
        return path if path.is_dir() else None

    def store(self, key: str, kind: str, path: Path) -> Path:
        dest = self.root / f"{kind}-{key}"
        shutil.copytree(path, dest)
        self.stored.append((key, kind))
        return dest


@pytest.fixture(scope="module")
def derived(tmp_path_factory) -> SharedDerived:
    return SharedDerived(tmp_path_factory.mktemp("derived"))


def _run(work: Path, model: Path, corpus: Path, derived: SharedDerived, method: dict, seed: int = 0,
         budget: dict | None = None, resume: Path | None = None, checkpoint_sink=None):
    spec = parse_spec({"kind": "search", "seed": seed, "inputs": {"model": "m", "calibration": "c"},
                       "method": method, "levels": LEVELS, "report": REPORT,
                       "budget": budget or {"type": "avg_bits", "bits_per_weight": 3.0}})
    ctx, recorder = local_context(work, {"model": model, "calibration": corpus}, seed=seed, resume_checkpoint=resume)
    ctx.derived_lookup, ctx.derived_store = derived.lookup, derived.store
    if checkpoint_sink is not None:
        ctx.checkpoint_sink = checkpoint_sink
    return search.run(spec, ctx), recorder


@pytest.fixture(scope="module")
def evo_run(trained_lm, pydoc_corpus, derived, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("evo"), trained_lm, pydoc_corpus, derived, EVO)


HESSIAN = {"type": "hessian", "sensitivity": "hutchinson", "gradient_sequences": 8, "hutchinson": {"samples_max": 16}}


@pytest.fixture(scope="module")
def hessian_run(trained_lm, pydoc_corpus, derived, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("hessian"), trained_lm, pydoc_corpus, derived, HESSIAN)


@pytest.fixture(scope="module")
def input_trace_run(trained_lm, pydoc_corpus, derived, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("input-trace"), trained_lm, pydoc_corpus, derived,
                {"type": "hessian", "sensitivity": "input_trace"})


def _table(outputs) -> dict[str, dict]:
    report = json.loads(outputs.artifacts["report"].path.read_text())
    return {row["method"]: row for row in report["table"]}


def test_searched_allocations_beat_uniform_and_dp_on_held_out_perplexity(evo_run, hessian_run,
                                                                          input_trace_run) -> None:
    evo_table, hessian_table = _table(evo_run[0]), _table(hessian_run[0])
    ppl = {"unquantized": evo_table["unquantized"]["test_token_ppl"],
           "uniform": evo_table["uniform"]["test_token_ppl"], "dp": evo_table["dp"]["test_token_ppl"],
           "hessian": hessian_table["hessian"]["test_token_ppl"], "evo": evo_table["evo"]["test_token_ppl"],
           # shown, not asserted: layer-local input traces ignore how an error reaches the loss, and on this
           # model they land on either side of uniform depending on the training run
           "hessian (input_trace)": _table(input_trace_run[0])["hessian"]["test_token_ppl"]}
    lines = [f"{name:22s} {value:8.4f}" for name, value in ppl.items()]
    print("\nheld-out token perplexity at 3.0 bits per weight (levels 2/3/4, per-channel):\n" + "\n".join(lines))
    # the same uniform and dp rows come out of both runs (one level database, deterministic baselines)
    assert hessian_table["uniform"]["test_token_ppl"] == ppl["uniform"]
    assert hessian_table["dp"]["test_token_ppl"] == ppl["dp"]
    for table in (evo_table, hessian_table):
        for name in ("uniform", "dp", "evo", "hessian"):
            assert name not in table or table[name]["avg_bits"] <= 3.0 + 1e-9
    assert evo_table["evo"]["avg_bits"] == pytest.approx(3.0)  # mutations keep the budget exactly
    table = "\n".join(lines)
    assert ppl["evo"] < ppl["uniform"], table
    assert ppl["hessian"] < ppl["uniform"], table
    assert ppl["evo"] < ppl["dp"], table
    assert evo_table["evo"]["test_kl"] < evo_table["uniform"]["test_kl"]


def test_outputs_allocation_model_report_and_trajectory(evo_run, trained_lm, derived) -> None:
    outputs, recorder = evo_run
    arts = outputs.artifacts
    assert set(arts) >= {"allocation", "model", "report", "heatmap", "pareto"}
    meta = json.loads((arts["allocation"].path / "artifact.json").read_text())
    assert meta["kind"] == "allocation" and meta["method"] == "evo" and meta["avg_bits"] == pytest.approx(3.0)
    assert meta["budget"] == {"type": "avg_bits", "bits_per_weight": 3.0}
    layers = json.loads((arts["allocation"].path / "allocation.json").read_text())["layers"]
    assert {v["bits"] for v in layers.values()} <= {2, 3, 4}

    # the stitched model loads like any quantize output and computes what the search scored
    qc = quant_format.quantization_config(arts["model"].path)
    assert {name: entry["bits"] for name, entry in qc["modules"].items()} == {k: v["bits"] for k, v in layers.items()}
    loaded = quant_format.load_quantized_model(arts["model"].path)
    from transformers import AutoModelForCausalLM

    db = load_level_db(derived.lookup(meta["level_db"], "level-db"))
    stitched = AllocationModel(AutoModelForCausalLM.from_pretrained(trained_lm, dtype=torch.float32).eval(), db)
    allocation = [db.bits.index(layers[name]["bits"]) for name in db.names]
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, stitched.apply(allocation)(ids).logits, rtol=1e-4, atol=1e-4)

    for key in ("avg_bits", "effective_bits_per_weight", "test/token_ppl", "uniform/test/token_ppl", "kl",
                "dp/test/token_ppl"):
        assert key in outputs.metrics
    steps = [step for key, step, _ in recorder.metrics if key == "evo/kl"]
    assert steps == list(range(1, EVO["generations"] + 1))
    assert arts["heatmap"].path.read_bytes()[:4] == b"\x89PNG"


def test_level_database_is_built_once_and_reused(evo_run, hessian_run, derived) -> None:
    assert [kind for _, kind in derived.stored] == ["level-db"]
    stored = derived.lookup(derived.stored[0][0], "level-db")
    assert {p.suffix for p in stored.iterdir()} == {".json", ".safetensors"}  # no pickle
    evo_meta = json.loads((evo_run[0].artifacts["allocation"].path / "artifact.json").read_text())
    hessian_meta = json.loads((hessian_run[0].artifacts["allocation"].path / "artifact.json").read_text())
    assert evo_meta["level_db"] == hessian_meta["level_db"] == derived.stored[0][0]


class Killed(Exception):
    pass


def test_evo_resumes_after_being_killed(trained_lm, pydoc_corpus, derived, tmp_path) -> None:
    method = {**EVO, "generations": 6, "checkpoint_every": 2, "fitness_top_k": 64}
    full, _ = _run(tmp_path / "full", trained_lm, pydoc_corpus, derived, method)

    saved: list[Path] = []

    def sink_then_die(path: Path, step: int, meta: dict) -> None:
        kept = tmp_path / f"checkpoint-{step}"
        shutil.copytree(path, kept)
        saved.append(kept)
        raise Killed(f"killed after the checkpoint at generation {step}")

    with pytest.raises(Killed):
        _run(tmp_path / "killed", trained_lm, pydoc_corpus, derived, method, checkpoint_sink=sink_then_die)
    assert len(saved) == 1
    resumed, recorder = _run(tmp_path / "resumed", trained_lm, pydoc_corpus, derived, method, resume=saved[0])
    assert [step for key, step, _ in recorder.metrics if key == "evo/kl"] == [3, 4, 5, 6]
    report = json.loads(resumed.artifacts["report"].path.read_text())
    assert report["details"]["resumed_from"] == 2
    assert _layers(resumed) == _layers(full)
    assert resumed.metrics["evaluations"] == full.metrics["evaluations"]


def _layers(outputs) -> dict:
    return json.loads((outputs.artifacts["allocation"].path / "allocation.json").read_text())["layers"]


def test_hessian_variants_with_the_integer_program_meet_a_size_budget(trained_lm, pydoc_corpus, derived,
                                                                       tmp_path, evo_run) -> None:
    size = int(evo_run[0].metrics["size_bytes"] * 0.95)
    for sensitivity in ("input_trace", "fisher"):
        method = {"type": "hessian", "sensitivity": sensitivity, "solver": "milp", "gradient_sequences": 4,
                  "hutchinson": {"samples_max": 6, "samples_min": 2}}
        outputs, _ = _run(tmp_path / sensitivity, trained_lm, pydoc_corpus, derived, method,
                          budget={"type": "size_bytes", "size_bytes": size})
        table = _table(outputs)
        assert table["hessian"]["size_bytes"] <= size
        assert table["uniform"]["size_bytes"] <= size
        assert table["hessian"]["test_token_ppl"] < table["unquantized"]["test_token_ppl"] * 1.5


def test_bisect_stays_within_the_quality_budget(trained_lm, pydoc_corpus, derived, tmp_path) -> None:
    outputs, _ = _run(tmp_path / "bisect", trained_lm, pydoc_corpus, derived,
                      {"type": "bisect", "high_bits": 4, "low_bits": 2, "eval_sequences": 8},
                      budget={"type": "quality", "max_ppl_increase_pct": 2.0})
    report = json.loads(outputs.artifacts["report"].path.read_text())
    details = report["details"]
    dropped = sum(v["bits"] == 2 for v in report["allocation"].values())
    chosen = [p for p in details["probes"] if p["dropped_layers"] == dropped]
    assert details["met"] and chosen and chosen[0]["calibration_ppl"] <= details["limit_ppl"]
    rejected = [p["dropped_layers"] for p in details["probes"] if not p["within"]]
    assert all(k > dropped for k in rejected)
    assert 2.0 <= outputs.metrics["avg_bits"] <= 4.0


@pytest.mark.ray
def test_evo_with_ray_actors_matches_the_in_process_pool(trained_lm, pydoc_corpus, derived, tmp_path) -> None:
    import os

    import ray

    from bitsmith.platform.scheduler.actors import ray_actor_pool

    method = {**EVO, "generations": 3, "n_actors": 2}
    local, _ = _run(tmp_path / "local", trained_lm, pydoc_corpus, derived, method)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = parse_spec({"kind": "search", "inputs": {"model": "m", "calibration": "c"}, "method": method,
                           "levels": LEVELS, "budget": {"type": "avg_bits", "bits_per_weight": 3.0}})
        ctx, _ = local_context(tmp_path / "ray", {"model": trained_lm, "calibration": pydoc_corpus})
        ctx.derived_lookup, ctx.derived_store = derived.lookup, derived.store
        ctx.actor_pool_factory = ray_actor_pool
        remote = search.run(spec, ctx)
    finally:
        ray.shutdown()
    assert _layers(remote) == _layers(local)
    assert remote.metrics["evaluations"] == local.metrics["evaluations"]

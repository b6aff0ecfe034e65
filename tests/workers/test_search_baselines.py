"""A search's baselines are the best uniform quantizer: level defaults, the uniform row built as a `quantize` job,
stored `quantize` models named in the report, effective-bits budgets, and progress on every long phase."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitsmith.kernels.gptq import output_relative_error
from bitsmith.platform.context import local_context
from bitsmith.platform.errors import DataError, SpecError
from bitsmith.platform.specs import parse_spec
from bitsmith.platform.specs.quantize import GPTQMethod, ModuleSelection
from bitsmith.platform.specs.search import LevelsConfig
from bitsmith.workers import quant_format, quantize, search
from bitsmith.workers.allocation.uniform import quantize_uniform, uniform_quantize_spec
from bitsmith.workers.calibration import (architecture_layout, block_layers, calibration_batches, collect_hessians,
                                          dense_weight, plan_layers, sequential_blocks)
from bitsmith.workers.quantizers import method_for

torch.set_num_threads(1)
LEVELS = {"bits": [2, 3, 4], "group_size": 64, "sequences": 16, "seq_len": 128}
REPORT = {"test_max_chunks": 16, "pareto_uniform_levels": False}


def _search_spec(budget: dict, method: dict | None = None, baselines: int = 0, **fields):
    inputs = {"model": "m", "calibration": "c", "baselines": [f"b{i}" for i in range(baselines)]}
    return parse_spec({"kind": "search", "inputs": inputs, "method": method or {"type": "dp"}, "levels": LEVELS,
                       "budget": budget, "report": REPORT, **fields})


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(model_dir))


def test_the_level_defaults_are_the_better_quantize_options_on_the_test_model(trained_lm, pydoc_corpus) -> None:
    """act-order with static groups and MSE clipping cut every width's output error against GPTQ's plain loop."""
    from bitsmith.workers.data.datasets import read_texts

    cfg = LevelsConfig()
    assert cfg.method == GPTQMethod(act_order=True, static_groups=True) and cfg.mse_clip
    model, tokenizer = _load(trained_lm)
    layout = architecture_layout(model)
    plans = plan_layers(model, layout, bits=2, group_size=64, modules=ModuleSelection())
    batches = calibration_batches(read_texts(pydoc_corpus, "calibration"), tokenizer, 16, 128, 8, 0)
    gptq = method_for("gptq")
    error = {"old": {b: 0.0 for b in (2, 3, 4)}, "new": {b: 0.0 for b in (2, 3, 4)}}
    for k, block, calls in sequential_blocks(model, layout, batches, torch.device("cpu")):
        targets = block_layers(model, plans, k)
        hessians = collect_hessians(block, targets, calls, torch.device("cpu"))
        for name, module in targets.items():
            w = dense_weight(module).detach().float().clone()
            for key, (method, clip) in {"old": (GPTQMethod(), False), "new": (cfg.method, cfg.mse_clip)}.items():
                for bits in (2, 3, 4):
                    qw, _ = gptq(w, hessians[name], method, bits, 64, False, clip)
                    error[key][bits] += output_relative_error(w, qw.dequantize(), hessians[name]) * w.numel()
    print(f"\nsummed output error x numel, old vs new level defaults: {error}")
    for bits in (2, 3, 4):
        assert error["new"][bits] < error["old"][bits], error


def test_the_uniform_row_is_built_exactly_as_the_quantize_job_its_report_names(trained_lm, pydoc_corpus,
                                                                                tmp_path) -> None:
    from bitsmith.workers.data.datasets import read_texts

    spec = _search_spec({"type": "avg_bits", "bits_per_weight": 3.0})
    qspec = uniform_quantize_spec(spec, 3)
    ctx, _ = local_context(tmp_path / "q", {"model": trained_lm, "calibration": pydoc_corpus}, seed=qspec.seed)
    job = quantize.run(qspec, ctx)
    loaded = quant_format.load_quantized_model(job.artifacts["model"].path)
    model, tokenizer = _load(trained_lm)
    built = quantize_uniform(qspec, model, tokenizer, read_texts(pydoc_corpus, "calibration"))
    names = list(quant_format.quantization_config(job.artifacts["model"].path)["modules"])
    assert names
    for name in names:  # bit for bit: the same loop, calibration windows and quantizer options
        assert torch.equal(built.get_submodule(name).weight, loaded.get_submodule(name).dequantized_weight()), name


@pytest.fixture(scope="module")
def search_with_baselines(trained_lm, pydoc_corpus, tmp_path_factory):
    """The uniform 3-bit `quantize` job (given as a baseline, as a stored `quantize` output would be), a 2-bit RTN one,
    and a dp search at the 3-bit uniform's effective bits naming both."""
    base = tmp_path_factory.mktemp("baselines")
    spec0 = _search_spec({"type": "avg_bits", "bits_per_weight": 3.0})
    qspec = uniform_quantize_spec(spec0, 3)
    outputs = []
    rtn = parse_spec({"kind": "quantize", "inputs": {"model": "m"}, "method": {"type": "rtn"}}).method
    for i, qs in enumerate([qspec, qspec.model_copy(update={"method": rtn, "bits": 2})]):
        ctx, _ = local_context(base / f"q{i}", {"model": trained_lm, "calibration": pydoc_corpus}, seed=qs.seed)
        outputs.append(quantize.run(qs, ctx))
    effective = outputs[0].metrics["effective_bits_per_weight"]
    spec = _search_spec({"type": "effective_bits", "bits_per_weight": effective}, baselines=2)
    ctx, recorder = local_context(base / "search", {"model": trained_lm, "calibration": pydoc_corpus,
                                                    **{f"baselines.{i}": o.artifacts["model"].path
                                                       for i, o in enumerate(outputs)}})
    result = search.run(spec, ctx)
    report = json.loads(result.artifacts["report"].path.read_text())
    return result, report, effective, recorder


def test_the_report_scores_stored_quantize_models_and_names_the_best(search_with_baselines) -> None:
    result, report, effective, recorder = search_with_baselines
    table = {row["method"]: row for row in report["table"]}
    uniform, gptq, rtn = table["uniform"], table["baselines.0"], table["baselines.1"]
    assert uniform["built_as"] == "quantize" and report["summary"]["uniform_built_as"] == "quantize"
    assert report["summary"]["uniform_quantize_spec"]["bits"] == 3
    # the uniform row and the same quantize job loaded from its files score alike (packed vs dense weights)
    assert gptq["test_token_ppl"] == pytest.approx(uniform["test_token_ppl"], rel=1e-5)
    assert gptq["effective_bits_per_weight"] == pytest.approx(effective)
    assert uniform["effective_bits_per_weight"] == pytest.approx(effective)
    assert rtn["effective_bits_per_weight"] < gptq["effective_bits_per_weight"]
    best = report["summary"]["best_baseline"]  # both fit the chosen allocation's effective bits
    lowest = min((gptq, rtn), key=lambda row: row["test_token_ppl"])
    assert best["role"] == lowest["method"] and best["test_token_ppl"] == lowest["test_token_ppl"]
    chosen = table["dp"]
    assert chosen["effective_bits_per_weight"] <= effective + 1e-9  # the effective-bits budget holds
    assert best["vs_best_baseline_pct"] == pytest.approx(100 * (chosen["test_token_ppl"] / best["test_token_ppl"] - 1))
    assert result.metrics["best_baseline/test/token_ppl"] == best["test_token_ppl"]
    keys = {key for key, _, _ in recorder.metrics}
    assert "block_seconds" not in keys  # the uniform quantize loop adds no per-block metrics to the search


def test_a_baseline_of_another_model_is_refused(trained_lm, pydoc_corpus, search_with_baselines, tmp_path) -> None:
    other = tmp_path / "other"
    import shutil

    shutil.copytree(search_with_baselines[0].artifacts["model"].path, other)
    meta = json.loads((other / "artifact.json").read_text())
    (other / "artifact.json").write_text(json.dumps({**meta, "base_model_digest": "0" * 64}))
    spec = _search_spec({"type": "avg_bits", "bits_per_weight": 3.0}, method={"type": "uniform"}, baselines=1,
                        report={**REPORT, "uniform": "levels", "baseline_dp": False})
    ctx, _ = local_context(tmp_path / "w", {"model": trained_lm, "calibration": pydoc_corpus, "baselines.0": other})
    with pytest.raises(DataError, match=r"inputs.baselines\[0\]: quantized from model 0{64}"):
        search.run(spec, ctx)


def test_effective_bits_budgets_below_the_codes_are_refused() -> None:
    with pytest.raises(SpecError, match="budget.bits_per_weight: 1.9 effective bits is below"):
        _search_spec({"type": "effective_bits", "bits_per_weight": 1.9})


def test_every_long_phase_shows_progress(trained_lm, pydoc_corpus, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("BITSMITH_NO_PROGRESS", "0")
    spec = _search_spec({"type": "avg_bits", "bits_per_weight": 3.0},
                        method={"type": "evo", "generations": 2, "offspring": 2, "fitness_sequences": 2,
                                "fitness_seq_len": 32, "stages": [{"survivors": 1, "sequences": 2}]},
                        levels={**LEVELS, "sequences": 4})
    ctx, _ = local_context(tmp_path / "w", {"model": trained_lm, "calibration": pydoc_corpus})
    search.run(spec, ctx)
    err = capsys.readouterr().err
    for phase in ("level database", "evo", "uniform 3-bit as quantize", "report: test split"):
        assert f"{phase}:" in err, (phase, err[-2000:])


def test_level_weights_keep_at_most_their_memory_bound(search_with_baselines) -> None:
    from bitsmith.workers.allocation.levels import LevelWeights, load_level_db

    result, report, _, _ = search_with_baselines
    work = result.artifacts["report"].path.parents[1]
    db = load_level_db(next((work / "derived").glob("level-db-*")))
    unbounded = LevelWeights(db)
    one = unbounded.dense(0, 0).numel() * 4
    bounded = LevelWeights(db, max_cache_bytes=one)
    for level in (0, 1, 0):
        assert torch.equal(bounded.dense(0, level), unbounded.dense(0, level))
        assert bounded._cached_bytes <= one and len(bounded._cache) == 1

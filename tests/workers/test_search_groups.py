"""Level databases at several group sizes, and the linearity model calibrated by single-layer probes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bitsmith.platform.context import local_context
from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs import parse_spec, spec_hash
from bitsmith.workers import quant_format, search
from bitsmith.workers.allocation import linear
from bitsmith.workers.allocation.levels import AllocationModel, load_level_db

torch.set_num_threads(1)

LEVELS = {"bits": [2, 3, 4], "group_size": 64, "group_sizes": [32, 128], "sequences": 16, "seq_len": 128,
          "method": {"type": "gptq"}, "mse_clip": False}
GRID = [(2, 128), (2, 64), (2, 32), (3, 128), (3, 64), (3, 32), (4, 128), (4, 64), (4, 32)]
METHOD = {"type": "evo", "generations": 3, "offspring": 4, "fitness_sequences": 8, "fitness_seq_len": 64,
          "stages": [{"survivors": 1, "sequences": 4}], "init": "linear",
          "linear": {"fit": "probe", "probe_bits": [3], "samples": 6, "holdout": 0.0}}
BUDGET = 3.3


def _spec(**fields):
    data = {"kind": "search", "seed": 0, "inputs": {"model": "m", "calibration": "c"}, "method": METHOD,
            "levels": LEVELS, "report": {"uniform": "levels", "test_max_chunks": 4},
            "budget": {"type": "effective_bits", "bits_per_weight": BUDGET}}
    return parse_spec({**data, **fields})


@pytest.fixture(scope="module")
def grouped_run(trained_lm, pydoc_corpus, tmp_path_factory):
    ctx, _ = local_context(tmp_path_factory.mktemp("groups"), {"model": trained_lm, "calibration": pydoc_corpus})
    result = search.run(_spec(), ctx)
    report = json.loads(result.artifacts["report"].path.read_text())
    db = load_level_db(next((ctx.work_dir / "derived").glob("level-db-*")))
    return result, report, db


def test_the_database_holds_every_width_at_every_group_size_in_level_order(grouped_run) -> None:
    _, report, db = grouped_run
    assert list(db.grid) == GRID
    for layer in db.layers:
        stored = [lv.storage_bits for lv in layer.levels]
        assert stored == sorted(stored)  # by width, then falling group size: rising stored size
        assert [(lv.bits, lv.group_size) for lv in layer.levels] == GRID
        for bits in (2, 3, 4):  # smaller groups: smaller output error on the calibration inputs
            errors = [lv.rel_error for lv in layer.levels if lv.bits == bits]
            assert errors[-1] < errors[0]
    assert sorted(p.name for p in db.path.glob("level-*.safetensors")) == sorted(
        f"level-{b}{'' if g == 64 else f'g{g}'}.safetensors" for b, g in GRID)
    rows = {r["method"] for r in report["table"]}
    assert {f"uniform-{b}bit-g{g}" for b, g in GRID} <= rows


def test_the_stored_model_mixes_group_sizes_and_computes_what_the_search_scored(grouped_run, trained_lm) -> None:
    from transformers import AutoModelForCausalLM

    result, report, db = grouped_run
    layers = json.loads((result.artifacts["allocation"].path / "allocation.json").read_text())["layers"]
    allocation = [GRID.index((layers[name]["bits"], layers[name]["group_size"])) for name in db.names]
    assert db.effective_bits(allocation) <= BUDGET + 1e-9
    assert len({layers[name]["group_size"] for name in db.names}) >= 2  # the search used more than one
    saved = quant_format.load_quantized_model(result.artifacts["model"].path)
    config = json.loads((result.artifacts["model"].path / "config.json").read_text())["quantization_config"]
    assert config["group_size"] is None  # mixed: each module's entry has its own
    for name in db.names:
        module = saved.get_submodule(name)
        assert (module.bits, module.group_size) == (layers[name]["bits"], layers[name]["group_size"])
    assert all(config["modules"][name]["group_size"] == layers[name]["group_size"] for name in db.names)
    dense = AutoModelForCausalLM.from_pretrained(trained_lm, dtype=torch.float32).eval()
    stitched = AllocationModel(dense, db).apply(allocation)
    ids = torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(saved(input_ids=ids).logits, stitched(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_single_layer_probes_calibrate_the_linear_model(grouped_run) -> None:
    _, report, db = grouped_run
    fit = report["details"]["linear"]
    probed = [i for i, (b, _) in enumerate(GRID) if b == 3]
    assert fit["fit"] == "probe" and fit["probes"] == len(db.layers) * len(probed)
    assert fit["probed_levels"] == ["3bit-g128", "3bit-g64", "3bit-g32"]
    for layer in db.layers:
        table = fit["probe_kl"][layer.name]
        assert all(v >= 0 for v in table)
        # unprobed levels follow the linearity model: α_l · err_l(b)
        for level in set(range(len(GRID))) - set(probed):
            assert table[level] == pytest.approx(fit["alpha"][layer.name] * layer.levels[level].rel_error)
    assert fit["held_out"]["configurations"] == 6 and fit["held_out"]["pearson"] > 0
    table = {r["method"]: r for r in report["table"]}
    for name in ("evo", "linear", "dp", "uniform"):
        assert table[name]["effective_bits_per_weight"] <= BUDGET + 1e-9
    # the uniform row is the widest width and, within it, the smallest group that fits: 3-bit g64 (3.297)
    assert report["summary"]["allocations"]["uniform"][db.names[0]] == {"bits": 3, "group_size": 64}


def test_probe_losses_recover_the_per_layer_weights() -> None:
    rng = np.random.default_rng(0)
    errors = rng.uniform(0.01, 1.0, size=(5, 4))
    alpha = rng.uniform(0.1, 3.0, size=5)
    probes = linear.probe_configurations(5, [1, 2])
    measured = [alpha[layer] * errors[layer, level] for layer, level in probes]
    fitted, table = linear.probe_losses(errors, probes, measured)
    np.testing.assert_allclose(fitted, alpha)
    np.testing.assert_allclose(np.asarray(table), alpha[:, None] * errors)
    # a measured value stands where it was probed, even off the line; negative noise counts as 0
    measured[0] = -1e-9
    _, table = linear.probe_losses(errors, probes, measured)
    assert table[0][1] == 0.0


def test_group_size_settings_are_checked_and_old_specs_hash_as_before() -> None:
    plain = _spec(levels={k: v for k, v in LEVELS.items() if k != "group_sizes"})
    assert "group_sizes" not in json.loads(plain.model_dump_json())["levels"]
    same = _spec(levels={**{k: v for k, v in LEVELS.items() if k != "group_sizes"}, "group_sizes": []})
    assert spec_hash(same) == spec_hash(plain)
    assert spec_hash(_spec()) != spec_hash(plain)
    with pytest.raises(SpecError, match="group_sizes"):
        _spec(levels={**LEVELS, "group_sizes": [32, 32]})
    with pytest.raises(SpecError, match=r"method\.linear\.probe_bits: 5 is not a level"):
        _spec(method={**METHOD, "linear": {**METHOD["linear"], "probe_bits": [5]}})


def test_a_group_size_that_does_not_divide_a_layer_names_levels_group_sizes(trained_lm, pydoc_corpus,
                                                                            tmp_path) -> None:
    ctx, _ = local_context(tmp_path, {"model": trained_lm, "calibration": pydoc_corpus})
    with pytest.raises(SpecError, match=r"^levels\.group_sizes: 48 does not divide in_features"):
        search.run(_spec(levels={**LEVELS, "group_sizes": [48]}), ctx)
    assert not (tmp_path / "derived").exists()  # checked before anything was built

"""The calibration room: one block-sequential loop (used by quantize and the level database), plain-argument
layer plans, and the one seeded permutation helper behind training batches and RL prompt order."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs.quantize import LayerOverride, ModuleSelection
from bitsmith.workers import calibration, rl
from bitsmith.workers.data.batches import batch_indices, permuted_stream, seeded_permutation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return list(torch.randint(0, 64, (4, 16), generator=gen).split(2))


def test_sequential_blocks_feeds_each_block_the_dense_models_hidden_states(tiny_llama) -> None:
    batches = _batches()
    with torch.no_grad():
        expected = [tiny_llama(input_ids=b, output_hidden_states=True).hidden_states for b in batches]
    seen = []
    for k, block, calls in calibration.sequential_blocks(tiny_llama, calibration.architecture_layout(tiny_llama),
                                                         batches, torch.device("cpu")):
        assert block is tiny_llama.model.layers[k] and len(calls) == len(batches)
        for (hidden, _, _), states in zip(calls, expected):
            torch.testing.assert_close(hidden, states[k], rtol=1e-5, atol=1e-6)
        seen.append(k)
    assert seen == [0, 1, 2]


def test_the_next_blocks_inputs_come_from_the_block_as_the_caller_left_it(tiny_llama) -> None:
    import copy

    model = copy.deepcopy(tiny_llama)
    layout = calibration.architecture_layout(model)
    loop = calibration.sequential_blocks(model, layout, _batches(), torch.device("cpu"))
    _, block0, calls0 = next(loop)
    with torch.no_grad():
        block0.mlp.down_proj.weight.mul_(3.0)  # what a quantizer does in place
        wanted = [calibration.block_output(block0(h, *a, **kw)) for h, a, kw in calls0]
    _, _, calls1 = next(loop)
    for (hidden, _, _), w in zip(calls1, wanted):
        assert torch.equal(hidden, w)
    loop.close()


def test_no_calibration_batches_means_blocks_without_inputs(tiny_llama) -> None:
    blocks = list(calibration.sequential_blocks(tiny_llama, calibration.architecture_layout(tiny_llama), [],
                                                torch.device("cpu")))
    assert [(k, calls) for k, _, calls in blocks] == [(0, []), (1, []), (2, [])]


def test_plan_layers_takes_plain_arguments(tiny_llama) -> None:
    layout = calibration.architecture_layout(tiny_llama)
    plans = calibration.plan_layers(tiny_llama, layout, bits=4, group_size=16,
                                    modules=ModuleSelection(include=("mlp",), exclude=("gate",)),
                                    overrides={r"model\.layers\.0\.mlp\.up_proj": LayerOverride(bits=8, group_size=-1)})
    assert sorted(plans) == [f"model.layers.{k}.mlp.{n}" for k in range(3) for n in ("down_proj", "up_proj")]
    up0 = plans["model.layers.0.mlp.up_proj"]
    assert (up0.bits, up0.group_size, up0.block) == (8, 32, 0)
    assert (plans["model.layers.2.mlp.down_proj"].bits, plans["model.layers.2.mlp.down_proj"].group_size) == (4, 16)
    assert set(calibration.block_layers(tiny_llama, plans, 1)) == {"model.layers.1.mlp.down_proj",
                                                                  "model.layers.1.mlp.up_proj"}
    with pytest.raises(SpecError, match=r"overrides\.nope: matches no linear layer"):
        calibration.plan_layers(tiny_llama, layout, bits=4, group_size=16, modules=ModuleSelection(),
                                overrides={"nope": LayerOverride(bits=8)})


def _calls_in(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_quantize_and_the_level_database_share_the_one_sequential_loop() -> None:
    users = {p.relative_to(ROOT).as_posix() for p in (ROOT / "workers").rglob("*.py")
             if "sequential_blocks" in _calls_in(p)}
    assert users == {"workers/quantize.py", "workers/allocation/levels.py", "workers/allocation/uniform.py"}
    capturers = {p.relative_to(ROOT).as_posix() for p in (ROOT / "workers").rglob("*.py")
                 if "capture_block_inputs" in _calls_in(p)}
    assert capturers == {"workers/calibration.py"}


def test_search_builds_no_quantize_spec() -> None:
    source = (ROOT / "workers" / "search.py").read_text()
    assert "QuantizeSpec" not in source


def test_one_seeded_permutation_helper_behind_training_batches_and_prompt_order() -> None:
    n, seed = 7, 11
    # training: epoch e is randperm(n) under seed * 1_000_003 + e, read in steps of batch_size
    stream = [int(i) for e in range(3) for i in torch.randperm(n, generator=torch.Generator().manual_seed(
        seed * 1_000_003 + e))]
    assert [i for step in range(5) for i in batch_indices(step, 4, n, seed)] == stream[:20]
    # RL: epoch e is randperm(n) under mix_seed(seed, "epoch", e), read from a cursor
    stream = [int(i) for e in range(3) for i in torch.randperm(n, generator=torch.Generator().manual_seed(
        rl.mix_seed(seed, "epoch", e)))]
    assert rl.prompt_order(5, 12, n, seed) == stream[5:17]
    assert permuted_stream(0, n, n, lambda e: 3) == seeded_permutation(n, 3).tolist()
    assert sorted(seeded_permutation(n, 3).tolist()) == list(range(n))

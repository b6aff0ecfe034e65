"""The `train` job: pretraining beats the unigram baseline, SFT raises accuracy, resume is bit-exact."""
from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from bitsmith.platform.context import local_context
from bitsmith.platform.digests import directory_manifest
from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.train import TrainSpec
from bitsmith.workers import train
from bitsmith.workers.data.datasets import read_split


def tiny_pretrain_spec(**overrides) -> TrainSpec:
    data = {"kind": "train", "inputs": {"corpus": "corpus"},
            "mode": {"type": "pretrain", "arch": {"layers": 1, "hidden_size": 64, "heads": 2, "max_seq_len": 64},
                     "tokenizer": {"vocab_size": 512}},
            "optim": {"lr": 4e-3, "warmup_steps": 10}, "steps": 120, "batch_size": 8, "seq_len": 64,
            "eval_every_steps": 40, "checkpoint_every_steps": 1000, "eval_batches": 4, "compute": {"threads": 1},
            "log_every_steps": 10}
    return TrainSpec.model_validate({**data, **overrides})


def test_pretrain_loss_falls_and_beats_unigram_baseline(tmp_path, pydoc_corpus):
    ctx, rec = local_context(tmp_path, {"corpus": pydoc_corpus})
    out = train.run(tiny_pretrain_spec(), ctx)
    losses = rec.metric("train/loss")
    assert losses[-1] < losses[0] - 1.0
    evals = rec.metric("eval/loss")
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert out.metrics["eval/ppl"] < 0.5 * out.metrics["unigram_ppl"]
    assert out.metrics["eval/ppl"] == pytest.approx(math.exp(evals[-1]))
    assert {k for k, _, _ in rec.metrics} >= {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                                              "eval/loss", "eval/ppl"}
    assert {name: a.kind for name, a in out.artifacts.items()} == {"model": "model", "curve": "plot",
                                                                   "report": "report"}
    assert out.artifacts["curve"].path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.artifacts["report"].path.read_text())
    assert report["metrics"]["unigram_ppl"] == out.metrics["unigram_ppl"]
    meta = json.loads((out.artifacts["model"].path / "artifact.json").read_text())
    assert meta["kind"] == "model" and meta["trained_steps"] == 120 and meta["tokenizer_vocab"] == 512
    assert meta["parameters"] == out.metrics["parameters"]


def test_spec_rejects_inconsistent_inputs_and_sizes():
    with pytest.raises(ValidationError, match="inputs.corpus is required"):
        TrainSpec.model_validate({"kind": "train"})
    with pytest.raises(ValidationError, match="inputs.data and inputs.model are required"):
        TrainSpec.model_validate({"kind": "train", "mode": {"type": "sft"}, "inputs": {"data": "d"}})
    with pytest.raises(ValidationError, match="exceeds mode.arch.max_seq_len"):
        tiny_pretrain_spec(seq_len=128)


def test_bf16_autocast_trains_and_wrong_dataset_format_is_refused(tmp_path, pydoc_corpus, arithmetic_data):
    ctx, rec = local_context(tmp_path / "bf16", {"corpus": pydoc_corpus})
    out = train.run(tiny_pretrain_spec(compute={"threads": 1, "dtype": "bf16"}, steps=30, eval_every_steps=30), ctx)
    losses = rec.metric("train/loss")
    assert math.isfinite(out.metrics["eval/loss"]) and losses[-1] < losses[0]
    ctx, _ = local_context(tmp_path / "wrong", {"corpus": arithmetic_data})
    with pytest.raises(DataError, match="has format 'prompts'; expected 'text'"):
        train.run(tiny_pretrain_spec(), ctx)


def test_trained_model_loads_with_plain_transformers_and_generates(trained_lm, trained_lm_report):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = trained_lm_report["metrics"]
    assert metrics["eval/ppl"] < 0.25 * metrics["unigram_ppl"]
    model = AutoModelForCausalLM.from_pretrained(trained_lm)
    tok = AutoTokenizer.from_pretrained(trained_lm)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"]
    inputs = tok("The return statement", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith("The return statement") and len(text) > len("The return statement")


def exact_match(model, tok, records) -> float:
    model.eval()
    hits = 0
    for r in records:
        inputs = tok(r["prompt"], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        completion = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        hits += completion.strip() == r["answer"]
    return hits / len(records)


def test_sft_raises_held_out_exact_match(tmp_path, trained_lm, arithmetic_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = TrainSpec.model_validate({
        "kind": "train", "inputs": {"data": "arith", "model": "lm"}, "mode": {"type": "sft"},
        "optim": {"lr": 3e-3, "warmup_steps": 20}, "steps": 600, "batch_size": 16,
        "seq_len": 32, "eval_every_steps": 100, "checkpoint_every_steps": 1000, "compute": {"threads": 1}})
    ctx, rec = local_context(tmp_path, {"data": arithmetic_data, "model": trained_lm})
    out = train.run(spec, ctx)
    held_out = read_split(arithmetic_data, "test")
    tok = AutoTokenizer.from_pretrained(trained_lm)
    before = exact_match(AutoModelForCausalLM.from_pretrained(trained_lm), tok, held_out)
    after = exact_match(AutoModelForCausalLM.from_pretrained(out.artifacts["model"].path),
                        AutoTokenizer.from_pretrained(out.artifacts["model"].path), held_out)
    assert after >= before + 0.1, (before, after)
    assert rec.metric("eval/loss")[-1] < rec.metric("eval/loss")[0]
    meta = json.loads((out.artifacts["model"].path / "artifact.json").read_text())
    assert meta["train_mode"] == "sft" and meta["base_model"] == ctx.input("model").digest


class SimulatedCrash(Exception):
    pass


def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path, pydoc_corpus):
    from safetensors.torch import load_file

    spec = tiny_pretrain_spec(steps=40, checkpoint_every_steps=15, eval_every_steps=20)
    ctx, rec = local_context(tmp_path / "full", {"corpus": pydoc_corpus})
    full = train.run(spec, ctx)
    assert [step for _, step, _ in rec.checkpoints] == [15, 30]

    crashed, crash_rec = local_context(tmp_path / "crash", {"corpus": pydoc_corpus})

    def crash_after_first_checkpoint(path, step, meta):
        crash_rec.checkpoints.append((path, step, meta))
        raise SimulatedCrash(step)

    crashed.checkpoint_sink = crash_after_first_checkpoint
    with pytest.raises(SimulatedCrash):
        train.run(spec, crashed)
    (checkpoint, step, _), = crash_rec.checkpoints
    assert step == 15

    resumed_ctx, resumed_rec = local_context(tmp_path / "resumed", {"corpus": pydoc_corpus},
                                             resume_checkpoint=checkpoint, resume_step=step)
    resumed = train.run(spec, resumed_ctx)
    a = load_file(full.artifacts["model"].path / "model.safetensors")
    b = load_file(resumed.artifacts["model"].path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert directory_manifest(full.artifacts["model"].path) == directory_manifest(resumed.artifacts["model"].path)
    assert resumed.metrics["eval/loss"] == full.metrics["eval/loss"]
    assert [s for _, s, _ in resumed_rec.checkpoints] == [30]
    assert min(s for k, s, _ in resumed_rec.metrics if k == "train/loss") > step

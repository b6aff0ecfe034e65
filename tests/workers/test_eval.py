"""Native evaluators on a small trained LM: perplexities, KL, multiple choice, generation, and the eval job."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from bitsmith.platform.context import local_context
from bitsmith.platform.digests import digest_path
from bitsmith.platform.errors import DataError
from bitsmith.platform.specs import parse_spec
from bitsmith.workers.evaluators.choice import choice_loglikelihoods, read_choice_file, score_choices
from bitsmith.workers.evaluators.generation import generate_samples
from bitsmith.workers.evaluators.kl import (compute_reference_logits, kl_to_reference, load_reference_logits,
                                            save_reference_logits)
from bitsmith.workers.evaluators.perplexity import (chunk_tokens, document_loglikelihoods, rolling_windows,
                                                    token_perplexity, tokenize_joined, word_byte_perplexity)
from bitsmith.workers.models import load_model_and_tokenizer

MC_FILE = Path(__file__).resolve().parents[1] / "data" / "python_mc.jsonl"
MC_REF = f"sha256:{digest_path(MC_FILE)}"  # how a submitted spec names the imported task file
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lm(trained_lm: Path):
    return load_model_and_tokenizer(trained_lm)


@pytest.fixture(scope="module")
def random_lm(trained_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init model with the trained model's architecture and tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("random_lm")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(trained_lm)).save_pretrained(out)
    for file in trained_lm.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, out / file.name)
    return out


@pytest.fixture(scope="module")
def test_texts(pydoc_corpus: Path) -> list[str]:
    from bitsmith.workers.data.datasets import read_texts

    return read_texts(pydoc_corpus, "test")


def perturbed_copy(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    import copy

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return other


# -- token perplexity -------------------------------------------------------------------------------
def test_chunk_tokens_drops_the_tail_and_caps_chunks() -> None:
    ids = torch.arange(10)
    assert chunk_tokens(ids, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert chunk_tokens(ids, 3, max_chunks=2).shape == (2, 3)
    with pytest.raises(DataError, match="no chunk"):
        chunk_tokens(ids, 11)


def test_token_ppl_equals_the_models_own_loss(lm, test_texts) -> None:
    model, tok = lm
    chunks = chunk_tokens(tokenize_joined(tok, test_texts), 64, max_chunks=6)
    with torch.no_grad():
        losses = [model(input_ids=c[None], labels=c[None]).loss.item() for c in chunks]
    assert token_perplexity(model, chunks, batch_size=4) == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)


def test_sliced_head_scoring_equals_a_full_forward(lm, monkeypatch) -> None:
    from bitsmith.workers.evaluators import loglik

    monkeypatch.setattr(loglik, "HEAD_ROWS", 7)  # several slices
    model, _ = lm
    ids = torch.randint(3, model.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    targets = torch.full_like(ids, -100)
    targets[:, 10:-1] = ids[:, 11:]
    targets[1, 20:] = -100
    with torch.inference_mode():
        fast = loglik.target_logprobs(model, ids, targets, plain_head=True)
        full = loglik.target_logprobs(model, ids, targets, plain_head=False)
    assert torch.allclose(fast, full, rtol=1e-5, atol=1e-5) and (fast[targets == -100] == 0).all()


def test_token_ppl_of_trained_lm_far_below_random_init(trained_lm, random_lm, pydoc_corpus, tmp_path,
                                                       trained_lm_report) -> None:
    values = {}
    for name, model_dir in [("trained", trained_lm), ("random", random_lm)]:
        spec = parse_spec({"kind": "eval", "inputs": {"model": "m", "data": "d"}, "compute": {"device": "cpu"},
                           "tasks": [{"type": "token_ppl", "seq_len": 128, "max_chunks": 8}]})
        ctx, _ = local_context(tmp_path / name, {"model": model_dir, "data": pydoc_corpus})
        from bitsmith.workers import eval as eval_worker

        values[name] = eval_worker.run(spec, ctx).metrics["test/token_ppl"]
    assert values["trained"] < values["random"] / 5
    assert values["trained"] < trained_lm_report["metrics"]["unigram_ppl"]


# -- word perplexity (rolling windows) -----------------------------------------------------------
def test_rolling_windows_score_every_token_once_with_full_context() -> None:
    tokens = list(range(100, 123))  # 23 tokens
    windows = rolling_windows(tokens, prefix_token=1, max_len=8)
    scored = [t for seq, n in windows for t in seq[len(seq) - n:]]
    assert scored == tokens
    assert windows[0][0][0] == 1 and windows[0][1] == 8
    assert all(len(seq) <= 9 for seq, _ in windows)
    last_seq, last_n = windows[-1]
    assert last_n == 23 - 16 and len(last_seq) == 9  # the last window overlaps for full context
    assert rolling_windows([], 1, 8) == []


def test_word_ppl_is_independent_of_window_and_batch_layout(lm, test_texts) -> None:
    model, tok = lm
    docs = test_texts[:4]
    one_window, _ = document_loglikelihoods(model, tok, [d[:300] for d in docs], max_len=128, batch_size=1)
    with torch.no_grad():  # a single window is the plain sum of log-probs after the prefix token
        for doc, ll in zip([d[:300] for d in docs], one_window):
            ids = torch.tensor([[tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
                                + tok(doc, add_special_tokens=False)["input_ids"]])
            if ids.shape[1] <= 129:
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
                assert ll == pytest.approx(logp.gather(1, ids[0, 1:, None]).sum().item(), rel=1e-5)
    a, _ = document_loglikelihoods(model, tok, docs, max_len=64, batch_size=1)
    b, _ = document_loglikelihoods(model, tok, docs, max_len=64, batch_size=8)
    assert a == pytest.approx(b, rel=1e-5)
    values = word_byte_perplexity(docs, a)
    assert values["byte_ppl"] == pytest.approx(2 ** values["bits_per_byte"])
    assert values["word_ppl"] > values["byte_ppl"] > 1


# -- KL ---------------------------------------------------------------------------------------------
def test_kl_to_self_is_zero_and_to_a_perturbed_copy_positive(lm, test_texts, tmp_path) -> None:
    model, tok = lm
    chunks = chunk_tokens(tokenize_joined(tok, test_texts), 64, max_chunks=4)
    full = compute_reference_logits(model, chunks, batch_size=2)
    top = compute_reference_logits(model, chunks, top_k=16, batch_size=2)
    assert kl_to_reference(model, chunks, full, batch_size=4) == pytest.approx(0, abs=1e-6)
    assert kl_to_reference(model, chunks, top, batch_size=4) == pytest.approx(0, abs=1e-6)
    other = perturbed_copy(model)
    kl_full = kl_to_reference(other, chunks, full)
    kl_top = kl_to_reference(other, chunks, top)
    assert kl_full > 1e-3
    assert 0 < kl_top <= kl_full + 1e-6  # top-k + tail bucket is a lower bound
    # the cached artifact (safetensors) scores the same
    save_reference_logits(tmp_path / "ref", full, {"seq_len": 64})
    cached = load_reference_logits(tmp_path / "ref")
    assert kl_to_reference(other, None, cached) == pytest.approx(kl_full, rel=1e-6)
    with pytest.raises(DataError, match="differ"):
        kl_to_reference(other, chunks[:2], cached)


# -- multiple choice --------------------------------------------------------------------------------
def test_choice_scores_match_a_direct_forward_per_choice(lm) -> None:
    model, tok = lm
    records = read_choice_file(MC_FILE)
    assert len(records) == 20
    lls = choice_loglikelihoods(model, tok, records[:5], max_len=128, batch_size=3)
    with torch.no_grad():
        for record, scores in zip(records[:5], lls):
            for choice, score in zip(record["choices"], scores):
                ctx_ids = tok(record["question"], add_special_tokens=False)["input_ids"]
                whole = tok(record["question"] + " " + choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([whole])
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
                expected = logp.gather(1, ids[0, 1:, None])[len(ctx_ids) - 1:].sum().item()
                assert score == pytest.approx(expected, rel=1e-5, abs=1e-5)
    metrics, samples = score_choices(records[:5], lls)
    assert metrics["acc"] == sum(s["pred"] == s["label"] for s in samples) / 5


@pytest.mark.parametrize("lines, message", [
    (['{"question": "q", "choices": ["a", "b"], "label": 0}', "", '{"question": "q", "choices": ['],
     ":3: not valid JSON"),
    (['{"question": "q", "label": 0}'], ":1: missing field 'choices'"),
    (['{"choices": ["a", "b"], "label": 0}'], "missing field 'question'"),
    (['{"question": "q", "choices": ["a", "b"]}'], "missing field 'label'"),
    (['{"question": "q", "choices": ["a", "b"], "label": 2}'], "field 'label' is 2"),
])
def test_malformed_choice_files_name_line_and_field(tmp_path, lines, message) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_choice_file(path)


# -- generation -------------------------------------------------------------------------------------
def test_batched_greedy_generation_equals_one_by_one(lm) -> None:
    model, tok = lm
    prompts = ["The for statement", "A", "Exceptions are raised when the interpreter"]
    batched = generate_samples(model, tok, prompts, max_new_tokens=8, batch_size=3)
    single = [generate_samples(model, tok, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_sampling_is_seeded(lm) -> None:
    model, tok = lm
    a = generate_samples(model, tok, ["The for statement"], n_samples=4, temperature=1.0, max_new_tokens=6, seed=3)
    b = generate_samples(model, tok, ["The for statement"], n_samples=4, temperature=1.0, max_new_tokens=6, seed=3)
    assert a == b and len(a[0]) == 4 and len(set(a[0])) > 1


# -- the whole job ----------------------------------------------------------------------------------
def test_eval_job_writes_metrics_report_samples_and_reusable_logits(trained_lm, pydoc_corpus, arithmetic_data,
                                                                    tmp_path) -> None:
    from bitsmith.workers import eval as eval_worker

    spec_data = {"kind": "eval", "compute": {"device": "cpu"}, "batch_size": 4, "deterministic": True, "seed": 1,
                 "inputs": {"model": "m", "data": ["c", "a"], "reference": "r"},
                 "tasks": [{"type": "token_ppl", "seq_len": 64, "max_chunks": 4},
                           {"type": "word_ppl", "max_docs": 3},
                           {"type": "kl", "split": "test", "seq_len": 64, "max_chunks": 2, "top_k": 8},
                           {"type": "choice", "file": MC_REF, "limit": 6},  # a verified input, as on submit
                           {"type": "generation", "data_index": 1, "limit": 4, "n_samples": 4, "k": [1, 4],
                            "temperature": 1.0, "max_new_tokens": 6}]}
    model_copy = tmp_path / "perturbed"
    model, tok = load_model_and_tokenizer(trained_lm)
    perturbed_copy(model, 0.02).save_pretrained(model_copy)
    tok.save_pretrained(model_copy)
    inputs = {"model": model_copy, "data.0": pydoc_corpus, "data.1": arithmetic_data, "reference": trained_lm,
              "task_file.3": MC_FILE}
    ctx, recorder = local_context(tmp_path / "run", inputs, seed=1)
    out = eval_worker.run(parse_spec(spec_data), ctx)
    ctx.flush_metrics()

    for key in ["test/token_ppl", "test/word_ppl", "test/byte_ppl", "kl", "mc/acc", "mc/acc_norm",
                "gen/exact_match", "gen/pass@1", "gen/pass@4", "gen/maj@4", "gen/extraction_failure_rate"]:
        assert key in out.metrics and math.isfinite(out.metrics[key]), key
        assert recorder.metric(key) == [out.metrics[key]]
    assert out.metrics["kl"] > 0
    assert out.metrics["gen/pass@4"] >= out.metrics["gen/pass@1"]
    assert {a.kind for a in out.artifacts.values()} == {"report", "samples", "logits"}

    report = json.loads(out.artifacts["report"].path.read_text())
    assert report["settings"]["batch_size"] == 4 and report["settings"]["dtype"] == "fp32"
    packages = report["environment"]["packages"]  # the platform's one environment capture
    assert packages["torch"] == torch.__version__ and "transformers" in packages
    assert not any("token_ppl" in k for t in report["tasks"] if t["task"]["type"] == "word_ppl" for k in t)
    samples = [json.loads(line) for line in out.artifacts["samples"].path.read_text().splitlines()]
    assert sum(s["task"] == "mc" for s in samples) == 6
    gen = [s for s in samples if s["task"] == "gen"]
    assert len(gen) == 4 and all(len(s["outputs"]) == 4 and len(s["correct"]) == 4 for s in gen)

    # a second eval scores against the cached reference logits instead of the reference model
    again = {**spec_data, "tasks": [spec_data["tasks"][2]]}
    ctx2, _ = local_context(tmp_path / "run2", {**inputs, "reference": out.artifacts["reference_logits"].path}, seed=1)
    out2 = eval_worker.run(parse_spec(again), ctx2)
    assert out2.metrics["kl"] == pytest.approx(out.metrics["kl"], rel=1e-6)
    assert "reference_logits" not in out2.artifacts


def test_quantized_model_loads_through_quant_format_and_scores_close(trained_lm, pydoc_corpus, tmp_path) -> None:
    quant_format = pytest.importorskip("bitsmith.workers.quant_format")
    from bitsmith.platform.specs.quantize import QuantizeSpec
    from bitsmith.workers import eval as eval_worker
    from bitsmith.workers import quantize

    qspec = QuantizeSpec.model_validate({"kind": "quantize", "inputs": {"model": "m"}, "method": {"type": "rtn"},
                                         "bits": 4, "group_size": 32, "compute": {"device": "cpu"}})
    qctx, _ = local_context(tmp_path / "q", {"model": trained_lm})
    quantized = quantize.run(qspec, qctx).artifacts["model"].path
    assert quant_format.is_bitsmith_quantized(quantized)
    model, _ = load_model_and_tokenizer(quantized)
    assert any(type(m).__name__ == "QuantizedLinear" for m in model.modules())

    spec = parse_spec({"kind": "eval", "compute": {"device": "cpu"},
                       "inputs": {"model": "m", "data": "d", "reference": "r"},
                       "tasks": [{"type": "token_ppl", "seq_len": 128, "max_chunks": 8},
                                 {"type": "kl", "split": "test", "seq_len": 128, "max_chunks": 4}]})
    ppl = {}
    for name, model_dir in [("fp", trained_lm), ("q4", quantized)]:
        ctx, _ = local_context(tmp_path / name, {"model": model_dir, "data": pydoc_corpus, "reference": trained_lm})
        ppl[name] = eval_worker.run(spec, ctx).metrics
    assert ppl["fp"]["kl"] == pytest.approx(0, abs=1e-6)
    assert 0 < ppl["q4"]["kl"] < 0.5
    assert ppl["fp"]["test/token_ppl"] < ppl["q4"]["test/token_ppl"] < 1.5 * ppl["fp"]["test/token_ppl"]


@pytest.mark.parametrize("task, message", [
    ({"type": "token_ppl", "seq_len": 10_000_000}, "fewer than one chunk"),
    ({"type": "generation"}, "read a 'prompts' dataset"),
])
def test_unusable_data_raises_data_error_naming_the_dataset(trained_lm, pydoc_corpus, tmp_path, task, message) -> None:
    from bitsmith.workers import eval as eval_worker

    spec = parse_spec({"kind": "eval", "compute": {"device": "cpu"}, "inputs": {"model": "m", "data": "d"},
                       "tasks": [task]})
    ctx, _ = local_context(tmp_path, {"model": trained_lm, "data": pydoc_corpus})
    with pytest.raises(DataError, match=message) as info:
        eval_worker.run(spec, ctx)
    assert str(pydoc_corpus) in str(info.value)

"""The native evaluators agree with lm-evaluation-harness (backend lm_eval) on the same model and tasks."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bitsmith.platform.context import local_context
from bitsmith.platform.digests import digest_path
from bitsmith.platform.specs import parse_spec

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                reason="lm_eval not installed (optional: pip install lm_eval==0.4.13)")

MC_FILE = Path(__file__).resolve().parents[1] / "data" / "python_mc.jsonl"
MC_REF = f"sha256:{digest_path(MC_FILE)}"  # how a submitted spec names the imported task file


@pytest.fixture(scope="module")
def ppl_docs(pydoc_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test documents, half with a trailing newline (a word to lm-eval), several longer than one window."""
    from bitsmith.workers.data.datasets import read_texts, write_dataset

    texts = read_texts(pydoc_corpus, "test")[:12]
    texts = [t.rstrip("\n") + ("\n" if i % 2 else "") for i, t in enumerate(texts)]
    out = tmp_path_factory.mktemp("ppl_docs") / "dataset"
    return write_dataset(out, "text", {"test": [{"text": t} for t in texts]}, source={"test": "lm_eval agreement"})


def test_native_matches_lm_eval_word_ppl_and_choice_accuracy(trained_lm, ppl_docs, tmp_path) -> None:
    from bitsmith.workers import eval as eval_worker

    metrics, reports = {}, {}
    for backend in ("native", "lm_eval"):
        spec = parse_spec({"kind": "eval", "backend": backend, "compute": {"device": "cpu"}, "batch_size": 4,
                           "deterministic": True, "inputs": {"model": "m", "data": "d"},
                           "tasks": [{"type": "word_ppl", "seq_len": 64},
                                     {"type": "choice", "file": MC_REF}]})
        ctx, _ = local_context(tmp_path / backend, {"model": trained_lm, "data": ppl_docs, "task_file.1": MC_FILE})
        out = eval_worker.run(spec, ctx)
        metrics[backend] = out.metrics
        reports[backend] = json.loads(out.artifacts["report"].path.read_text())

    native, harness = metrics["native"], metrics["lm_eval"]
    assert set(native) == set(harness)
    for key in ("test/word_ppl", "test/byte_ppl", "test/bits_per_byte"):
        assert native[key] == pytest.approx(harness[key], rel=1e-5), key
    assert native["mc/acc"] == harness["mc/acc"]
    assert native["mc/acc_norm"] == harness["mc/acc_norm"]

    # the windows really rolled: several documents need more than one window of 64 tokens
    word_task = reports["native"]["tasks"][0]
    assert word_task["tokens_scored"] > 64 * word_task["documents"] / 2
    lm_task = reports["lm_eval"]["tasks"][0]
    assert lm_task["backend"] == "lm_eval" and lm_task["task_version"] is not None and lm_task["task_hash"]
    assert reports["lm_eval"]["environment"]["packages"]["lm_eval"] == "0.4.13"


def test_lm_eval_backend_runs_a_quantized_model_in_memory(trained_lm, pydoc_corpus, tmp_path) -> None:
    pytest.importorskip("bitsmith.workers.quant_format")
    from bitsmith.platform.specs.quantize import QuantizeSpec
    from bitsmith.workers import eval as eval_worker
    from bitsmith.workers import quantize

    qctx, _ = local_context(tmp_path / "q", {"model": trained_lm})
    qspec = QuantizeSpec.model_validate({"kind": "quantize", "inputs": {"model": "m"}, "method": {"type": "rtn"},
                                         "bits": 3, "group_size": 32, "compute": {"device": "cpu"}})
    quantized = quantize.run(qspec, qctx).artifacts["model"].path
    metrics = {}
    for backend in ("native", "lm_eval"):
        spec = parse_spec({"kind": "eval", "backend": backend, "compute": {"device": "cpu"}, "inputs": {"model": "m"},
                           "tasks": [{"type": "choice", "file": MC_REF}]})
        ctx, _ = local_context(tmp_path / backend, {"model": quantized, "task_file.0": MC_FILE})
        metrics[backend] = eval_worker.run(spec, ctx).metrics
    assert metrics["native"] == metrics["lm_eval"]

"""Bad user input met deep in a worker is a BitsmithError naming what was wrong, never a bare ValueError."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bitsmith.platform.errors import DataError
from bitsmith.workers import quant_format
from bitsmith.workers.evaluators.loglik import score_sequences
from bitsmith.workers.evaluators.perplexity import prefix_token_id


def test_a_plain_model_directory_is_not_a_quantized_one(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(DataError, match=f"{tmp_path}: not a bitsmith-quantized model directory"):
        quant_format.quantization_config(tmp_path)


def test_a_newer_format_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    qc = {"quant_method": quant_format.QUANT_METHOD, "format_version": quant_format.FORMAT_VERSION + 1}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
    with pytest.raises(DataError, match="is newer than this bitsmith reads .*upgrade bitsmith"):
        quant_format.quantization_config(tmp_path)


def test_a_tokenizer_without_bos_or_eos_is_a_data_error() -> None:
    with pytest.raises(DataError, match="neither a BOS nor an EOS token"):
        prefix_token_id(SimpleNamespace(bos_token_id=None, eos_token_id=None))


def test_a_sequence_without_context_is_a_data_error() -> None:
    import torch

    model = torch.nn.Linear(1, 1)
    with pytest.raises(DataError, match="sequence 0: n_scored=1 with 1 tokens"):
        score_sequences(model, [([5], 1)], batch_size=1, pad_id=0)

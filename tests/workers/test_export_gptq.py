"""The GPTQ-layout export read back by a reader of the standard layout written here from AutoGPTQ's packing
(not from bitsmith's `packing` module), compared with bitsmith's dequantized weights bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from bitsmith.platform.errors import SpecError
from bitsmith.workers import quant_format

from test_export import MIXED, exported, quantized, tiny_llama  # noqa: F401  (tiny_llama: a fixture)


def _unpack_rows(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """AutoGPTQ's layout: int32 [n*bits/32, cols] -> codes [n, cols] (2/4/8 bits: 32/bits codes per word, lowest
    bits first; 3 bits: 32 codes in 3 words, codes 10 and 21 split over word boundaries)."""
    w = packed.view(np.uint32).astype(np.uint64)
    if bits in (2, 4, 8):
        per = 32 // bits
        shifts = (np.arange(per, dtype=np.uint64) * bits)[None, :, None]
        return ((w[:, None, :] >> shifts) & ((1 << bits) - 1)).reshape(-1, w.shape[1])[:n].astype(np.int64)
    assert bits == 3
    out = []
    for k in range(0, w.shape[0], 3):
        w0, w1, w2 = w[k], w[k + 1], w[k + 2]
        out += [(w0 >> np.uint64(3 * j)) & 7 for j in range(10)]
        out.append(((w0 >> np.uint64(30)) | ((w1 & 1) << np.uint64(2))) & 7)
        out += [(w1 >> np.uint64(3 * j + 1)) & 7 for j in range(10)]
        out.append(((w1 >> np.uint64(31)) | ((w2 & 3) << np.uint64(1))) & 7)
        out += [(w2 >> np.uint64(3 * j + 2)) & 7 for j in range(10)]
    return np.stack(out)[:n].astype(np.int64)


def read_gptq(export_dir: Path) -> dict[str, torch.Tensor]:
    """{module: dense fp32 [out, in]} from qweight/qzeros/scales/g_idx and quantize_config.json (with `dynamic`)."""
    import re

    qcfg = json.loads((export_dir / "quantize_config.json").read_text())
    state = load_file(str(export_dir / "model.safetensors"))
    offset = 1 if qcfg["checkpoint_format"] == "gptq" else 0
    weights = {}
    for key in [k for k in state if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        bits = qcfg["bits"]
        for pattern, override in qcfg["dynamic"].items():
            if pattern.startswith("+:") and re.match(pattern[2:], name):
                bits = override.get("bits", bits)
        scales = state[name + ".scales"].astype(np.float32)  # [n_groups, out]
        g_idx = state[name + ".g_idx"].astype(np.int64)  # [in]
        n_in, n_out = g_idx.shape[0], scales.shape[1]
        codes = _unpack_rows(state[key], bits, n_in)  # [in, out]
        zeros = _unpack_rows(state[name + ".qzeros"].T.copy(), bits, n_out).T + offset  # [n_groups, out]
        dense = scales[g_idx] * (codes - zeros[g_idx]).astype(np.float32)
        weights[name] = torch.from_numpy(np.ascontiguousarray(dense.T))
    return weights


def _ours(qdir: Path) -> dict[str, torch.Tensor]:
    model = quant_format.load_quantized_model(qdir)
    return {n: m.dequantized_weight(torch.float32) for n, m in model.named_modules() if hasattr(m, "qweight")}


@pytest.mark.parametrize("fields", [
    {"bits": 4, "group_size": 32, "symmetric": False, "overrides": {**MIXED, r".*mlp\.up_proj": {"bits": 8}}},
    {"bits": 3, "group_size": None, "symmetric": True},
])
def test_gptq_layout_reads_back_bit_for_bit(tiny_llama, tmp_path, fields):  # noqa: F811
    qdir = quantized(tiny_llama, tmp_path / "q", **fields)
    art = exported(qdir, tmp_path / "e", "gptq")
    theirs, ours = read_gptq(art.path), _ours(qdir)
    assert sorted(theirs) == sorted(ours)
    for name in ours:
        assert torch.equal(theirs[name], ours[name]), name
    qcfg = json.loads((art.path / "quantize_config.json").read_text())
    assert json.loads((art.path / "config.json").read_text())["quantization_config"] == qcfg
    if "overrides" in fields:
        assert qcfg["bits"] == 4 and qcfg["group_size"] == 32 and not qcfg["sym"]
        assert {v["bits"] for v in qcfg["dynamic"].values()} == {2, 3, 8}
        assert len(qcfg["dynamic"]) == 6  # 2 blocks x (down_proj, o_proj, up_proj)
    else:
        assert qcfg["group_size"] == -1 and qcfg["dynamic"] == {}


def test_gptq_act_order_g_idx_and_v2_zero_points(tiny_llama, tmp_path, pydoc_corpus):  # noqa: F811
    qdir = quantized(tiny_llama, tmp_path / "q", pydoc_corpus, bits=4, group_size=32,
                     method={"type": "gptq", "act_order": True})
    art = exported(qdir, tmp_path / "e", "gptq", checkpoint_format="gptq_v2")
    qcfg = json.loads((art.path / "quantize_config.json").read_text())
    assert qcfg["desc_act"] and qcfg["checkpoint_format"] == "gptq_v2"
    g_idx = load_file(str(art.path / "model.safetensors"))["model.layers.0.mlp.up_proj.g_idx"]
    assert not np.array_equal(g_idx, np.arange(g_idx.shape[0]) // 32)  # real act-order groups
    theirs, ours = read_gptq(art.path), _ours(qdir)
    for name in ours:
        assert torch.equal(theirs[name], ours[name]), name


def test_gptq_refuses_widths_its_kernels_do_not_read(tiny_llama, tmp_path):  # noqa: F811
    qdir = quantized(tiny_llama, tmp_path / "q", bits=5, group_size=32)
    with pytest.raises(SpecError, match="5-bit"):
        exported(qdir, tmp_path / "e", "gptq")

"""Dense bit packing of integer codes into int32 words, and bits-per-weight accounting.

Layout (the same as compressed-tensors' `pack_to_int32`): along the packed dimension, element i
occupies bits [i*bits, (i+1)*bits) of a little-endian bit stream of 32-bit words, so element i
starts in word (i*bits) // 32 at bit (i*bits) % 32 and may straddle two words (3, 5, 6 bits). No
padding between elements; the last word is zero-padded. A row of n codes takes ceil(n*bits/32) words.
"""
from __future__ import annotations

import torch
from torch import Tensor

WORD_BITS = 32
_MASK32 = (1 << 32) - 1


def packed_words(n: int, bits: int) -> int:
    """int32 words needed for n codes of `bits` bits."""
    return (n * bits + WORD_BITS - 1) // WORD_BITS


def _stream_positions(n: int, bits: int, device: torch.device) -> tuple[Tensor, Tensor]:
    start = torch.arange(n, device=device, dtype=torch.int64) * bits
    return start // WORD_BITS, start % WORD_BITS


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack unsigned codes [rows, n] (values in [0, 2**bits)) along the last dim -> int32 [rows, words]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits {bits} not supported for packing; expected 1..8")
    squeeze = codes.ndim == 1
    c = codes.reshape(1, -1) if squeeze else codes
    if c.ndim != 2:
        raise ValueError(f"codes must be 1-D or 2-D; got shape {tuple(codes.shape)}")
    c = c.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits: [{int(c.min())}, {int(c.max())}]")
    rows, n = c.shape
    n_words = packed_words(n, bits)
    word, offset = _stream_positions(n, bits, c.device)
    out = torch.zeros(rows, n_words + 1, dtype=torch.int64, device=c.device)
    # Elements occupy disjoint bits, so adding them is the same as OR-ing them in.
    out.index_add_(1, word, (c << offset) & _MASK32)
    spill = offset + bits > WORD_BITS
    if bool(spill.any()):
        out.index_add_(1, word[spill] + 1, c[:, spill] >> (WORD_BITS - offset[spill]))
    out = out[:, :n_words]
    out = torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)  # reinterpret as int32
    return out.reshape(-1) if squeeze else out


def unpack_codes(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of `pack_codes`: int32 [rows, words] -> int32 codes [rows, n]."""
    squeeze = packed.ndim == 1
    p = packed.reshape(1, -1) if squeeze else packed
    if p.dtype != torch.int32:
        raise ValueError(f"packed codes must be int32; got {p.dtype}")
    if p.shape[1] != packed_words(n, bits):
        raise ValueError(f"{p.shape[1]} words cannot hold exactly {n} codes of {bits} bits "
                         f"(expected {packed_words(n, bits)})")
    p = p.to(torch.int64) & _MASK32
    p = torch.nn.functional.pad(p, (0, 1))
    word, offset = _stream_positions(n, bits, p.device)
    lo = p.index_select(1, word) >> offset
    hi = p.index_select(1, word + 1) << (WORD_BITS - offset)
    codes = ((lo | hi) & ((1 << bits) - 1)).to(torch.int32)
    return codes.reshape(-1) if squeeze else codes


def tensor_bits(t: Tensor | None) -> int:
    """Bits a stored tensor takes (numel x element size)."""
    return 0 if t is None else t.numel() * t.element_size() * 8

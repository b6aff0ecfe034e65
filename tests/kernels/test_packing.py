"""Bit packing of codes into int32 words: exact round trips and the compressed-tensors layout."""
import importlib.util

import pytest
import torch

from bitsmith.kernels.packing import pack_codes, packed_words, unpack_codes
from bitsmith.kernels.quantizers import SUPPORTED_BITS


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 33), (2, 96), (7, 1000)])
def test_pack_unpack_round_trip(bits, shape):
    g = torch.Generator().manual_seed(bits * 1000 + shape[1])
    codes = torch.randint(0, 2 ** bits, shape, generator=g, dtype=torch.int32)
    codes[0, 0] = 2 ** bits - 1  # the top code sets the sign bit of some words
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (shape[0], packed_words(shape[1], bits)) == (shape[0], -(-shape[1] * bits // 32))
    assert torch.equal(unpack_codes(packed, bits, shape[1]), codes)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(torch.tensor([[0, 8]]), 3)


def test_layout_is_a_little_endian_bit_stream():
    # 3-bit codes 1..10 then 7: the 11th code starts at bit 30 and straddles two words
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 7]], dtype=torch.int32)
    packed = pack_codes(codes, 3)
    value = sum(int(c) << (3 * i) for i, c in enumerate(codes[0]))
    words = [(value >> (32 * k)) & 0xFFFFFFFF for k in range(2)]
    assert [w & 0xFFFFFFFF for w in packed[0].tolist()] == words


@pytest.mark.skipif(importlib.util.find_spec("compressed_tensors") is None,
                    reason="compressed-tensors not installed")
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_same_words_as_compressed_tensors(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (6, 70), generator=g, dtype=torch.int32)
    signed = (codes - 2 ** (bits - 1)).to(torch.int8)
    assert torch.equal(pack_codes(codes, bits), pack_to_int32(signed, bits, packed_dim=1))
    assert torch.equal(pack_codes(codes.T, bits).T, pack_to_int32(signed, bits, packed_dim=0))

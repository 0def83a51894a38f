import pytest
import torch

from lvq.packing import pack, packed_nbytes, unpack


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", [1, 7, 13, 1000, 1023])
def test_round_trip_every_width_and_odd_lengths(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 1 << bits, (n,), generator=g)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits)  # dense: no padding beyond the last byte
    assert torch.equal(unpack(packed, bits, (n,)), codes)


def test_round_trip_keeps_shape_and_extremes():
    codes = torch.tensor([[0, 7, 3], [7, 0, 1]])
    assert torch.equal(unpack(pack(codes, 3), 3, (2, 3)), codes)


def test_out_of_range_codes_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        pack(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match="out of range"):
        pack(torch.tensor([-1]), 3)


@pytest.mark.parametrize("bits", [0, 17])
def test_bad_width(bits):
    with pytest.raises(ValueError, match="1..16"):
        pack(torch.tensor([0]), bits)


def test_truncated_buffer_is_detected():
    packed = pack(torch.arange(10) % 4, 2)
    with pytest.raises(ValueError, match="truncated"):
        unpack(packed[:-1], 2, (10,))

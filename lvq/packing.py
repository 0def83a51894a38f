"""Dense bit-packing of unsigned integer codes.

A code tensor of any shape holding values in ``[0, 2**bits)`` is flattened (row-major), each value is
written as ``bits`` binary digits (least significant first) and the bit stream is stored eight bits
to a ``uint8`` byte. The shape is not stored in the buffer: callers keep it in their metadata.

    packed = pack(codes, bits)            # codes: int tensor [*shape] -> uint8 [ceil(numel*bits/8)]
    codes  = unpack(packed, bits, shape)  # -> int64 [*shape]

Widths 1..16 are supported; round trips are exact (tests/test_packing.py covers every width and
odd lengths).
"""
from __future__ import annotations

import math

import torch

MAX_BITS = 16


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"code width must be an integer in 1..{MAX_BITS} bits, got {bits!r}")


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes needed to store ``numel`` codes of ``bits`` bits."""
    return math.ceil(numel * bits / 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer ``codes`` (any shape) of width ``bits`` into a flat uint8 tensor."""
    _check_bits(bits)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise ValueError(
            f"codes out of range for {bits}-bit packing: min {int(flat.min())}, max {int(flat.max())}"
        )
    shifts = torch.arange(bits, device=flat.device, dtype=torch.int64)
    bitstream = ((flat.unsqueeze(1) >> shifts) & 1).reshape(-1)  # [numel * bits], LSB first
    pad = (-bitstream.numel()) % 8
    if pad:
        bitstream = torch.cat([bitstream, bitstream.new_zeros(pad)])
    weights = (1 << torch.arange(8, device=flat.device, dtype=torch.int64))
    return (bitstream.view(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, shape: tuple[int, ...] | list[int] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack`: returns an int64 tensor of ``shape``."""
    _check_bits(bits)
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    need = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        raise ValueError(
            f"packed buffer does not match {numel} codes of {bits} bits: expected uint8[{need}], "
            f"got {packed.dtype}[{packed.numel()}] (the file may be truncated or corrupt)"
        )
    shifts8 = torch.arange(8, device=packed.device, dtype=torch.int64)
    bitstream = ((packed.to(torch.int64).unsqueeze(1) >> shifts8) & 1).reshape(-1)[: numel * bits]
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int64)
    return (bitstream.view(numel, bits) * weights).sum(1).view(shape)

"""One token through an fp16 matrix kept in fp16: y = E x with fp32 arithmetic.

The unquantized embedding matrix of a run is stored in fp16 (lvq/runs.py); holding it in fp32
for the lm_head doubles its memory (113 MB against 57 MB on the bundled model, a third of a 2-bit
run's resident memory). ``half_matvec`` reads the fp16 bit patterns directly: each value is
widened exactly to fp32 in registers (``_common.half_f32``, vcvtph2ps on x86) and multiplied
by the fp32 input, so the result equals ``F.linear(x, E.float())`` up to the order of the fp32
sums. Measured here on one core (49152 x 576): 2.8 ms, against 7.7 ms for torch's fp32 matrix-
vector product on one core (2.6 ms on two): the matrix is half the bytes.
"""
from __future__ import annotations

import numpy as np

from ._common import half_f32, jit, prefetch_rows

AHEAD = 4  # rows read ahead of use


@jit()
def half_matvec(x, E, y):  # pragma: no cover - compiled
    """x: float32 [in]; E: uint16 [out, in] (fp16 bit patterns, C-contiguous); y: float32 [out]."""
    n = E.shape[1]
    prefetch_rows(E, 0, AHEAD, 0, n)
    for r in range(E.shape[0]):
        prefetch_rows(E, r + AHEAD, 1, 0, n)  # read ahead: this host barely prefetches by itself
        acc = np.float32(0.0)
        for j in range(n):
            acc += half_f32(E[r, j]) * x[j]
        y[r] = acc

"""The E8P encoder (lvq/e8p.py) compiled for the CPU: one pass over the 256 patterns per vector
and shift instead of [N, 256] score matrices, and the 16-bit code built in the same call.

Same search and same answers as ``lvq.e8p._nearest_signed`` (its docstring has the derivation):
per vector y and pattern a, base = ‖a‖² − 2⟨|y|, a⟩ with the signs of y; a pattern whose sign
parity is wrong costs 4·min_i |y_i|·a_i more (one coordinate flips). Ties go to the lower pattern
index, and a wrong-parity pattern replaces the best only when strictly better, as in the torch
search. Scores are float32 like the torch search's; they may differ from its BLAS products in the
last bit, which can only matter for two candidates within one rounding of each other.
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import jit


@jit()
def _best(ay, AT, asq, limit, want_flip, A, idx, d):
    """Over the patterns of one parity (Aᵀ [8, m] in index order): the lowest score below
    ``limit`` and its (pattern, flip coordinate or −1). Score: ‖a‖² − 2⟨|y|, a⟩, plus
    4·min_i |y_i| a_i when ``want_flip`` (the signs' parity is wrong for this set)."""
    m = AT.shape[1]
    for k in range(m):
        d[k] = asq[k]
    for i in range(8):  # SIMD over the patterns
        a = np.float32(2.0) * ay[i]
        for k in range(m):
            d[k] -= a * AT[i, k]
    best, at, flip = limit, -1, -1
    for k in range(m):
        if d[k] < best:
            if not want_flip:
                best, at = d[k], k
                continue
            row = A[idx[k]]
            mn = ay[0] * row[0]
            f = 0
            for i in range(1, 8):
                t = ay[i] * row[i]
                if t < mn:
                    mn, f = t, i
            score = d[k] + np.float32(4.0) * mn
            if score < best:
                best, at, flip = score, k, f
    return best, (-1 if at < 0 else idx[at]), flip


@jit()
def _encode(Y, shift, A, AT0, asq0, idx0, AT1, asq1, idx1, code):
    """code [N] int64: the E8P code (lvq/e8p.py) of the nearest codebook point to each row of
    Y [N, 8] float32: for both shifts t, the nearest signed pattern to y − t·¼ (right parity
    first, a wrong-parity pattern only when strictly better), then the shift whose distance is
    strictly smaller wins for "down" (t = −1), as in the torch search."""
    ay = np.empty(8, dtype=np.float32)
    z = np.empty(8, dtype=np.float32)
    d = np.empty(AT0.shape[1], dtype=np.float32)
    for r in range(Y.shape[0]):
        res_code = np.int64(0)
        res_dist = np.float32(np.inf)
        for down in range(2):
            t = shift if down == 0 else -shift
            neg = 0
            zz = np.float32(0.0)
            for i in range(8):
                z[i] = Y[r, i] - t
                zz += z[i] * z[i]
                ay[i] = abs(z[i])
                if z[i] < 0:
                    neg += 1
            if neg & 1 == 0:
                b, k, f = _best(ay, AT0, asq0, np.float32(np.inf), False, A, idx0, d)
                b, k2, f2 = _best(ay, AT1, asq1, b, True, A, idx1, d)
            else:
                b, k, f = _best(ay, AT1, asq1, np.float32(np.inf), False, A, idx1, d)
                b, k2, f2 = _best(ay, AT0, asq0, b, True, A, idx0, d)
            if k2 >= 0:
                k, f = k2, f2
            dist = b + zz
            if down == 0 or dist < res_dist:
                c = np.int64(down) << 15 | np.int64(k) << 7
                for i in range(7):
                    negative = z[i] < 0
                    if i == f:
                        negative = not negative
                    if negative:
                        c |= np.int64(1) << i
                res_code, res_dist = c, dist
        code[r] = res_code


def encode_codes(Y: torch.Tensor, shift: float, tables: tuple[np.ndarray, ...]) -> torch.Tensor:
    """16-bit E8P codes [N] int64 of the nearest codebook points to the rows of Y [N, 8] (CPU).
    tables: the patterns split by parity (``lvq.e8p.search_tables``)."""
    Yn = np.ascontiguousarray(Y.detach().to(torch.float32).numpy())
    code = np.empty(Yn.shape[0], dtype=np.int64)
    _encode(Yn, np.float32(shift), *tables, code)
    return torch.from_numpy(code)

"""The E8P nearest-point search (lvq/e8p.py) compiled for the CPU: one pass over the 256
patterns per vector instead of [N, 256] score matrices.

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
def _search(Y, A, asq, parity, best, flip_at, dist):
    """For each row of Y [N, 8] float32: best pattern index, the coordinate whose sign flips
    (−1: none) and the squared distance, into best [N] int64, flip_at [N] int64, dist [N] float32."""
    n_pat = A.shape[0]
    ay = np.empty(8, dtype=np.float32)
    for r in range(Y.shape[0]):
        neg = 0
        yy = np.float32(0.0)
        for i in range(8):
            v = Y[r, i]
            yy += v * v
            ay[i] = abs(v)
            if v < 0:
                neg += 1
        sp = neg & 1
        b_right = np.float32(np.inf)
        k_right = -1
        for k in range(n_pat):  # right parity first, as the torch search starts from it
            if (sp ^ parity[k]) == 0:
                dot = np.float32(0.0)
                for i in range(8):
                    dot += ay[i] * A[k, i]
                base = asq[k] - np.float32(2.0) * dot
                if base < b_right:
                    b_right = base
                    k_right = k
        b_best = b_right
        k_best = k_right
        f_best = -1
        for k in range(n_pat):
            if (sp ^ parity[k]) == 1:
                dot = np.float32(0.0)
                for i in range(8):
                    dot += ay[i] * A[k, i]
                base = asq[k] - np.float32(2.0) * dot
                if base < b_best:  # a lower bound of the corrected score
                    m = ay[0] * A[k, 0]
                    at = 0
                    for i in range(1, 8):
                        t = ay[i] * A[k, i]
                        if t < m:
                            m = t
                            at = i
                    score = base + np.float32(4.0) * m
                    if score < b_best:
                        b_best = score
                        k_best = k
                        f_best = at
        best[r] = k_best
        flip_at[r] = f_best
        dist[r] = b_best + yy


def nearest_signed(Y: torch.Tensor, A: torch.Tensor, pattern_parity: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pattern [N] int64, signs [N, 8] ±1, squared distance [N]) of the nearest point of
    {s ⊙ a : a ∈ A, Σ s⊙a even} to each row of Y [N, 8] (CPU, float32)."""
    Yn = np.ascontiguousarray(Y.detach().to(torch.float32).numpy())
    An = np.ascontiguousarray(A.to(torch.float32).numpy())
    n = Yn.shape[0]
    best = np.empty(n, dtype=np.int64)
    flip_at = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    _search(Yn, An, (An * An).sum(1), pattern_parity.to(torch.int64).numpy(), best, flip_at, dist)
    signs = torch.where(Y >= 0, 1.0, -1.0).to(Y.dtype)
    flip = torch.from_numpy(flip_at)
    rows = (flip >= 0).nonzero()[:, 0]
    signs[rows, flip[rows]] *= -1.0
    return torch.from_numpy(best), signs, torch.from_numpy(dist).to(Y.dtype)

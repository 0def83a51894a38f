"""Randomized Hadamard transforms for a few tokens at a time (incoherence processing at decode).

A rotated layer computes y = Uᵀ Q(W') (V x) (lvq/rotated_weight.py): two transforms per call
besides the product on the codes. ``lvq.rotation.hadamard_transform`` applies each Kronecker
factor as a batched torch matmul, ~20 small torch ops per transform: for one token that is
~50 µs of dispatch for ~10 k multiply-adds, more than the 2-bit product itself. This kernel does
the same arithmetic in one compiled call (a few µs for n = 1536):

    T = F_m ⊗ H_p / √p  (lvq/rotation.py: F_m the orthonormal small factor, p = n/m = 2^k)
    apply:    y = T (s ⊙ x)       apply_t: y = s ⊙ (Tᵀ x),  Tᵀ = F_mᵀ ⊗ H_p / √p

For each token: signs (apply), an in-place Walsh–Hadamard butterfly over each of the m blocks of
p consecutive entries (index = a·p + b), then y[a·p:(a+1)·p] = Σ_a' F[a, a'] z[a'·p:(a'+1)·p]
(m² axpys of length p), signs (apply_t). Cost per token n·(log2 p + m) multiply-adds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..rotation import RHT, small_factor
from ._common import DENSE_MIN_TOKENS, as_rows, from_rows, jit


@dataclass(frozen=True)
class RHTPrepared:
    """One direction of a randomized transform: ``mix`` float32 [m, m] (F_m or F_mᵀ, divided by
    √p), ``signs`` float32 [n], ``pre``: signs applied before (apply) or after (apply_t)."""

    mix: np.ndarray
    signs: np.ndarray
    pre: bool
    rht: RHT

    @property
    def n(self) -> int:
        return int(self.signs.shape[0])


def prepare_rht(rht: RHT, transpose: bool = False) -> RHTPrepared:
    """``rht.apply`` (transpose False) or ``rht.apply_t`` (True) as a kernel layout."""
    spec = rht.spec
    F = small_factor(spec, torch.float64)
    F = (F.T if transpose else F) / math.sqrt(spec.pow2)
    return RHTPrepared(mix=np.ascontiguousarray(F.to(torch.float32).numpy()),
                       signs=np.ascontiguousarray(rht.signs.detach().cpu().to(torch.float32).numpy()),
                       pre=not transpose, rht=rht)


@jit()
def _rht_rows(x, signs, mix, pre, y):
    """y [T, n] = the transform of each row of x [T, n] (see the module docstring)."""
    T, n = x.shape
    m = mix.shape[0]
    p = n // m
    z = np.empty(n, dtype=np.float32)
    for t in range(T):
        if pre:
            for i in range(n):
                z[i] = x[t, i] * signs[i]
        else:
            for i in range(n):
                z[i] = x[t, i]
        h = 1
        while h < p:  # Walsh–Hadamard butterflies within each block of p entries
            for a in range(m):
                base = a * p
                for i0 in range(base, base + p, 2 * h):
                    for i in range(i0, i0 + h):
                        u = z[i]
                        v = z[i + h]
                        z[i] = u + v
                        z[i + h] = u - v
            h *= 2
        for a in range(m):  # the small factor across blocks
            out = y[t, a * p:(a + 1) * p]
            for b in range(p):
                out[b] = np.float32(0.0)
            for a2 in range(m):
                f = mix[a, a2]
                src = z[a2 * p:(a2 + 1) * p]
                for b in range(p):
                    out[b] += f * src[b]
        if not pre:
            for i in range(n):
                y[t, i] *= signs[i]


def rht_apply(x: torch.Tensor, prepared: RHTPrepared) -> torch.Tensor:
    """The prepared transform along the last dim: x [..., n] -> float32 [..., n] (no autograd).
    Above ``DENSE_MIN_TOKENS`` rows torch's batched transform (lvq/rotation.py) is faster."""
    if x.numel() > DENSE_MIN_TOKENS * prepared.n:
        r, x = prepared.rht, x.to(torch.float32)
        return r.apply(x) if prepared.pre else r.apply_t(x)
    xn, lead = as_rows(x, prepared.n)
    y = np.empty_like(xn, dtype=np.float32)
    _rht_rows(xn, prepared.signs, prepared.mix, prepared.pre, y)
    return from_rows(y, lead)

"""Randomized Hadamard transforms for a few tokens at a time (incoherence processing at decode).

A rotated layer computes y = Uᵀ Q(W') (V x) (lvq/rotated_weight.py): two transforms per call
besides the product on the codes. ``lvq.rotation.hadamard_transform`` applies each Kronecker
factor as a batched torch matmul, ~20 small torch ops per transform: for one token that is
~50 µs of dispatch for ~10 k multiply-adds, more than the 2-bit product itself. This kernel does
the same arithmetic in one compiled call (a few µs for n = 1536):

    T = F_m ⊗ H_p / √p  (lvq/rotation.py: F_m the orthonormal small factor, p = n/m = 2^k)
    apply:    y = T (s ⊙ x)       apply_t: y = s ⊙ (Tᵀ x),  Tᵀ = F_mᵀ ⊗ H_p / √p

For each token: signs (apply); the Walsh–Hadamard transform of each of the m blocks of p
consecutive entries (index = a·p + b), its first log2 q stages (q = min(p, 16)) as one product
with the ±1 Sylvester matrix H_q over the n/q consecutive q-blocks, the remaining stages as
in-place butterflies over contiguous runs (which vectorise); then the small factor across blocks
as one product Y [m, p] = F_m Z [m, p]; signs (apply_t). Cost per token n·(q + log2(p/q) + m)
multiply-adds, in three BLAS-sized steps rather than thousands of short loops.

A rotated layer's one-token call is one compiled function (``RotatedKernel``): V's transform,
the inner kernel's one-token product and Uᵀ's transform, with no torch or
numpy objects made in between.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..rotation import RHT, small_factor, sylvester
from ._common import DENSE_MIN_TOKENS, as_rows, from_rows, jit, one_token_call


@dataclass(frozen=True)
class RHTPrepared:
    """One direction of a randomized transform: ``mix`` float32 [m, m] (F_m or F_mᵀ, divided by
    √p), ``hq`` float32 [q, q] (±1 Sylvester, q = min(p, 16)), ``signs`` float32 [n], ``pre``:
    signs applied before (apply) or after (apply_t)."""

    mix: np.ndarray
    hq: np.ndarray
    signs: np.ndarray
    pre: bool
    rht: RHT

    @property
    def n(self) -> int:
        return int(self.signs.shape[0])


SYLVESTER_BLOCK = 16  # the first stages of each block's transform as one product with H_16


def prepare_rht(rht: RHT, transpose: bool = False) -> RHTPrepared:
    """``rht.apply`` (transpose False) or ``rht.apply_t`` (True) as a kernel layout."""
    spec = rht.spec
    F = small_factor(spec, torch.float64)
    F = (F.T if transpose else F) / math.sqrt(spec.pow2)
    q = min(spec.pow2, SYLVESTER_BLOCK)
    return RHTPrepared(mix=np.ascontiguousarray(F.to(torch.float32).numpy()),
                       hq=np.ascontiguousarray(sylvester(q).to(torch.float32).numpy()),
                       signs=np.ascontiguousarray(rht.signs.detach().cpu().to(torch.float32).numpy()),
                       pre=not transpose, rht=rht)


@jit()
def _rht_vec(x, signs, mix, hq, pre, y):
    """y [n] = the transform of x [n] (see the module docstring); x and y may not overlap."""
    n = x.shape[0]
    m = mix.shape[0]
    p = n // m
    q = hq.shape[0]
    z = np.empty(n, dtype=np.float32)
    if pre:
        for i in range(n):
            z[i] = x[i] * signs[i]
    else:
        for i in range(n):
            z[i] = x[i]
    zq = np.dot(z.reshape(n // q, q), hq).ravel()  # stages h = 1 … q/2 of every block
    h = q
    while h < p:  # the remaining butterflies: contiguous runs of h >= 16
        for i0 in range(0, n, 2 * h):
            for i in range(i0, i0 + h):
                u = zq[i]
                v = zq[i + h]
                zq[i] = u + v
                zq[i + h] = u - v
        h *= 2
    Y = np.dot(mix, zq.reshape(m, p)).ravel()  # the small factor across blocks
    if pre:
        for i in range(n):
            y[i] = Y[i]
    else:
        for i in range(n):
            y[i] = Y[i] * signs[i]


@jit()
def _rht_rows(x, signs, mix, hq, pre, y):
    """y [T, n] = the transform of each row of x [T, n]."""
    for t in range(x.shape[0]):
        _rht_vec(x[t], signs, mix, hq, pre, y[t])


def rht_apply(x: torch.Tensor, prepared: RHTPrepared) -> torch.Tensor:
    """The prepared transform along the last dim: x [..., n] -> float32 [..., n] (no autograd).
    Above ``DENSE_MIN_TOKENS`` rows torch's batched transform (lvq/rotation.py) is faster."""
    if x.numel() > DENSE_MIN_TOKENS * prepared.n:
        r, x = prepared.rht, x.to(torch.float32)
        return r.apply(x) if prepared.pre else r.apply_t(x)
    xn, lead = as_rows(x, prepared.n)
    y = np.empty_like(xn, dtype=np.float32)
    _rht_rows(xn, prepared.signs, prepared.mix, prepared.hq, prepared.pre, y)
    return from_rows(y, lead)


@functools.lru_cache(maxsize=None)
def _rotated_single(inner):
    """One token through a rotated layer in one compiled call: u = V x, z = inner(u, *args) (the
    inner kernel's compiled one-token function), y = Uᵀ z. One specialisation per inner function."""

    @jit()
    def rotated_single(x, v_signs, v_mix, v_hq, u_signs, u_mix, u_hq, *args):
        u = np.empty_like(x)
        _rht_vec(x[0], v_signs, v_mix, v_hq, True, u[0])
        z = inner(u, *args)
        y = np.empty_like(z)
        _rht_vec(z[0], u_signs, u_mix, u_hq, False, y[0])
        return y

    return rotated_single


class RotatedKernel:
    """y = Uᵀ inner(V x) for a rotated layer (lvq/rotated_weight.py): ``inner`` is the inner
    weight's kernel, ``v`` = prepare_rht(V), ``u`` = prepare_rht(U, transpose=True). A single
    token through an inner kernel with a compiled one-token function (``one_token``: grouped
    scalar or lattice codes of one width, additive codes) is one compiled call."""

    def __init__(self, inner: Callable[[torch.Tensor], torch.Tensor], v: RHTPrepared, u: RHTPrepared) -> None:
        if v.pre is not True or u.pre is not False:
            raise ValueError("v must be prepare_rht(V) and u prepare_rht(U, transpose=True)")
        self.inner, self.v, self.u = inner, v, u
        self.in_features, self.out_features = v.n, u.n
        one = getattr(inner, "one_token", None)  # GroupedKernel, AdditiveKernel
        self.one_token = None if one is None else (
            _rotated_single(one[0]), (v.signs, v.mix, v.hq, u.signs, u.mix, u.hq, *one[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = one_token_call(self.one_token, x, self.in_features, self.out_features)
        if y is not None:
            return y
        return rht_apply(self.inner(rht_apply(x, self.v)), self.u)

"""A 2^16-point codebook from the E8 lattice for 8-dimensional vectors at 2 bits per weight.

The construction follows QuIP#'s "E8P" idea (Tseng et al. 2024): take the half-integer coset of
E8, D8 + ½·1 (half-odd coordinates with an even sum), keep the 256 *absolute patterns*
a ∈ {½, 3/2, 5/2, ...}⁸ of smallest norm (the 227 of norm² ≤ 10, then the first 29 of norm² 12 in
lexicographic order), allow every sign vector s with Σ s⊙a even (128 of 256: the eighth sign
follows from the other seven), and shift the whole set by ±¼·1:

    point = s ⊙ a + t·¼·1,     code = t (1 bit) | index of a (8 bits) | s_0..s_6 (7 bits)

2^16 points for 8 weights = 2 bits per weight, a near-spherical codebook: on i.i.d. Gaussian
data its MSE per dimension at the best scale is about 0.0915, against 0.104 for the box-truncated
E8 code of ``lattice.nearest_encode(kind="E8")`` and the distortion–rate bound 0.0625
(docs/algorithms.md, "The physical limit"; BENCHMARKS.md's Gaussian table).

Exact nearest point: for each shift t and each pattern a the best signs are those of x − t/4 (a
sign vector of the wrong parity is fixed by flipping the coordinate where |x_i|·a_i is smallest),
so the search scores 2 × 256 candidates per vector with [N, 8] × [8, 256] products (the parity
correction is computed only for the few candidates that could still win). On the CPU the same
search runs compiled, one vector at a time (lvq/kernels/e8p_search.py).

Codes are stored as eight 2-bit fields (field i = bits 2i, 2i+1 of the 16-bit code), so GLVQ's
2-bit packing stores them unchanged.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

N_PATTERNS = 256
SHIFT = 0.25


@functools.lru_cache(maxsize=1)
def _patterns() -> torch.Tensor:
    """The 256 absolute patterns [256, 8] float64, by norm then lexicographically."""
    values = (0.5, 1.5, 2.5, 3.5)
    pats = sorted(itertools.product(values, repeat=8), key=lambda p: (sum(v * v for v in p), p))
    return torch.tensor(pats[:N_PATTERNS], dtype=torch.float64)


def patterns(dtype=torch.float32, device=None) -> torch.Tensor:
    """The absolute patterns A [256, 8]."""
    return _patterns().to(dtype=dtype, device=device)


def _pattern_parity(A: torch.Tensor) -> torch.Tensor:
    """[256] bool: odd number of entries ≡ 3/2 (mod 2) in the pattern (entries 3/2 or 7/2)."""
    return (torch.remainder(2.0 * A, 4.0) == 3).sum(1) % 2 == 1


def _sign_parity(negative: torch.Tensor) -> torch.Tensor:
    """[N] bool: odd number of negative coordinates."""
    return negative.sum(1) % 2 == 1


def _nearest_signed(Y: torch.Tensor, A: torch.Tensor, rounds: int = 4
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest point of {s ⊙ a : a ∈ A, Σ s⊙a even} to each row of Y [N, 8].

    Score of pattern a with the signs of Y: ‖a‖² − 2⟨|Y|, a⟩ (its "base"), plus 4·min_i |Y_i|·a_i
    when those signs have the wrong parity and one coordinate must flip. With o_i = 2a_i (odd
    integers), Σ s_i a_i is even iff the count of coordinates with s_i o_i ≡ 3 (mod 4) is even:
    the parity of (negative signs) XOR (entries with o_i ≡ 3 mod 4), one XOR per (row, pattern).
    Exact search without scoring every correction: start from the best pattern of right parity;
    then repeatedly score the wrong-parity pattern of smallest base until that base (a lower
    bound of its corrected score) cannot beat the best so far. Rows still open after ``rounds``
    are scored over all patterns. Returns (pattern [N] int64, signs [N, 8] ±1, squared distance [N]).
    """
    ay = Y.abs()
    sy = torch.where(Y >= 0, 1.0, -1.0).to(Y.dtype)
    base = (A * A).sum(1)[None, :] - 2.0 * (ay @ A.T)                       # [N, 256]
    odd = _sign_parity(Y < 0)[:, None] ^ _pattern_parity(A)[None, :]       # wrong parity
    best_score, best = base.masked_fill(odd, float("inf")).min(1)
    rest = base.masked_fill(~odd, float("inf"))
    rows = torch.arange(Y.shape[0], device=Y.device)
    for _ in range(rounds):
        low, cand = rest[rows].min(1)
        live = low < best_score[rows]
        rows, cand = rows[live], cand[live]
        if rows.numel() == 0:
            break
        score = base[rows, cand] + 4.0 * (ay[rows] * A[cand]).amin(1)
        better = score < best_score[rows]
        best_score[rows[better]], best[rows[better]] = score[better], cand[better]
        rest[rows, cand] = float("inf")
    if rows.numel():  # not settled in a few rounds: every pattern, corrected
        full = base[rows] + odd[rows] * 4.0 * (ay[rows, None, :] * A[None]).amin(-1)
        best_score[rows], best[rows] = full.min(1)
    signs = sy.clone()
    flip = odd.gather(1, best[:, None])[:, 0]
    where = (ay * A[best]).argmin(1)
    flipped = flip.nonzero()[:, 0]
    signs[flipped, where[flipped]] *= -1.0
    return best, signs, best_score + (Y * Y).sum(1)


CHUNK = 2048  # vectors per block of the search: its [2·CHUNK, 256] scores stay in cache


def encode(X: torch.Tensor) -> torch.Tensor:
    """Nearest codebook point to each row of X [..., 8] (codebook units) -> codes [..., 8] int64,
    eight 2-bit fields of the 16-bit code."""
    if X.shape[-1] != 8:
        raise ValueError("the E8P codebook needs d = 8")
    lead = X.shape[:-1]
    Y = X.reshape(-1, 8).to(torch.float32)
    if Y.device.type == "cpu":  # the same search, compiled
        from .kernels.e8p_search import encode_codes  # numba is heavy: imported where used

        code = encode_codes(Y, SHIFT, search_tables())
    else:
        code = _encode_torch(Y)
    fields = (code[:, None] >> (2 * torch.arange(8, device=Y.device))) & 3
    return fields.reshape(*lead, 8)


@functools.lru_cache(maxsize=1)
def search_tables() -> tuple[np.ndarray, ...]:
    """The patterns split by parity for the compiled search, each part in index order: (A
    [256, 8], then for parity 0 and 1: Aᵀ [8, 128], ‖a‖² [128], indices into A [128]), float32
    and int64 numpy (read only)."""
    A = patterns()
    odd = _pattern_parity(A)
    parts = []
    for par in (False, True):
        idx = (odd == par).nonzero()[:, 0]
        parts += [np.ascontiguousarray(A[idx].T.numpy()), (A[idx] ** 2).sum(1).numpy(), idx.numpy()]
    return (np.ascontiguousarray(A.numpy()), *parts)


def _encode_torch(Y: torch.Tensor) -> torch.Tensor:
    """16-bit codes [N] int64 of the rows of Y [N, 8] float32, with batched torch products."""
    A = patterns(device=Y.device)
    codes = []
    for Yc in Y.split(CHUNK):
        n = Yc.shape[0]
        idx, signs, dist = _nearest_signed(torch.cat([Yc - SHIFT, Yc + SHIFT]), A)
        down = dist[n:] < dist[:n]
        idx = torch.where(down, idx[n:], idx[:n])
        signs = torch.where(down[:, None], signs[n:], signs[:n])
        neg = (signs[:, :7] < 0).to(torch.int64)
        codes.append((down.to(torch.int64) << 15) | (idx << 7)
                     | (neg << torch.arange(7, device=Y.device)).sum(1))
    return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.int64, device=Y.device)


def decode(U: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Points [..., 8] (codebook units) of codes U [..., 8] made by :func:`encode`."""
    U = U.to(torch.int64)
    code = (U << (2 * torch.arange(8, device=U.device))).sum(-1)
    if U.device.type == "cpu":  # one lookup in the table of all 2^16 points
        return _all_points()[code].to(dtype)
    return _decode_codes(code).to(dtype)


@functools.lru_cache(maxsize=1)
def _all_points() -> torch.Tensor:
    """[65536, 8] float64: the point of every 16-bit code (read only)."""
    return _decode_codes(torch.arange(1 << 16))


def _decode_codes(code: torch.Tensor) -> torch.Tensor:
    """Points [..., 8] float64 of 16-bit codes [...]: t·¼ + s ⊙ a, the eighth sign from parity."""
    idx = (code >> 7) & (N_PATTERNS - 1)
    a = patterns(dtype=torch.float64, device=code.device)[idx]               # [..., 8]
    s7 = 1.0 - 2.0 * ((code[..., None] >> torch.arange(7, device=code.device)) & 1).to(torch.float64)
    partial = (s7 * a[..., :7]).sum(-1) + a[..., 7]                          # Σ with s_7 = +1
    s_last = torch.where(torch.remainder(torch.round(partial), 2.0) == 0, 1.0, -1.0)
    s = torch.cat([s7, s_last[..., None]], -1)
    t = torch.where(((code >> 15) & 1) == 1, -SHIFT, SHIFT)
    return s * a + t[..., None]

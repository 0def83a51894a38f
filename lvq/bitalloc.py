"""Salience-driven bit allocation (SDBA, from SliM-LLM; GLVQ §3.4).

Each column group g gets an integer width b_g (bits per weight of its codes). Salience (SliM-LLM's
code), with U the upper Cholesky factor of the damped H⁻¹ (H⁻¹ = UᵀU):

    salience_g = Σ_{i, j ∈ g} W_ij² / U_jj²

Allocation under an average target ``bits`` (in code bits per weight, Σ_g b_g·n_g = bits·in):

1. *Base widths.* A group whose size differs from the group size (the last, partial group) keeps
   floor(bits). The full-size groups share the rest: with r their average, the ⌊(r − ⌊r⌋)·F⌋ most
   salient get ⌈r⌉ and the others ⌊r⌋ (F = number of full groups). Integer targets give every
   group N; fractional targets (1.5, 2.5 bpw) mix two widths. The average equals the target
   exactly whenever that is reachable with whole groups, and is the largest reachable value below
   it otherwise.
2. *Moves.* The k most salient full groups go up one bit and the k least salient go down one
   (so with an integer target the widths are {N−1, N, N+1}), which keeps Σ b_g n_g unchanged.
   Widths stay within 1..8.
3. *Search.* k is chosen from 0..k_max by the summed per-group output error of a cheap quantizer
   (RTN, asymmetric min-max per row, as in SliM-LLM's code), tr(δ_g H_gg δ_gᵀ) with δ_g the RTN
   error of group g at its width. Cross-group terms of H are ignored in this score. Ties go to the
   smaller k. Everything is deterministic (stable sorts; no randomness).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .baselines import minmax_params, round_to_grid
from .hessian import inverse_hessian_cholesky, objective

MIN_WIDTH, MAX_WIDTH = 1, 8


@dataclass(frozen=True)
class Allocation:
    """widths [n_groups]; salience [n_groups]; moved = k groups up (and k down); scores[k] = the
    RTN output error of candidate k (empty when no search ran)."""

    widths: list[int]
    salience: list[float]
    moved: int
    scores: list[float]


def group_salience(W: torch.Tensor, H: torch.Tensor | None, bounds: list[tuple[int, int]],
                   damp: float = 0.01) -> torch.Tensor:
    """salience_g = Σ_{i, j∈g} W_ij² / U_jj² -> [n_groups] float64 (H = None: U = I)."""
    W = W.detach().to(torch.float64)
    if H is None:
        w2 = (W * W).sum(0)
    else:
        U, _ = inverse_hessian_cholesky(H, damp)
        w2 = (W * W).sum(0) / torch.diagonal(U).to(W.device) ** 2
    return torch.stack([w2[a:b].sum() for a, b in bounds])


def base_widths(sizes: list[int], bits: float, order: list[int]) -> list[int]:
    """Step 1 of the module docstring. ``order``: group indices by decreasing salience."""
    full = max(sizes)
    total = bits * sum(sizes)
    lo_t = int(math.floor(bits + 1e-9))
    widths = [lo_t] * len(sizes)
    movable = [g for g in order if sizes[g] == full]
    fixed_bits = sum(lo_t * n for g, n in enumerate(sizes) if n != full)
    r = (total - fixed_bits) / (full * len(movable))
    lo = int(math.floor(r + 1e-9))
    m = int(math.floor((r - lo) * len(movable) + 1e-9))
    lo, hi = min(max(lo, MIN_WIDTH), MAX_WIDTH), min(max(lo + 1, MIN_WIDTH), MAX_WIDTH)
    for rank, g in enumerate(movable):
        widths[g] = hi if rank < m else lo
    return widths


def moved_widths(base: list[int], sizes: list[int], order: list[int], k: int) -> list[int]:
    """Step 2: the k most salient full groups +1 bit, the k least salient −1 bit."""
    full = max(sizes)
    movable = [g for g in order if sizes[g] == full]
    w = list(base)
    for g in movable[:k]:
        w[g] += 1
    for g in movable[len(movable) - k:] if k else []:
        w[g] -= 1
    return w


def max_moves(base: list[int], sizes: list[int], order: list[int]) -> int:
    """Largest k for which the moved widths stay in 1..8 and the up/down sets are disjoint."""
    full = max(sizes)
    movable = [g for g in order if sizes[g] == full]
    k = 0
    while 2 * (k + 1) <= len(movable):
        up, down = movable[k], movable[len(movable) - 1 - k]
        if base[up] + 1 > MAX_WIDTH or base[down] - 1 < MIN_WIDTH:
            break
        k += 1
    return k


def rtn_group_error(Wg: torch.Tensor, Hg: torch.Tensor | None, bits: int) -> float:
    """tr(δ H_gg δᵀ) of asymmetric min-max RTN per row at ``bits`` (H_gg = None: ‖δ‖²)."""
    Wg = Wg.to(torch.float32)
    s, z = minmax_params(Wg, bits)
    D = Wg - (round_to_grid(Wg, s, z, bits) - z[:, None]) * s[:, None]
    return float(objective(D, None if Hg is None else Hg.to(D)))


def allocate_bits(W: torch.Tensor, H: torch.Tensor | None, bounds: list[tuple[int, int]],
                  bits: float, search: bool = True, damp: float = 0.01) -> Allocation:
    """Widths for the column groups ``bounds`` of W [out, in] under the average target ``bits``.

    search=False keeps k = 0 (only the salience-ordered mixing of a fractional target).
    """
    if not MIN_WIDTH <= bits <= MAX_WIDTH:
        raise ValueError(f"average bits must be in [{MIN_WIDTH}, {MAX_WIDTH}], got {bits}")
    sizes = [b - a for a, b in bounds]
    sal = group_salience(W, H, bounds, damp)
    order = torch.argsort(-sal, stable=True).tolist()
    base = base_widths(sizes, bits, order)
    kmax = max_moves(base, sizes, order) if search else 0
    if kmax == 0:
        return Allocation(base, sal.tolist(), 0, [])
    Wf = W.detach().to(torch.float32)
    Hf = None if H is None else H.detach().to(torch.float32)
    cache: dict[tuple[int, int], float] = {}

    def err(g: int, b: int) -> float:
        if (g, b) not in cache:
            a, c = bounds[g]
            cache[(g, b)] = rtn_group_error(Wf[:, a:c], None if Hf is None else Hf[a:c, a:c], b)
        return cache[(g, b)]

    scores = []
    for k in range(kmax + 1):
        w = moved_widths(base, sizes, order, k)
        scores.append(sum(err(g, b) for g, b in enumerate(w)))
    best = min(range(len(scores)), key=lambda k: (scores[k], k))
    return Allocation(moved_widths(base, sizes, order, best), sal.tolist(), best, scores)


def code_bits(sizes: list[int], bits: float) -> int:
    """Σ_g b_g·n_g per row for the base allocation (moves keep it): shapes only, no weights."""
    return sum(w * n for w, n in zip(base_widths(sizes, bits, list(range(len(sizes)))), sizes))

"""The additive core shared by AQLM and CRVQ (Egiazarian et al. 2024; Xu et al. 2025).

Vectors are d consecutive input columns of one row; G = in/d vector-groups; codebook k holds
2^{e_k} entries of dimension d and covers the first n_k groups (n_0 = G). With row scales s:

    Ŵ[i, g·d:(g+1)·d] = s_i · Σ_{k : g < n_k} C_k[b_{i,k,g}]

minimising the layer objective L(Ŵ) = tr((W − Ŵ) H (W − Ŵ)ᵀ) (lvq/hessian.py). ``fit_additive``
alternates beam search over the codes (lvq/beam.py, AQLM's closed-form candidate losses) with
Adam on the codebooks and scales (codes frozen), AQLM §3.2-3.3. Vectors are laid out
group-major (group 0 of every row first), so "the first g groups" is a prefix of the rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .beam import beam_search, decode_additive
from .hessian import objective

FP16_TINY = 2.0 ** -14  # smallest normal fp16: scales are kept at or above it
# k-means initialisation fits each codebook on at most this many points per entry (a uniform
# subsample; every vector is then assigned) and stops early below this relative improvement.
KMEANS_POINTS_PER_ENTRY = 64
KMEANS_TOL = 1e-4


def kmeans_opts(bits: int) -> dict[str, Any]:
    return {"max_points": KMEANS_POINTS_PER_ENTRY << bits, "tol": KMEANS_TOL}


def row_scales(W: torch.Tensor) -> torch.Tensor:
    """Per-row scales s_i = ‖W_i‖ / √in, [out] (the paper's s_i = ‖W_i‖ up to the constant √in,
    which makes W̃ = W/s unit-RMS per row so that one Adam learning rate suits every layer width).
    Zero rows get s = 1; scales are rounded to fp16 (what is stored) and kept >= 2⁻¹⁴."""
    s = W.norm(dim=1) / math.sqrt(W.shape[1])
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s.clamp_min(FP16_TINY).to(torch.float16).to(W.dtype)


def vectors(W: torch.Tensor, dim: int) -> torch.Tensor:
    """[out, in] -> group-major vectors [G·out, d] (group 0 of every row first, then group 1, ...),
    so that "the first g groups" is a prefix of the rows."""
    out, n_in = W.shape
    return W.reshape(out, n_in // dim, dim).transpose(0, 1).reshape(-1, dim)


def unvectors(X: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    """Inverse of ``_vectors`` for a prefix of n groups: [n·out, d] -> [out, n·d]."""
    n = X.shape[0] // out
    return X.reshape(n, out, dim).transpose(0, 1).reshape(out, n * dim)


def vector_weights(s: torch.Tensor, Hdiag: torch.Tensor, dim: int) -> torch.Tensor:
    """k-means sample weights s_i² · mean(diag H over group g), group-major [G·out]."""
    hg = Hdiag.reshape(-1, dim).mean(1).clamp_min(0)  # [G]
    return (hg[:, None] * (s * s)[None, :]).reshape(-1)


def adam_codebooks(W: torch.Tensor, H: torch.Tensor | None, s: torch.Tensor,
                   codebooks: list[torch.Tensor], codes: list[torch.Tensor], steps: int,
                   lr: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Adam on the codebooks C_k and row scales s for L with the codes frozen (AQLM §3.3).

    The gradient is written out (one [out, in] × [in, in] product per step instead of autograd's
    three): with V = Σ_k C_k[b_k] laid out as [out, in], Ŵ = s ⊙ V and R = W − Ŵ,

        ∂L/∂Ŵ = −2 R H,    ∂L/∂s_i = Σ_j (∂L/∂Ŵ)_ij V_ij,
        ∂L/∂C_k[c] = Σ_{(i,g): b_ikg = c} s_i (∂L/∂Ŵ)_{i,g}   (a d-vector: group g's columns).

    L is divided by ‖W‖²_H so the learning rate does not depend on the layer. Returns fp16-rounded
    (codebooks, s) as float32 tensors.
    """
    out = W.shape[0]
    d = codebooks[0].shape[1]
    G = W.shape[1] // d
    books = [C.detach().clone().requires_grad_(True) for C in codebooks]
    scale = s.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam(books + [scale], lr=lr)
    norm = float(objective(W, H).clamp_min(1e-30))
    flat_codes = [b.reshape(-1) for b in codes]
    with torch.no_grad():
        for _ in range(steps):
            V = decode_additive(books, codes, G)  # [out, in]
            R = W - scale[:, None] * V
            gW = (R if H is None else R @ H).mul_(-2.0 / norm)  # ∂L/∂Ŵ, [out, in]
            scale.grad = (gW * V).sum(1)
            gV = (gW * scale[:, None]).view(out, G, d)
            for C, b, n in zip(books, flat_codes, (c.shape[1] for c in codes)):
                C.grad = torch.zeros_like(C).index_add_(0, b, gV[:, :n].reshape(-1, d))
            opt.step()
        books = [C.detach().to(torch.float16).to(torch.float32) for C in books]
        scale = scale.detach().clamp_min(FP16_TINY).to(torch.float16).to(torch.float32)
    return books, scale


@dataclass
class AdditiveFit:
    """Result of ``fit_additive``: fp16-valued float32 codebooks C_k [K_k, d], codes_k [out, n_k],
    scales s [out], and the loss curve [{epoch, loss}] (epoch 0 = after the k-means init)."""

    codebooks: list[torch.Tensor]
    codes: list[torch.Tensor]
    s: torch.Tensor
    curve: list[dict[str, float]]


def fit_additive(W: torch.Tensor, H: torch.Tensor | None, s: torch.Tensor, codebooks: list[torch.Tensor],
                 codes: list[torch.Tensor], epochs: int, tol: float, adam_steps: int, lr: float,
                 beam_width: int) -> AdditiveFit:
    """Alternate beam search (codes) and Adam (codebooks, scales) on L, from an initial solution.

    W: [out, in] (already permuted), H: [in, in] or None. Each epoch: one beam-search pass, then
    ``adam_steps`` Adam steps; stop when the epoch's relative improvement is below ``tol``.
    """
    G = W.shape[1] // codebooks[0].shape[1]
    H_beam = torch.eye(W.shape[1], dtype=W.dtype, device=W.device) if H is None else H
    books = [C.to(torch.float16).to(torch.float32) for C in codebooks]

    def loss_of(bk, cd, sc) -> float:
        return float(objective(W - sc[:, None] * decode_additive(bk, cd, G), H))

    loss = loss_of(books, codes, s)
    curve = [{"epoch": 0, "loss": loss}]
    for epoch in range(1, epochs + 1):
        codes, _ = beam_search(W, H_beam, s, books, codes, beam_width)
        after_beam = loss_of(books, codes, s)
        if adam_steps:
            new_books, new_s = adam_codebooks(W, H, s, books, codes, adam_steps, lr)
            after_adam = loss_of(new_books, codes, new_s)
            if after_adam <= after_beam:
                books, s, after_beam = new_books, new_s, after_adam
        prev, loss = loss, after_beam
        curve.append({"epoch": epoch, "loss": loss})
        if prev <= 0 or (prev - loss) / prev < tol:
            break
    return AdditiveFit(books, codes, s, curve)

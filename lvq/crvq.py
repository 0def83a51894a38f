"""CRVQ — channel-relaxed vector quantization (Xu et al., TACL 2025), on an additive core (AQLM).

Minimises the layer objective (W: [out, in], H = XᵀX/n: [in, in]; H = None means plain MSE)

    L(Ŵ) = tr((W − Ŵ) H (W − Ŵ)ᵀ)

over the additive model (paper Eq. for ŵ; P the input-channel permutation, g critical groups)

    Ŵ[:, P] = s ⊙ ( C₀[b₀] on every vector-group  +  Σ_{k=1..m} C_k[b_k] on the first g groups ).

Steps, as in the paper (§3) and the authors' AQLM-derived code:

1. **Scales.** One scale per output row; W̃ = W / s (see ``row_scales`` for the normalisation).
2. **Importance.** Quantize W̃ with one k-means codebook, R = W − s·VQ(W̃), and score each input
   channel by I_j = mean_i R_ij² · H_jj ("residual", the paper's Eq. 6) or by the stricter
   I_j = max_i R_ij² / [H⁻¹]_jj ("hessian_max", the OBS saliency of the residual).
3. **Permutation.** Channels ordered by importance (stored, ⌈log₂ in⌉ bits each).
4. **Critical groups.** The first g = ⌊λ·in/d⌋ vector-groups of the permuted weight are critical.
5. **Codebooks.** Basic C₀ (2^e₀ × d) on every vector, m extended C_k (2^e_k × d) on the critical
   vectors only; initialised by residual k-means.
6. **Optimisation.** Alternate beam search over the codes (``lvq.beam``, AQLM's closed-form
   candidate losses) and Adam on codebooks and scales with the codes frozen; stop when the
   relative improvement of L in an epoch is below ``tol`` or after ``epochs`` epochs.

AQLM (Egiazarian et al. 2024) is the same core with no permutation and M codebooks that all cover
every vector-group (``quantize_aqlm``). The shared core is lvq/additive.py, the stored form
lvq/additive_weight.py; block fine-tuning, which the paper applies after each block, is engine
code for every method (lvq/finetune.py).

Decisions where the paper is silent (each documented here and visible in ``stats()``):
* λ > 0 with ⌊λ·in/d⌋ = 0 (e.g. λ = 1% on in = 576, d = 8) is rounded **up** to one critical
  group, so the paper's λ sweep runs on small layers; ``stats()`` reports ``critical_groups`` and
  ``critical_ratio_used`` = g·d/in.
* With λ = 0 or m = 0 nothing is critical: no permutation is stored (and none is counted).
* Only the critical channels are moved (``reorder="critical_first"``, the default): the g·d most
  important channels go first, the others keep their original order. Sorting *every* channel
  (``reorder="full"``, kept as an option) puts channels of similar importance into the same
  vectors, and the one shared basic codebook then serves them worse (docs/algorithms.md has
  the measurement).
* k-means initialisation weights each vector by s_i² · mean(diag H over its columns), the diagonal
  part of L, so the initial codebooks already favour what the objective favours.
* The Adam phase of an epoch is undone if it raised L (it rarely does; the codes were chosen for
  the old codebooks, and Adam's first steps can overshoot).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .additive import fit_additive, kmeans_opts, row_scales, unvectors, vector_weights, vectors
from .additive_weight import CRVQWeight, bit_breakdown_for, permutation_bits
from .config import AQLMConfig, CRVQConfig
from .hessian import inverse_diagonal, objective
from .kmeans import kmeans, residual_kmeans
from .packing import pack
from .qweight import Method


# ----------------------------------------------------------------------------------------------
# Shapes and bit accounting (pure functions of the shapes)
# ----------------------------------------------------------------------------------------------
def critical_group_count(in_features: int, dim: int, critical_ratio: float, num_extended: int) -> int:
    """g = ⌊λ·in/d⌋ critical vector-groups, rounded up to 1 when λ > 0 would leave none.

    0 when λ = 0 or there are no extended codebooks (m = 0): nothing is critical.
    """
    if critical_ratio <= 0 or num_extended == 0:
        return 0
    G = in_features // dim
    return min(G, max(1, math.floor(critical_ratio * in_features / dim + 1e-9)))


def check_shape(out_features: int, in_features: int, dim: int) -> None:
    if in_features % dim:
        raise ValueError(
            f"in_features={in_features} is not a multiple of the vector dimension d={dim}; "
            f"choose a dim that divides it (e.g. {math.gcd(in_features, 8) or 1})"
        )
    if out_features < 1:
        raise ValueError(f"the layer has no rows (out_features={out_features})")


def books_for(in_features: int, cfg) -> tuple[list[int], list[int], bool]:
    """(bits per codebook, groups covered per codebook, permuted?) for a layer under cfg."""
    G = in_features // cfg.dim
    if cfg.method == "aqlm":
        return [cfg.codebook_bits] * cfg.num_codebooks, [G] * cfg.num_codebooks, False
    g = critical_group_count(in_features, cfg.dim, cfg.critical_ratio, cfg.num_extended)
    if g == 0:
        return [cfg.codebook_bits], [G], False
    return ([cfg.codebook_bits] + [cfg.extended_bits] * cfg.num_extended,
            [G] + [g] * cfg.num_extended, True)


def estimate_bits(out_features: int, in_features: int, cfg) -> float:
    """Bits per weight of an [out, in] layer under a CRVQConfig or AQLMConfig, from shapes alone."""
    check_shape(out_features, in_features, cfg.dim)
    bits, groups, permuted = books_for(in_features, cfg)
    parts = bit_breakdown_for(out_features, in_features, cfg.dim, bits, groups, permuted)
    return sum(parts.values()) / (out_features * in_features)



# ----------------------------------------------------------------------------------------------
# Channel importance and order (CRVQ §3.1)
# ----------------------------------------------------------------------------------------------
def channel_importance(W: torch.Tensor, H: torch.Tensor | None, s: torch.Tensor, dim: int,
                       codebook_bits: int, variant: str = "residual", kmeans_iters: int = 20,
                       seed: int = 0, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance of each input channel (CRVQ §3.1). W: [out, in], s: [out] -> (I [in], C [K, d]).

    R = W − s·VQ(W/s) with a single k-means codebook C of 2^codebook_bits entries (returned, so the
    basic codebook can start from it). "residual": I_j = mean_i R_ij² · H_jj.
    "hessian_max": I_j = max_i R_ij² / [H⁻¹]_jj, H damped by ``damp``·mean(diag H).
    """
    out, n_in = W.shape
    Hdiag = torch.ones(n_in, dtype=W.dtype, device=W.device) if H is None else torch.diagonal(H).to(W)
    X = vectors(W / s[:, None], dim)
    C, a, _ = kmeans(X, 1 << codebook_bits, iters=kmeans_iters, seed=seed,
                     weights=vector_weights(s, Hdiag, dim), **kmeans_opts(codebook_bits))
    R = W - s[:, None] * unvectors(C[a], out, dim)
    if variant == "residual":
        return (R * R * Hdiag[None, :]).mean(0), C
    if variant == "hessian_max":
        Hinv_diag = torch.ones_like(Hdiag) if H is None else inverse_diagonal(H, damp).to(W)
        return (R * R).amax(0) / Hinv_diag, C
    raise ValueError(f"unknown importance variant {variant!r}; use 'residual' or 'hessian_max'")


def channel_order(I: torch.Tensor, n_critical: int, reorder: str = "critical_first") -> torch.Tensor:
    """The stored permutation P [in] (position p holds original channel P[p]) from importance I [in].

    "full": every channel sorted by importance, descending (stable). "critical_first": the
    ``n_critical`` most important channels first (descending), then all others in their original
    order.
    """
    ranked = torch.argsort(-I, stable=True)
    if reorder == "full":
        return ranked
    if reorder != "critical_first":
        raise ValueError(f"unknown reorder {reorder!r}; use 'critical_first' or 'full'")
    rest = torch.ones_like(I, dtype=torch.bool)
    rest[ranked[:n_critical]] = False
    return torch.cat([ranked[:n_critical], rest.nonzero().flatten()])



# ----------------------------------------------------------------------------------------------
# Quantizers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    """The validated inputs of one layer: W [out, in] float32, H [in, in] float32 or None, the
    fp16-exact row scales s [out], diag(H) [in] (ones for H = None), and the start time."""

    W: torch.Tensor
    H: torch.Tensor | None
    s: torch.Tensor
    Hdiag: torch.Tensor
    t0: float

    @property
    def out(self) -> int:
        return self.W.shape[0]


def _prepare(W: torch.Tensor, H: torch.Tensor | None, cfg) -> _Layer:
    t0 = time.perf_counter()
    if W.dim() != 2:
        raise ValueError(f"W must be a 2-D [out, in] matrix, got shape {tuple(W.shape)}")
    check_shape(W.shape[0], W.shape[1], cfg.dim)
    W = W.detach().to(torch.float32)
    if H is not None:
        if tuple(H.shape) != (W.shape[1], W.shape[1]):
            raise ValueError(f"H must be [in, in] = [{W.shape[1]}, {W.shape[1]}], got {tuple(H.shape)}")
        H = H.detach().to(device=W.device, dtype=torch.float32)
    Hdiag = W.new_ones(W.shape[1]) if H is None else torch.diagonal(H).to(W)
    return _Layer(W, H, row_scales(W), Hdiag, t0)


def _per_channel_error(W: torch.Tensor, W_hat: torch.Tensor, Hdiag: torch.Tensor) -> torch.Tensor:
    """mean_i (W − Ŵ)_ij² · H_jj, [in] (the diagonal part of L per input channel)."""
    R = W - W_hat
    return (R * R).mean(0) * Hdiag


def _group_major_codes(flat: torch.Tensor, n_groups: int, out: int) -> torch.Tensor:
    """k-means assignments of group-major vectors [n_groups·out] -> codes [out, n_groups]."""
    return flat.reshape(n_groups, out).T.contiguous()


def _fit_and_pack(L: _Layer, perm: torch.Tensor | None, books: list[torch.Tensor],
                  codes: list[torch.Tensor], code_bits: list[int], cfg, method_name: str,
                  extra: dict[str, Any]) -> CRVQWeight:
    """Run the alternation on the permuted W, then pack the stored form and its diagnostics."""
    W, H = L.W, L.H
    out, n_in = W.shape
    Wp = W if perm is None else W[:, perm]
    Hp = H if H is None or perm is None else H[perm][:, perm]
    fit = fit_additive(Wp, Hp, L.s, books, codes, cfg.epochs, cfg.tol, cfg.adam_steps, cfg.lr,
                       cfg.beam_width)
    perm_packed = None if perm is None else pack(perm, permutation_bits(n_in))
    q = CRVQWeight(
        codes=tuple(pack(b, e) for b, e in zip(fit.codes, code_bits)),
        codebooks=tuple(C.to(torch.float16).contiguous() for C in fit.codebooks),
        scales=fit.s.to(torch.float16).contiguous(), perm=perm_packed,
        out_features=out, in_features=n_in, dim=cfg.dim, code_bits=tuple(code_bits),
        code_groups=tuple(int(b.shape[1]) for b in fit.codes), method_name=method_name,
    )
    W_hat = q.dequantize()
    inv = q.inv_perm
    basic = q.dequantize_permuted(num_books=1)
    basic = basic if inv is None else basic[:, inv]
    den = float(objective(W, H).clamp_min(1e-30))
    diagnostics = {
        **extra,
        "err_full": _per_channel_error(W, W_hat, L.Hdiag).tolist(),
        "err_basic": _per_channel_error(W, basic, L.Hdiag).tolist(),
        "curve": fit.curve,
        "epochs_run": len(fit.curve) - 1,
        "rel_error": float(objective(W - W_hat, H)) / den,
        "time_s": time.perf_counter() - L.t0,
    }
    object.__setattr__(q, "diagnostics", diagnostics)
    return q


def quantize_crvq(W: torch.Tensor, H: torch.Tensor | None, cfg: CRVQConfig) -> CRVQWeight:
    """CRVQ for one layer. W: [out, in]; H: [in, in] = XᵀX/n or None (plain MSE)."""
    L = _prepare(W, H, cfg)
    out, n_in = L.W.shape
    d, s = cfg.dim, L.s
    G = n_in // d
    code_bits, code_groups, permuted = books_for(n_in, cfg)
    g = code_groups[1] if permuted else 0
    I, C_imp = channel_importance(L.W, L.H, s, d, cfg.codebook_bits, cfg.importance,
                                  cfg.kmeans_iters, cfg.seed)
    perm = channel_order(I, g * d, cfg.reorder) if permuted else None
    Wp = L.W if perm is None else L.W[:, perm]
    X = vectors(Wp / s[:, None], d)  # [G·out, d], group-major
    w = vector_weights(s, L.Hdiag if perm is None else L.Hdiag[perm], d)
    # basic codebook: k-means on every vector, warm-started from the importance codebook
    C0, a0, _ = kmeans(X, 1 << cfg.codebook_bits, iters=cfg.kmeans_iters, seed=cfg.seed, weights=w,
                       C0=C_imp, **kmeans_opts(cfg.codebook_bits))
    books, codes = [C0], [_group_major_codes(a0, G, out)]
    if g:
        n = g * out  # the critical vectors are the first g groups: a prefix of the group-major rows
        ext, ext_codes = residual_kmeans(X[:n] - C0[a0[:n]], [1 << e for e in code_bits[1:]],
                                         iters=cfg.kmeans_iters, seed=cfg.seed + 1, weights=w[:n],
                                         **kmeans_opts(cfg.extended_bits))
        books += ext
        codes += [_group_major_codes(a, g, out) for a in ext_codes]
    order = torch.argsort(-I, stable=True)
    importance_rank = torch.empty_like(order)
    importance_rank[order] = torch.arange(n_in, device=order.device)
    extra = {"importance": I.tolist(), "importance_rank": importance_rank.tolist()}
    return _fit_and_pack(L, perm, books, codes, code_bits, cfg, "crvq", extra)


def quantize_aqlm(W: torch.Tensor, H: torch.Tensor | None, cfg: AQLMConfig) -> CRVQWeight:
    """AQLM for one layer: ``num_codebooks`` codebooks on every vector, residual k-means init."""
    L = _prepare(W, H, cfg)
    out, n_in = L.W.shape
    d = cfg.dim
    X = vectors(L.W / L.s[:, None], d)
    books, flat = residual_kmeans(X, [1 << cfg.codebook_bits] * cfg.num_codebooks,
                                  iters=cfg.kmeans_iters, seed=cfg.seed,
                                  weights=vector_weights(L.s, L.Hdiag, d),
                                  **kmeans_opts(cfg.codebook_bits))
    codes = [_group_major_codes(a, n_in // d, out) for a in flat]
    return _fit_and_pack(L, None, books, codes, [cfg.codebook_bits] * cfg.num_codebooks, cfg,
                         "aqlm", {})


METHODS = [
    Method("crvq", CRVQConfig, quantize_crvq, CRVQWeight,
           "CRVQ: additive vector quantization with extended codebooks on the critical input channels",
           estimate_bits=estimate_bits),
    Method("aqlm", AQLMConfig, quantize_aqlm, CRVQWeight,
           "AQLM: additive vector quantization, M codebooks on every vector (CRVQ with λ = 0)",
           estimate_bits=estimate_bits),
]

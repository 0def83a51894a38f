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
every vector-group (``quantize_aqlm``).

Decisions where the paper is silent (each documented here and visible in ``stats()``):
* λ > 0 with ⌊λ·in/d⌋ = 0 (e.g. λ = 1% on in = 576, d = 8) is rounded **up** to one critical
  group, so the paper's λ sweep runs on small layers; ``stats()`` reports ``critical_groups`` and
  ``critical_ratio_used`` = g·d/in.
* With λ = 0 or m = 0 nothing is critical: no permutation is stored (and none is counted).
* Only the critical channels are moved (``reorder="critical_first"``, the default): the g·d most
  important channels go first, the others keep their original order. Sorting *every* channel
  (``reorder="full"``, kept as an option) puts channels of similar importance into the same
  vectors, and the one shared basic codebook then serves them worse: on a 1536 x 576 layer with
  uneven activation scales (fast preset) the relative objective was 0.376 with a full sort,
  0.301 with critical-first, and 0.317 for AQLM with the same basic codebook.
* k-means initialisation weights each vector by s_i² · mean(diag H over its columns), the diagonal
  part of L, so the initial codebooks already favour what the objective favours.
* The Adam phase of an epoch is undone if it raised L (it rarely does; the codes were chosen for
  the old codebooks, and Adam's first steps can overshoot).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .beam import beam_search, decode_additive
from .config import AQLMConfig, CRVQConfig
from .kmeans import kmeans, residual_kmeans
from .methods import Method
from .packing import pack, unpack
from .qweight import QuantizedWeight, fp16_bits

FP16_TINY = 2.0 ** -14  # smallest normal fp16: scales are kept at or above it
# k-means initialisation fits each codebook on at most this many points per entry (a uniform
# subsample; every vector is then assigned) and stops early below this relative improvement.
KMEANS_POINTS_PER_ENTRY = 64
KMEANS_TOL = 1e-4
# linear() uses the lookup-table product for at most this many tokens. Measured on a 1536x576
# CRVQ layer (e = 8, one thread of this machine, codes unpacked per call in both paths):
# T = 1: 2.5 ms LUT vs 3.8 ms dense; T = 8: 3.1 vs 3.8; T = 32: 5.9 vs 4.3; T = 512: 262 vs 17.
LUT_MAX_TOKENS = 8


def _kmeans_opts(bits: int) -> dict[str, Any]:
    return {"max_points": KMEANS_POINTS_PER_ENTRY << bits, "tol": KMEANS_TOL}


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


def permutation_bits(in_features: int) -> int:
    """Width of one stored permutation index: ⌈log₂ in⌉ (at least 1)."""
    return max(1, math.ceil(math.log2(in_features)))


def _check_shape(out_features: int, in_features: int, dim: int) -> None:
    if in_features % dim:
        raise ValueError(
            f"in_features={in_features} is not a multiple of the vector dimension d={dim}; "
            f"choose a dim that divides it (e.g. {math.gcd(in_features, 8) or 1})"
        )
    if out_features < 1:
        raise ValueError(f"the layer has no rows (out_features={out_features})")


def _books_for(in_features: int, cfg) -> tuple[list[int], list[int], bool]:
    """(bits per codebook, groups covered per codebook, permuted?) for a layer under cfg."""
    G = in_features // cfg.dim
    if cfg.method == "aqlm":
        return [cfg.codebook_bits] * cfg.num_codebooks, [G] * cfg.num_codebooks, False
    g = critical_group_count(in_features, cfg.dim, cfg.critical_ratio, cfg.num_extended)
    if g == 0:
        return [cfg.codebook_bits], [G], False
    return ([cfg.codebook_bits] + [cfg.extended_bits] * cfg.num_extended,
            [G] + [g] * cfg.num_extended, True)


def bit_breakdown_for(out_features: int, in_features: int, dim: int, code_bits: list[int],
                      code_groups: list[int], permuted: bool) -> dict[str, int]:
    """ALGORITHMS.md's formula, term by term, on the real shapes:

        codes: Σ_k out · n_k · e_k     (n_0 = in/d for the basic codebook, n_k = g for extended)
        codebooks: Σ_k 2^{e_k} · d · 16
        scales: out · 16
        permutation: in · ⌈log₂ in⌉  (only when a permutation is stored)
    """
    parts = {
        "codes_basic": out_features * code_groups[0] * code_bits[0],
        "codes_extended": sum(out_features * n * e for n, e in zip(code_groups[1:], code_bits[1:])),
        "codebooks": sum((1 << e) * dim * 16 for e in code_bits),
        "scales": out_features * 16,
        "permutation": in_features * permutation_bits(in_features) if permuted else 0,
    }
    return parts


def estimate_bits(out_features: int, in_features: int, cfg) -> float:
    """Bits per weight of an [out, in] layer under a CRVQConfig or AQLMConfig, from shapes alone."""
    _check_shape(out_features, in_features, cfg.dim)
    bits, groups, permuted = _books_for(in_features, cfg)
    parts = bit_breakdown_for(out_features, in_features, cfg.dim, bits, groups, permuted)
    return sum(parts.values()) / (out_features * in_features)


# ----------------------------------------------------------------------------------------------
# The math of one layer (pure functions)
# ----------------------------------------------------------------------------------------------
def row_scales(W: torch.Tensor) -> torch.Tensor:
    """Per-row scales s_i = ‖W_i‖ / √in, [out] (the paper's s_i = ‖W_i‖ up to the constant √in,
    which makes W̃ = W/s unit-RMS per row so that one Adam learning rate suits every layer width).
    Zero rows get s = 1; scales are rounded to fp16 (what is stored) and kept >= 2⁻¹⁴."""
    s = W.norm(dim=1) / math.sqrt(W.shape[1])
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s.clamp_min(FP16_TINY).to(torch.float16).to(W.dtype)


def _vectors(W: torch.Tensor, dim: int) -> torch.Tensor:
    """[out, in] -> group-major vectors [G·out, d] (group 0 of every row first, then group 1, ...),
    so that "the first g groups" is a prefix of the rows."""
    out, n_in = W.shape
    return W.reshape(out, n_in // dim, dim).transpose(0, 1).reshape(-1, dim)


def _unvectors(X: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    """Inverse of ``_vectors`` for a prefix of n groups: [n·out, d] -> [out, n·d]."""
    n = X.shape[0] // out
    return X.reshape(n, out, dim).transpose(0, 1).reshape(out, n * dim)


def _vector_weights(s: torch.Tensor, Hdiag: torch.Tensor, dim: int) -> torch.Tensor:
    """k-means sample weights s_i² · mean(diag H over group g), group-major [G·out]."""
    hg = Hdiag.reshape(-1, dim).mean(1).clamp_min(0)  # [G]
    return (hg[:, None] * (s * s)[None, :]).reshape(-1)


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
    X = _vectors(W / s[:, None], dim)
    C, a, _ = kmeans(X, 1 << codebook_bits, iters=kmeans_iters, seed=seed,
                     weights=_vector_weights(s, Hdiag, dim), **_kmeans_opts(codebook_bits))
    R = W - s[:, None] * _unvectors(C[a], out, dim)
    if variant == "residual":
        return (R * R * Hdiag[None, :]).mean(0), C
    if variant == "hessian_max":
        if H is None:
            Hinv_diag = torch.ones_like(Hdiag)
        else:
            Hd = H.to(torch.float64).clone()
            dead = torch.diagonal(Hd) == 0
            Hd[dead, dead] = 1.0
            Hd += damp * torch.diagonal(Hd).mean() * torch.eye(n_in, dtype=Hd.dtype, device=Hd.device)
            Hinv_diag = torch.diagonal(torch.cholesky_inverse(torch.linalg.cholesky(Hd))).to(W)
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


def objective(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> torch.Tensor:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ) as a differentiable scalar (H = None: ‖W − Ŵ‖²)."""
    R = W - W_hat
    return (R * R).sum() if H is None else ((R @ H) * R).sum()


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
    norm = float(objective(W, torch.zeros_like(W), H).clamp_min(1e-30))
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
        return float(objective(W, sc[:, None] * decode_additive(bk, cd, G), H))

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


# ----------------------------------------------------------------------------------------------
# Stored form
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CRVQWeight(QuantizedWeight):
    """Additive codes with optional channel permutation (CRVQ; AQLM when ``perm`` is None).

    codes: packed uint8 codes of codebook k ([out, n_k] at code_bits[k] bits each);
    codebooks: fp16 [2^e_k, d]; scales: fp16 [out]; perm: packed uint8 permutation of the input
    channels (position p of the permuted weight holds original channel perm[p]) or None.
    ``diagnostics`` carries the quantizer's per-channel errors and loss curve for ``stats()``; it is
    not part of the stored state.
    """

    codes: tuple[torch.Tensor, ...]
    codebooks: tuple[torch.Tensor, ...]
    scales: torch.Tensor
    perm: torch.Tensor | None
    out_features: int
    in_features: int
    dim: int
    code_bits: tuple[int, ...]
    code_groups: tuple[int, ...]
    method_name: str = "crvq"
    diagnostics: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    perm_index: torch.Tensor | None = field(init=False, compare=False, repr=False)
    inv_perm: torch.Tensor | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # the permutation is unpacked, and its inverse computed, once when the weight is loaded
        if self.perm is None:
            idx = inv = None
        else:
            idx = unpack(self.perm, permutation_bits(self.in_features), (self.in_features,))
            inv = torch.empty_like(idx)
            inv[idx] = torch.arange(self.in_features, device=idx.device)
        object.__setattr__(self, "perm_index", idx)
        object.__setattr__(self, "inv_perm", inv)

    @property
    def method(self) -> str:  # type: ignore[override]
        return self.method_name

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def num_groups(self) -> int:
        return self.in_features // self.dim

    def unpacked_codes(self) -> list[torch.Tensor]:
        """codes_k as int64 [out, n_k]."""
        return [unpack(p, e, (self.out_features, n))
                for p, e, n in zip(self.codes, self.code_bits, self.code_groups)]

    def dequantize_permuted(self, num_books: int | None = None) -> torch.Tensor:
        """s ⊙ Σ_k C_k[b_k] in the permuted column order, [out, in] float32 (differentiable in
        the codebooks and scales). ``num_books`` = use only the first codebooks (1 = basic only)."""
        books = [C.to(torch.float32) for C in self.codebooks][:num_books]
        codes = self.unpacked_codes()[:num_books]
        return self.scales.to(torch.float32)[:, None] * decode_additive(books, codes, self.num_groups)

    def dequantize(self) -> torch.Tensor:
        Wp = self.dequantize_permuted()
        return Wp if self.inv_perm is None else Wp[:, self.inv_perm.to(Wp.device)]

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """y = x Ŵᵀ + b. The columns stay permuted: y = x[..., P] · Ŵ_Pᵀ (a gather of x, no
        inverse permutation of the weight). Up to ``LUT_MAX_TOKENS`` rows of x (token-by-token
        generation) go through the lookup-table path, which never decodes the weight."""
        if self.perm_index is not None:
            x = x.index_select(-1, self.perm_index.to(x.device))
        if x.numel() // self.in_features <= LUT_MAX_TOKENS:
            y = self._lut_matmul(x)
            return y if bias is None else y + bias
        Wp = self.dequantize_permuted().to(device=x.device, dtype=x.dtype)
        return torch.nn.functional.linear(x, Wp, bias)

    def _lut_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """Lookup-table product for permuted x [..., in]:

            y_ti = s_i · Σ_k Σ_{g < n_k} T_k[t, g, b_ikg],   T_k[t, g, c] = ⟨x_{t,g}, C_k[c]⟩,

        T_k costs T·n_k·K_k·d multiply-adds, the sum T·out·Σ_k n_k gathers (no [out, in] decode)."""
        lead = x.shape[:-1]
        xg = x.reshape(-1, self.num_groups, self.dim)  # [T, G, d]
        y = None
        for C, b in zip(self.codebooks, self.unpacked_codes()):
            n, K = b.shape[1], C.shape[0]
            table = torch.einsum("tgd,kd->tgk", xg[:, :n], C.to(device=x.device, dtype=x.dtype))
            flat = (b.to(x.device) + torch.arange(n, device=x.device)[None, :] * K).reshape(-1)
            part = table.reshape(table.shape[0], n * K).index_select(1, flat)
            part = part.view(-1, self.out_features, n).sum(-1)  # [T, out]
            y = part if y is None else y + part
        y = y * self.scales.to(device=x.device, dtype=x.dtype)
        return y.reshape(*lead, self.out_features)

    def bit_breakdown(self) -> dict[str, int]:
        """Counted from the stored tensors (tests check it equals ``bit_breakdown_for``)."""
        return {
            "codes_basic": self.out_features * self.code_groups[0] * self.code_bits[0],
            "codes_extended": sum(self.out_features * n * e
                                  for n, e in zip(self.code_groups[1:], self.code_bits[1:])),
            "codebooks": fp16_bits(*self.codebooks),
            "scales": fp16_bits(self.scales),
            "permutation": 0 if self.perm is None else self.in_features * permutation_bits(self.in_features),
        }

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"scales": self.scales}
        for k, (p, C) in enumerate(zip(self.codes, self.codebooks)):
            tensors[f"codes_{k}"] = p
            tensors[f"codebook_{k}"] = C
        if self.perm is not None:
            tensors["perm"] = self.perm
        meta = {"out_features": self.out_features, "in_features": self.in_features, "dim": self.dim,
                "code_bits": list(self.code_bits), "code_groups": list(self.code_groups),
                "method_name": self.method_name}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "CRVQWeight":
        M = len(meta["code_bits"])
        return cls(codes=tuple(tensors[f"codes_{k}"] for k in range(M)),
                   codebooks=tuple(tensors[f"codebook_{k}"] for k in range(M)),
                   scales=tensors["scales"], perm=tensors.get("perm"),
                   out_features=meta["out_features"], in_features=meta["in_features"], dim=meta["dim"],
                   code_bits=tuple(meta["code_bits"]), code_groups=tuple(meta["code_groups"]),
                   method_name=meta["method_name"])

    def stats(self) -> dict[str, Any]:
        """Scalars (per-layer columns) and tables: "channels", "codebooks" (non-zero usage counts),
        "curve" (loss per epoch; only right after quantization)."""
        parts = self.bit_breakdown()
        total = sum(parts.values())
        g = self.code_groups[1] if len(self.code_groups) > 1 and self.perm is not None else 0
        out: dict[str, Any] = {
            "num_codebooks": len(self.codebooks),
            "critical_groups": g,
            "critical_ratio_used": g * self.dim / self.in_features,
            "codebook_bit_share": parts["codebooks"] / total,
        }
        usage = []
        for k, b in enumerate(self.unpacked_codes()):
            counts = torch.bincount(b.reshape(-1), minlength=1 << self.code_bits[k])
            nz = counts.nonzero().flatten()
            usage += [{"codebook": k, "code": int(c), "count": int(counts[c])} for c in nz]
            p = counts[nz].double() / counts.sum()
            out[f"codebook_{k}_entropy_bits"] = float(-(p * p.log2()).sum())
        out["codebooks"] = usage
        diag = self.diagnostics or {}
        pos = (self.inv_perm if self.inv_perm is not None else torch.arange(self.in_features)).tolist()
        crit_cols = g * self.dim
        rows = []
        for j in range(self.in_features):
            r = {"channel": j, "rank": pos[j], "critical": pos[j] < crit_cols}
            if "importance_rank" in diag:
                r["importance_rank"] = int(diag["importance_rank"][j])
            for key in ("importance", "err_basic", "err_full"):
                if key in diag:
                    r[key] = float(diag[key][j])
            rows.append(r)
        out["channels"] = rows
        if "curve" in diag:
            out["curve"] = list(diag["curve"])
        for key in ("rel_error", "epochs_run", "time_s"):
            if key in diag:
                out[key] = diag[key]
        return out


# ----------------------------------------------------------------------------------------------
# Quantizers
# ----------------------------------------------------------------------------------------------
def _prepare(W: torch.Tensor, H: torch.Tensor | None, cfg) -> tuple[torch.Tensor, torch.Tensor | None]:
    if W.dim() != 2:
        raise ValueError(f"W must be a 2-D [out, in] matrix, got shape {tuple(W.shape)}")
    _check_shape(W.shape[0], W.shape[1], cfg.dim)
    W = W.detach().to(torch.float32)
    if H is not None:
        if tuple(H.shape) != (W.shape[1], W.shape[1]):
            raise ValueError(f"H must be [in, in] = [{W.shape[1]}, {W.shape[1]}], got {tuple(H.shape)}")
        H = H.detach().to(device=W.device, dtype=torch.float32)
    return W, H


def _per_channel_error(W: torch.Tensor, W_hat: torch.Tensor, Hdiag: torch.Tensor) -> torch.Tensor:
    """mean_i (W − Ŵ)_ij² · H_jj, [in] (the diagonal part of L per input channel)."""
    R = W - W_hat
    return (R * R).mean(0) * Hdiag


def _fit_and_pack(W: torch.Tensor, H: torch.Tensor | None, s: torch.Tensor, perm: torch.Tensor | None,
                  books: list[torch.Tensor], codes: list[torch.Tensor], code_bits: list[int],
                  cfg, method_name: str, extra: dict[str, Any], t0: float) -> CRVQWeight:
    """Run the alternation on the permuted W, then pack the stored form and its diagnostics."""
    out, n_in = W.shape
    Wp = W if perm is None else W[:, perm]
    Hp = H if H is None or perm is None else H[perm][:, perm]
    fit = fit_additive(Wp, Hp, s, books, codes, cfg.epochs, cfg.tol, cfg.adam_steps, cfg.lr,
                       cfg.beam_width)
    perm_packed = None if perm is None else pack(perm, permutation_bits(n_in))
    q = CRVQWeight(
        codes=tuple(pack(b, e) for b, e in zip(fit.codes, code_bits)),
        codebooks=tuple(C.to(torch.float16).contiguous() for C in fit.codebooks),
        scales=fit.s.to(torch.float16).contiguous(), perm=perm_packed,
        out_features=out, in_features=n_in, dim=cfg.dim, code_bits=tuple(code_bits),
        code_groups=tuple(int(b.shape[1]) for b in fit.codes), method_name=method_name,
    )
    Hdiag = W.new_ones(n_in) if H is None else torch.diagonal(H).to(W)
    W_hat = q.dequantize()
    inv = q.inv_perm
    basic = q.dequantize_permuted(num_books=1)
    basic = basic if inv is None else basic[:, inv]
    den = float(objective(W, torch.zeros_like(W), H).clamp_min(1e-30))
    diagnostics = {
        **extra,
        "err_full": _per_channel_error(W, W_hat, Hdiag).tolist(),
        "err_basic": _per_channel_error(W, basic, Hdiag).tolist(),
        "curve": fit.curve,
        "epochs_run": len(fit.curve) - 1,
        "rel_error": float(objective(W, W_hat, H)) / den,
        "time_s": time.perf_counter() - t0,
    }
    object.__setattr__(q, "diagnostics", diagnostics)
    return q


def quantize_crvq(W: torch.Tensor, H: torch.Tensor | None, cfg: CRVQConfig) -> CRVQWeight:
    """CRVQ for one layer. W: [out, in]; H: [in, in] = XᵀX/n or None (plain MSE)."""
    t0 = time.perf_counter()
    W, H = _prepare(W, H, cfg)
    out, n_in = W.shape
    d = cfg.dim
    G = n_in // d
    code_bits, code_groups, permuted = _books_for(n_in, cfg)
    g = code_groups[1] if permuted else 0
    s = row_scales(W)
    I, C_imp = channel_importance(W, H, s, d, cfg.codebook_bits, cfg.importance, cfg.kmeans_iters,
                                  cfg.seed)
    perm = channel_order(I, g * d, cfg.reorder) if permuted else None
    Wp = W if perm is None else W[:, perm]
    Hdiag = W.new_ones(n_in) if H is None else torch.diagonal(H).to(W)
    Hdiag_p = Hdiag if perm is None else Hdiag[perm]
    X = _vectors(Wp / s[:, None], d)  # [G·out, d], group-major
    w = _vector_weights(s, Hdiag_p, d)
    # basic codebook: k-means on every vector, warm-started from the importance codebook
    C0, a0, _ = kmeans(X, 1 << cfg.codebook_bits, iters=cfg.kmeans_iters, seed=cfg.seed, weights=w,
                       C0=C_imp, **_kmeans_opts(cfg.codebook_bits))
    books, codes = [C0], [a0.reshape(G, out).T.contiguous()]
    if g:
        n = g * out  # the critical vectors are the first g groups: a prefix of the group-major rows
        ext, ext_codes = residual_kmeans(X[:n] - C0[a0[:n]], [1 << e for e in code_bits[1:]],
                                         iters=cfg.kmeans_iters, seed=cfg.seed + 1, weights=w[:n],
                                         **_kmeans_opts(cfg.extended_bits))
        books += ext
        codes += [a.reshape(g, out).T.contiguous() for a in ext_codes]
    order = torch.argsort(-I, stable=True)
    importance_rank = torch.empty_like(order)
    importance_rank[order] = torch.arange(n_in)
    extra = {"importance": I.tolist(), "importance_rank": importance_rank.tolist()}
    return _fit_and_pack(W, H, s, perm, books, codes, code_bits, cfg, "crvq", extra, t0)


def quantize_aqlm(W: torch.Tensor, H: torch.Tensor | None, cfg: AQLMConfig) -> CRVQWeight:
    """AQLM for one layer: ``num_codebooks`` codebooks on every vector, residual k-means init."""
    t0 = time.perf_counter()
    W, H = _prepare(W, H, cfg)
    out, n_in = W.shape
    d = cfg.dim
    G = n_in // d
    s = row_scales(W)
    Hdiag = W.new_ones(n_in) if H is None else torch.diagonal(H).to(W)
    X = _vectors(W / s[:, None], d)
    books, flat = residual_kmeans(X, [1 << cfg.codebook_bits] * cfg.num_codebooks,
                                  iters=cfg.kmeans_iters, seed=cfg.seed,
                                  weights=_vector_weights(s, Hdiag, d),
                                  **_kmeans_opts(cfg.codebook_bits))
    codes = [a.reshape(G, out).T.contiguous() for a in flat]
    return _fit_and_pack(W, H, s, None, books, codes, [cfg.codebook_bits] * cfg.num_codebooks, cfg,
                         "aqlm", {}, t0)


# ----------------------------------------------------------------------------------------------
# Block fine-tuning (codes frozen)
# ----------------------------------------------------------------------------------------------
def _call_block(block: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    y = block(x, **kwargs)
    return y[0] if isinstance(y, (tuple, list)) else y


def finetune_block(block: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                   block_kwargs: dict[str, Any], cfg: CRVQConfig,
                   progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Train the codebooks, scales and the block's norm weights (codes frozen) so that the
    quantized block reproduces the original block's outputs (CRVQ §3.4, AQLM's block tuning).

    block: a decoder layer whose linears are ``QuantizedLinear`` holding CRVQ/AQLM weights;
    inputs/targets: lists of [batch, seq, hidden] tensors (targets = original block outputs).
    Loss: ‖block(x) − y‖² / ‖y‖² per window. The last ⌈n/8⌉ windows (at least one when n >= 2) are
    held out; training stops after ``cfg.finetune_steps`` passes over the rest or when the held-out
    loss has not improved for 3 passes; the best state (by held-out loss) is kept. Codebooks and
    scales are trained in fp32 and stored back in fp16.
    """
    from .qlinear import QuantizedLinear

    qlins = [m for m in block.modules()
             if isinstance(m, QuantizedLinear) and m.method in ("crvq", "aqlm")]
    if not qlins or not inputs:
        return {"steps": 0}
    n_val = max(1, math.ceil(len(inputs) / 8)) if len(inputs) >= 2 else 0
    train_idx = list(range(len(inputs) - n_val))
    val_idx = list(range(len(inputs) - n_val, len(inputs))) or train_idx

    trained: list[tuple[nn.Module, str, torch.dtype]] = []
    for m in qlins:
        for name in m.state_names:
            if name == "scales" or name.startswith("codebook_"):
                buf = getattr(m, name)
                trained.append((m, name, buf.dtype))
                setattr(m, name, buf.detach().to(torch.float32).requires_grad_(True))
    norm_params = [p for mod in block.modules() if "norm" in type(mod).__name__.lower()
                   for p in mod.parameters(recurse=False)]
    grad_flags = {p: p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    for p in norm_params:
        p.requires_grad_(True)
    params = [getattr(m, name) for m, name, _ in trained] + norm_params
    opt = torch.optim.Adam(params, lr=cfg.finetune_lr)

    def window_loss(i: int) -> torch.Tensor:
        y = targets[i]
        return ((_call_block(block, inputs[i], block_kwargs) - y) ** 2).sum() / (y * y).sum().clamp_min(1e-30)

    def val_loss() -> float:
        with torch.no_grad():
            return sum(float(window_loss(i)) for i in val_idx) / len(val_idx)

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    before = best = val_loss()
    best_state, best_step, stale, steps = snapshot(), 0, 0, 0
    try:
        for step in range(1, cfg.finetune_steps + 1):
            for i in train_idx:
                opt.zero_grad(set_to_none=True)
                window_loss(i).backward()
                opt.step()
            steps = step
            cur = val_loss()
            if progress is not None:
                progress(step, cfg.finetune_steps, f"block fine-tuning: held-out loss {cur:.4g}")
            if cur < best:
                best, best_state, best_step, stale = cur, snapshot(), step, 0
            else:
                stale += 1
                if stale >= 3:
                    break
    finally:
        with torch.no_grad():
            for p, v in zip(params, best_state):
                p.copy_(v)
        for (m, name, dtype), p in zip(trained, params):
            setattr(m, name, p.detach().to(dtype))
            if hasattr(m, "set_cache"):
                m.set_cache(m.cache)
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
    return {"val_before": before, "val_after": best, "best_step": best_step, "steps_run": steps}


# ----------------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------------
METHOD_ENTRIES = [
    Method("crvq", CRVQConfig, quantize_crvq, CRVQWeight,
           "CRVQ: additive vector quantization with extended codebooks on the critical input channels",
           estimate_bits=estimate_bits, finetune_block=finetune_block),
    Method("aqlm", AQLMConfig, quantize_aqlm, CRVQWeight,
           "AQLM: additive vector quantization, M codebooks on every vector (CRVQ with λ = 0)",
           estimate_bits=estimate_bits),
]

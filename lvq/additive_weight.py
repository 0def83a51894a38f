"""The stored form of AQLM and CRVQ layers: packed additive codes, fp16 codebooks and scales,
and CRVQ's input-channel permutation (docs/algorithms.md, "CRVQ").

    Ŵ[:, P] = s ⊙ Σ_k C_k[b_k]          (codebook k on the first n_k vector-groups)

``linear`` keeps the columns permuted (it gathers x instead); ``kernel`` never decodes the matrix:
per token it builds each codebook's table of inner products with the input slices and sums table
entries indexed by the codes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .beam import decode_additive
from .packing import unpack
from .qweight import QuantizedWeight, fp16_bits

def permutation_bits(in_features: int) -> int:
    """Width of one stored permutation index: ⌈log₂ in⌉ (at least 1)."""
    return max(1, math.ceil(math.log2(in_features)))


def bit_breakdown_for(out_features: int, in_features: int, dim: int, code_bits: list[int],
                      code_groups: list[int], permuted: bool) -> dict[str, int]:
    """docs/algorithms.md's formula (CRVQ, bits per weight), term by term, on the real shapes:

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



@dataclass(frozen=True)
class CRVQWeight(QuantizedWeight):
    """Additive codes with optional channel permutation (CRVQ; AQLM when ``perm`` is None).

    codes: packed uint8 codes of codebook k ([out, n_k] at code_bits[k] bits each);
    codebooks: fp16 [2^e_k, d]; scales: fp16 [out]; perm: packed uint8 permutation of the input
    channels (position p of the permuted weight holds original channel perm[p]) or None.
    ``diagnostics`` carries the quantizer's per-channel errors and loss curve for ``stats()``; it is
    not part of the stored state.
    """

    trainable = ("scales", "codebook_")  # names, or prefixes ending in "_"

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
        inverse permutation of the weight)."""
        if self.perm_index is not None:
            x = x.index_select(-1, self.perm_index.to(x.device))
        Wp = self.dequantize_permuted().to(device=x.device, dtype=x.dtype)
        return torch.nn.functional.linear(x, Wp, bias)

    def train_forward(self):
        """s ⊙ Σ_k C_k[b_k] with the codes unpacked once; codebooks and scales trainable; the
        columns stay permuted (x is gathered)."""
        codes = self.unpacked_codes()
        perm = self.perm_index
        K = len(codes)

        def forward(x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
            if perm is not None:
                x = x.index_select(-1, perm.to(x.device))
            books = [t[f"codebook_{k}"].to(torch.float32) for k in range(K)]
            Wp = t["scales"].to(torch.float32)[:, None] * decode_additive(books, codes, self.num_groups)
            return torch.nn.functional.linear(x, Wp.to(x.dtype))
        return forward

    def kernel(self):
        """Per token, each codebook's inner products with the input slices form a lookup table;
        the output is a gather-sum over the codes (lvq/kernels/additive.py). Many tokens (a
        prompt's prefill) decode Ŵ for the call and let torch multiply on every thread."""
        from . import kernels  # numba is heavy and only the CPU decoding path needs it

        prepared = kernels.prepare_additive(list(self.codes), list(self.codebooks), self.scales,
                                            self.perm_index, list(self.code_bits),
                                            self.out_features, self.in_features)
        return kernels.AdditiveKernel(prepared, dense=self.linear)

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

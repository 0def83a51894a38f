"""Scalar baselines: RTN and GPTQ, on the same per-group asymmetric min-max grid.

Both store, per (row, group of ``group_size`` input columns), an fp16 scale ``s`` and an fp16
zero point ``z`` (in code units), and per weight a ``bits``-bit code ``q``:

    Ŵ_ij = (q_ij − z_{i,g(j)}) · s_{i,g(j)}

RTN rounds every weight to its nearest grid point. GPTQ (Frantar et al., 2022, Algorithm 1)
quantizes columns left to right and feeds each column's rounding error forward onto the columns
not yet quantized through the Cholesky factor of H⁻¹, so that the layer output error
tr((W − Ŵ) H (W − Ŵ)ᵀ) stays small.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import GPTQConfig, RTNConfig
from .groups import group_bounds, num_groups
from .hessian import inverse_hessian_cholesky
from .packing import pack, unpack
from .qweight import Method, QuantizedWeight, fp16_bits


# ----------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------
def minmax_params(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min-max grid for each row of x [rows, cols] -> (scale [rows], zero [rows]).

    Both are rounded to fp16 (what is stored) before being returned, so that quantizing with
    them and decoding from storage agree exactly.
    """
    maxq = (1 << bits) - 1
    xmin = x.min(dim=1).values
    xmax = x.max(dim=1).values
    scale = (xmax - xmin) / maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant rows: any scale works
    scale = scale.to(torch.float16).to(x.dtype)
    scale = torch.where(scale > 0, scale, torch.full_like(scale, 2.0**-24))  # fp16 underflow
    zero = (-xmin / scale).to(torch.float16).to(x.dtype)
    return scale, zero


def round_to_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes q = clamp(round(x / s + z), 0, 2^b − 1) for x [rows, cols], s, z [rows] or [rows, cols]."""
    if scale.dim() == 1:
        scale, zero = scale[:, None], zero[:, None]
    return torch.clamp(torch.round(x / scale + zero), 0, (1 << bits) - 1)


# ----------------------------------------------------------------------------------------------
# Stored form
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RTNWeight(QuantizedWeight):
    """Per-group scalar codes. codes: packed uint8; scale, zero: fp16 [out, n_groups]."""

    trainable = ("scale", "zero")

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    out_features: int
    in_features: int
    method_name: str = "rtn"

    def _col_groups(self, device) -> torch.Tensor:
        return torch.arange(self.in_features, device=device) // self.group_size

    def dequantize(self) -> torch.Tensor:
        q = unpack(self.codes, self.bits, self.shape).to(torch.float32)
        g = self._col_groups(q.device)
        s = self.scale.to(torch.float32)[:, g]
        z = self.zero.to(torch.float32)[:, g]
        return (q - z) * s

    def bit_breakdown(self) -> dict[str, int]:
        return {
            "codes": self.out_features * self.in_features * self.bits,
            "scales": fp16_bits(self.scale),
            "zeros": fp16_bits(self.zero),
        }

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        meta = {"bits": self.bits, "group_size": self.group_size,
                "out_features": self.out_features, "in_features": self.in_features,
                "method_name": self.method_name}
        return {"codes": self.codes, "scale": self.scale, "zero": self.zero}, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "RTNWeight":
        return cls(codes=tensors["codes"], scale=tensors["scale"], zero=tensors["zero"], **meta)

    def stats(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size}

    def train_forward(self):
        """Ŵ = (q − z)·s with the codes q unpacked once; z and s (per row and group) trainable."""
        q = unpack(self.codes, self.bits, self.shape).to(torch.float32)
        g = self._col_groups(q.device)

        def forward(x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
            W = (q - t["zero"][:, g]) * t["scale"][:, g]
            return torch.nn.functional.linear(x, W.to(x.dtype))
        return forward

    def kernel(self):
        from . import kernels  # numba is heavy and only the CPU decoding path needs it

        prepared = kernels.prepare_scalar(self.codes, self.scale, self.zero, self.bits, self.group_size,
                                          self.out_features, self.in_features)
        return kernels.GroupedKernel(prepared)


def _pack_weight(Q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, cfg, method: str) -> RTNWeight:
    return RTNWeight(
        codes=pack(Q.to(torch.int64), cfg.bits),
        scale=scale.to(torch.float16).contiguous(),
        zero=zero.to(torch.float16).contiguous(),
        bits=cfg.bits, group_size=cfg.group_size,
        out_features=Q.shape[0], in_features=Q.shape[1], method_name=method,
    )


def estimate_bits(out_features: int, in_features: int, cfg) -> float:
    """Bits per weight of RTN/GPTQ storage for an [out, in] layer: codes + fp16 scale and zero."""
    return cfg.bits + 32 * num_groups(in_features, cfg.group_size) / in_features


# ----------------------------------------------------------------------------------------------
# RTN
# ----------------------------------------------------------------------------------------------
def quantize_rtn(W: torch.Tensor, H: torch.Tensor | None, cfg: RTNConfig) -> RTNWeight:
    """Round-to-nearest. W: [out, in]; H is ignored (RTN does not look at data)."""
    W = W.detach().to(torch.float32)
    out_f, in_f = W.shape
    bounds = group_bounds(in_f, cfg.group_size)
    Q = torch.empty_like(W)
    scale = W.new_empty(out_f, len(bounds))
    zero = W.new_empty(out_f, len(bounds))
    for g, (a, b) in enumerate(bounds):
        s, z = minmax_params(W[:, a:b], cfg.bits)
        Q[:, a:b] = round_to_grid(W[:, a:b], s, z, cfg.bits)
        scale[:, g], zero[:, g] = s, z
    return _pack_weight(Q, scale, zero, cfg, "rtn")


# ----------------------------------------------------------------------------------------------
# GPTQ
# ----------------------------------------------------------------------------------------------
def quantize_gptq(W: torch.Tensor, H: torch.Tensor | None, cfg: GPTQConfig) -> RTNWeight:
    """GPTQ, Algorithm 1 of Frantar et al. (2022), with groups and optional activation order.

    W: [out, in]; H: [in, in] = XᵀX/n (None -> identity, which reduces GPTQ to RTN).
    Groups of ``group_size`` natural columns get their min-max grid when their first column is
    reached (from the error-updated weights), as in the reference implementation. With
    ``act_order`` the columns are processed by decreasing diag(H) and the grids are fixed up front
    from the original weights ("static groups"), so storage needs no column-to-group index.
    """
    W = W.detach().to(torch.float32).clone()
    out_f, in_f = W.shape
    if H is None:
        H = torch.eye(in_f, dtype=torch.float64, device=W.device)
    U, dead = inverse_hessian_cholesky(H, cfg.damp)
    W[:, dead] = 0.0
    gs = cfg.group_size
    bounds = group_bounds(in_f, gs)
    scale = W.new_empty(out_f, len(bounds))
    zero = W.new_empty(out_f, len(bounds))

    if cfg.act_order:
        perm = torch.argsort(torch.diag(H.to(torch.float64)), descending=True)
        for g, (a, b) in enumerate(bounds):
            scale[:, g], zero[:, g] = minmax_params(W[:, a:b], cfg.bits)
        Hp = H.to(torch.float64)[perm][:, perm]
        U, _ = inverse_hessian_cholesky(Hp, cfg.damp)
        W = W[:, perm]
    else:
        perm = torch.arange(in_f, device=W.device)
    Uf = U.to(torch.float32)
    # Blocks hold whole groups so a group's grid is computed from fully updated columns.
    block = gs * max(1, cfg.block_size // gs) if gs <= cfg.block_size else gs

    Q = torch.zeros_like(W)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        U1 = Uf[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if cfg.act_order:
                g = int(perm[col]) // gs
            else:
                g = col // gs
                if col % gs == 0:
                    scale[:, g], zero[:, g] = minmax_params(W1[:, i:i + gs], cfg.bits)
            w = W1[:, i]
            q = round_to_grid(w[:, None], scale[:, g], zero[:, g], cfg.bits)[:, 0]
            Q1[:, i] = q
            w_hat = (q - zero[:, g]) * scale[:, g]
            err = (w - w_hat) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Uf[i1:i2, i2:]

    if cfg.act_order:
        inv = torch.argsort(perm)
        Q = Q[:, inv]
    return _pack_weight(Q, scale, zero, cfg, "gptq")


METHODS = [
    Method("rtn", RTNConfig, quantize_rtn, RTNWeight,
           "round-to-nearest, asymmetric min-max per group (scalar baseline)",
           estimate_bits=estimate_bits),
    Method("gptq", GPTQConfig, quantize_gptq, RTNWeight,
           "GPTQ: column-wise rounding with error feedback through the inverse Hessian",
           estimate_bits=estimate_bits),
]

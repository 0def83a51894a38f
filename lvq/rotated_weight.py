"""Incoherence processing for any method: quantize a randomly rotated weight (QuIP#-style).

With U [out, out] and V [in, in] randomized Hadamard transforms (lvq/rotation.py):

    W' = U W Vᵀ,   H' = V H Vᵀ,   Q(W') = method.quantize(W', H', cfg)
    y  = Uᵀ Q(W') (V x) + b                      (Chee et al. 2023; Tseng et al. 2024)

The layer objective is unchanged, tr(W H Wᵀ) = tr(W' H' W'ᵀ), but outlier rows and columns of W
are spread over all entries of W' (close to i.i.d. Gaussian), which is what lattice codebooks and
scalar grids quantize best. U and V are stored as their sign vectors (one bit per entry, counted
in ``bits_per_weight``) plus the transform's construction; they are applied on the fly, never as
dense matrices. With ``train_rotation`` the sign vectors are kept as fp16 scales that
fine-tuning may train (as QuIP# does; 16 bits per entry, counted). docs/algorithms.md
("Incoherence processing") has the measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .additive_weight import CRVQWeight
from .baselines import RTNWeight
from .glvq_weight import GLVQWeight
from .qweight import QuantizedWeight
from .rotation import RHT, rotate_hessian, rotate_weight, unrotate_weight

INNER_CLASSES: dict[str, type[QuantizedWeight]] = {c.__name__: c for c in (RTNWeight, GLVQWeight, CRVQWeight)}
_PREFIX = ("rot_out_", "rot_in_")
_SCALES = tuple(p + "scales" for p in _PREFIX)  # the sign vectors kept as trainable fp16 scales


def rotations(out_features: int, in_features: int, seed: int) -> tuple[RHT, RHT]:
    """(U, V) of a layer: seeded, so every layer of the same shape shares them (and layers that
    read the same input rotate it the same way)."""
    return RHT.random(out_features, seed=2 * seed + 1), RHT.random(in_features, seed=2 * seed + 2)


@dataclass(frozen=True)
class RotatedWeight(QuantizedWeight):
    """A method's stored form of W' = U W Vᵀ, plus U (order out) and V (order in)."""

    inner: QuantizedWeight
    U: RHT
    V: RHT
    out_features: int
    in_features: int
    method_name: str
    scales: bool = False  # U, V's sign vectors stored as fp16 scales (trainable)
    diagnostics: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def trainable(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.inner.trainable) + (_SCALES if self.scales else ())

    def dequantize(self) -> torch.Tensor:
        """Uᵀ Q(W') V, [out, in] float32."""
        return unrotate_weight(self.inner.dequantize(), self.U, self.V)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = self.U.apply_t(self.inner.linear(self.V.apply(x)))
        return y if bias is None else y + bias

    def train_forward(self):
        inner = self.inner.train_forward()
        U, V = self.U, self.V

        def forward(x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
            u, v = U, V
            if self.scales:  # the trained sign vectors
                u, v = (RHT(r.spec, t[name].to(torch.float32)) for r, name in zip((U, V), _SCALES))
            return u.apply_t(inner(v.apply(x), t))
        return forward

    def kernel(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        inner = self.inner.kernel()
        if inner is None:
            return None
        from .kernels.hadamard import RotatedKernel, prepare_rht  # numba: only the CPU decoding path

        # y = Uᵀ Q(W') (V x)
        return RotatedKernel(inner, prepare_rht(self.V), prepare_rht(self.U, transpose=True))

    def bit_breakdown(self) -> dict[str, int]:
        n = self.out_features + self.in_features
        return {**self.inner.bit_breakdown(), "rotation": 16 * n if self.scales else n}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, inner_meta = self.inner.state()
        rot_meta = {}
        for prefix, rht in zip(_PREFIX, (self.U, self.V)):
            t, m = rht.to_state()
            if self.scales:
                t, m = {"scales": rht.signs.to(torch.float16)}, {**m, "signs": "scales"}
            tensors.update({prefix + k: v for k, v in t.items()})
            rot_meta[prefix.rstrip("_")] = m
        meta = {"inner_cls": type(self.inner).__name__, "inner": inner_meta, **rot_meta,
                "out_features": self.out_features, "in_features": self.in_features,
                "method_name": self.method_name}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "RotatedWeight":
        inner_t = {k: v for k, v in tensors.items() if not k.startswith(_PREFIX)}
        U, V = (RHT.from_state({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)},
                               meta[p.rstrip("_")]) for p in _PREFIX)
        inner = INNER_CLASSES[meta["inner_cls"]].from_state(inner_t, meta["inner"])
        return cls(inner=inner, U=U, V=V, out_features=meta["out_features"],
                   in_features=meta["in_features"], method_name=meta["method_name"],
                   scales=meta["rot_out"]["signs"] == "scales")

    def stats(self) -> dict[str, Any]:
        """The inner method's statistics (of the rotated weight), marked as incoherent."""
        return {**self.inner.stats(), "incoherence": True,
                "bits_per_weight": self.bits_per_weight()}


def quantize_rotated(W: torch.Tensor, H: torch.Tensor | None, cfg,
                     quantize: Callable[..., QuantizedWeight]) -> RotatedWeight:
    """Incoherence processing around ``quantize(W', H', cfg)``. W [out, in]; H [in, in] or None."""
    W = W.detach().to(torch.float32)
    U, V = rotations(W.shape[0], W.shape[1], cfg.rotation_seed)
    Wr = rotate_weight(W, U, V)
    Hr = None if H is None else rotate_hessian(H.detach().to(torch.float64), V)
    inner = quantize(Wr, Hr, cfg)
    return RotatedWeight(inner=inner, U=U, V=V, out_features=W.shape[0], in_features=W.shape[1],
                         method_name=inner.method_name, scales=cfg.train_rotation)


def rotation_bits(out_features: int, in_features: int, scales: bool = False) -> int:
    """Stored bits of a layer's two sign vectors (16 each entry when kept as trainable scales)."""
    return (out_features + in_features) * (16 if scales else 1)

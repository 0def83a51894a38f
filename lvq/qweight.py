"""The one interface every method returns: ``quantize(W, H, cfg) -> QuantizedWeight``.

A QuantizedWeight is what is *stored* for one linear layer (packed codes, scales, lattices,
codebooks...) plus the few numbers needed to decode it. It can:

* ``dequantize()``        -> [out, in] float32 tensor, the weight the model computes with;
* ``linear(x, bias)``     -> y = x Wᵀ + b (methods may override with a faster decode-free path);
* ``bit_breakdown()``     -> {component: stored bits}; ``bits_per_weight()`` is its sum / (out·in);
* ``stats()``             -> plain JSON-able data for the dashboard's plots;
* ``state()`` / ``from_state()`` -> (tensors, meta) for safetensors + JSON, no pickle.

Conventions for ``stats()``: a value that is a list of dicts is a *table* (e.g. ``"groups"`` with
one record per weight group, ``"channels"`` with one per input channel, ``"curve"`` with one per
optimisation step); the pipeline stacks these over layers into the run's report tables, adding a
``layer`` column. Scalar values become columns of the per-layer table.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F


class QuantizedWeight(ABC):
    method: ClassVar[str] = ""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features)."""

    @abstractmethod
    def dequantize(self) -> torch.Tensor:
        """The decoded weight, [out, in] float32."""

    @abstractmethod
    def bit_breakdown(self) -> dict[str, int]:
        """Every stored bit, by component (codes, scales, generators, codebooks, tags, ...)."""

    @abstractmethod
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, meta): tensors for safetensors, meta JSON-serialisable."""

    @classmethod
    @abstractmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "QuantizedWeight":
        """Inverse of :meth:`state`."""

    def bits_per_weight(self) -> float:
        out_f, in_f = self.shape
        return sum(self.bit_breakdown().values()) / (out_f * in_f)

    def stats(self) -> dict[str, Any]:
        return {}

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """y = x Ŵᵀ + b for x [..., in]. Default: decode then matmul."""
        W = self.dequantize().to(device=x.device, dtype=x.dtype)
        return F.linear(x, W, bias)


def fp16_bits(*tensors: torch.Tensor) -> int:
    """Storage of tensors kept in fp16: 16 bits per element."""
    return 16 * sum(int(t.numel()) for t in tensors)


def layer_objective(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> float:
    """tr((W - Ŵ) H (W - Ŵ)ᵀ): the output error ‖(W - Ŵ)X‖² per sample (H = XᵀX/n); H=None -> ‖W-Ŵ‖²."""
    D = (W - W_hat).to(torch.float64)
    if H is None:
        return float((D * D).sum())
    return float(((D @ H.to(D)) * D).sum())


def relative_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> float:
    """‖(W - Ŵ)X‖² / ‖WX‖² (with H = I: relative weight MSE)."""
    den = layer_objective(W, torch.zeros_like(W), H)
    return layer_objective(W, W_hat, H) / max(den, 1e-300)

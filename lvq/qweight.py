"""The one interface every method returns, ``quantize(W, H, cfg) -> QuantizedWeight``, and the
``Method`` entry each method module declares for the registry (lvq/methods.py).

A QuantizedWeight is what is *stored* for one linear layer (packed codes, scales, lattices,
codebooks...) plus the few numbers needed to decode it. It can:

* ``dequantize()``        -> [out, in] float32 tensor, the weight the model computes with;
* ``linear(x, bias)``     -> y = x Ŵᵀ + b (decode, then matmul; differentiable);
* ``kernel()``            -> a decode-free product for few tokens on CPU (lvq/kernels), or None;
* ``bit_breakdown()``     -> {component: stored bits}; ``bits_per_weight()`` is its sum / (out·in);
* ``stats()``             -> plain JSON-able data for the dashboard's plots;
* ``state()`` / ``from_state()`` -> (tensors, meta) for safetensors + JSON, no pickle.

``stats()`` conventions: a value that is a list of dicts is a *table* (e.g. ``"groups"`` with one
record per weight group, ``"channels"`` with one per input channel, ``"curve"`` with one per
optimisation step); the pipeline stacks these over layers into the run's report tables (adding a
``layer`` column), so they never go into ``run.json``. Scalar values become columns of the
per-layer table. What the quantizer learned on the way (per-group errors, loss curves) lives in
an optional ``diagnostics`` field that ``stats()`` reads and ``state()`` leaves out.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F


class QuantizedWeight(ABC):
    """Base of the stored forms. Subclasses are frozen dataclasses with the fields
    ``out_features``, ``in_features`` and ``method_name``; ``trainable`` names the state tensors
    that hold continuous parameters (scales, generators, codebooks), which fine-tuning may train
    with the codes frozen."""

    out_features: int
    in_features: int
    method_name: str
    trainable: ClassVar[tuple[str, ...]] = ()

    @property
    def method(self) -> str:
        return self.method_name

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features)."""
        return (self.out_features, self.in_features)

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
        return sum(self.bit_breakdown().values()) / (self.out_features * self.in_features)

    def stats(self) -> dict[str, Any]:
        return {}

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """y = x Ŵᵀ + b for x [..., in]. Default: decode then matmul."""
        W = self.dequantize().to(device=x.device, dtype=x.dtype)
        return F.linear(x, W, bias)

    def train_forward(self) -> Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]:
        """f(x [..., in], tensors) -> x Ŵᵀ, differentiable in ``tensors`` (the trainable state
        tensors by name: scales, generators, codebooks...), with everything that depends only on
        the frozen codes decoded once, here (fine-tuning calls f at every step). Default: the
        whole decode at every call."""
        state, meta = self.state()
        cls = type(self)

        def forward(x: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.linear(x, cls.from_state({**state, **tensors}, meta).dequantize().to(x.dtype))
        return forward

    def kernel(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """f(x [..., in]) -> x Ŵᵀ [..., out] float32 computed from the codes without decoding Ŵ
        (CPU, no autograd; prepared once from the stored form: call this once and keep the
        result). None when the method has no such kernel."""
        return None


def fp16_bits(*tensors: torch.Tensor) -> int:
    """Storage of tensors kept in fp16: 16 bits per element."""
    return 16 * sum(int(t.numel()) for t in tensors)


@dataclass(frozen=True)
class Method:
    """One registry entry, declared by the method's own module.

    quantize(W [out, in], H [in, in] | None, cfg) -> weight_cls instance; estimate_bits(out, in,
    cfg) -> bits per weight from shapes alone (the size estimate shown before a run)."""

    name: str
    config_cls: type
    quantize: Callable[..., QuantizedWeight]
    weight_cls: type[QuantizedWeight]
    description: str
    estimate_bits: Callable[[int, int, Any], float] | None = None

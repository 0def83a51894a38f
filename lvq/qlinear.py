"""QuantizedLinear: an ``nn.Linear`` replacement that holds a method's stored form.

The QuantizedWeight's ``state()`` tensors (packed codes, scales, generators, codebooks, ...) are
registered as buffers under their state names, so ``.to(device)``, ``state_dict()`` and
safetensors saving see exactly what is stored. Each forward rebuilds the light QuantizedWeight
view from the buffers and calls its ``linear`` (decode, then matmul — or a method's faster path).
With ``cache=True`` the decoded weight is kept (non-persistent) for speed, at the memory cost of
a dense copy.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .qweight import QuantizedWeight


class QuantizedLinear(nn.Module):
    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None,
                 cache: bool = False) -> None:
        super().__init__()
        tensors, meta = qweight.state()
        self.weight_cls = type(qweight)
        self.method = qweight.method
        self.meta: dict[str, Any] = meta
        self.out_features, self.in_features = qweight.shape
        self.state_names = list(tensors)
        for name, t in tensors.items():
            self.register_buffer(name, t.detach().clone())
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None
        self.cache = cache
        self._decoded: torch.Tensor | None = None

    def qweight(self) -> QuantizedWeight:
        """The stored form as a QuantizedWeight (views of this module's buffers)."""
        return self.weight_cls.from_state({n: getattr(self, n) for n in self.state_names}, self.meta)

    @property
    def weight(self) -> torch.Tensor:
        """The decoded weight [out, in] (computed on demand; for inspection, not the hot path)."""
        return self.qweight().dequantize()

    def set_cache(self, enabled: bool) -> None:
        self.cache = enabled
        self._decoded = None

    def _apply(self, fn, recurse=True):  # moving the module invalidates the cached dense weight
        self._decoded = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache:
            if self._decoded is None or self._decoded.dtype != x.dtype:
                self._decoded = self.qweight().dequantize().to(device=x.device, dtype=x.dtype)
            return F.linear(x, self._decoded, self.bias)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self.qweight().linear(x, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}"

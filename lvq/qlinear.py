"""QuantizedLinear: an ``nn.Linear`` replacement that holds a method's stored form.

The QuantizedWeight's ``state()`` tensors (packed codes, scales, generators, codebooks, ...) are
registered as buffers under their state names, so ``.to(device)``, ``state_dict()`` and
safetensors saving see exactly what is stored. How a forward computes y = x Ŵᵀ + b is the
module's ``mode``:

* ``"packed"`` — the memory-light path for inference: up to ``KERNEL_MAX_TOKENS`` tokens on CPU
  (token-by-token generation) go through the method's decode-free kernel (lvq/kernels, prepared
  once from the stored form, a few bits per weight); longer inputs (a prompt's prefill) and
  inputs on other devices decode Ŵ for that call and drop it afterwards.
* ``"dense"`` — decode Ŵ once and keep it (fp32 in the activations' dtype: as much memory as the
  original layer; the calibration passes use it, one block at a time).
* ``"decode"`` — decode Ŵ at every call (differentiable).
* ``"train"`` — fine-tuning: the codes are decoded once and each call rebuilds Ŵ from the
  trainable state tensors only (``QuantizedWeight.train_forward``), differentiably.

Any forward with gradients enabled decodes (the kernels have no autograd). ``invalidate()``
drops the derived forms after the stored tensors changed (fine-tuning does this).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .qweight import QuantizedWeight

MODES = ("packed", "dense", "decode", "train")
# Token count up to which "packed" uses the kernel; above it a call decodes Ŵ (prefill).
KERNEL_MAX_TOKENS = 16


class QuantizedLinear(nn.Module):
    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None,
                 mode: str = "decode") -> None:
        super().__init__()
        tensors, meta = qweight.state()
        self.weight_cls = type(qweight)
        self.method = qweight.method
        self.trainable = tuple(qweight.trainable)  # state names (or prefixes) fine-tuning may train
        self.meta: dict[str, Any] = meta
        self.out_features, self.in_features = qweight.shape
        self.state_names = list(tensors)
        for name, t in tensors.items():
            self.register_buffer(name, t.detach().clone())
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None
        self.mode = "decode"
        self.set_mode(mode)

    def qweight(self) -> QuantizedWeight:
        """The stored form as a QuantizedWeight (views of this module's buffers)."""
        return self.weight_cls.from_state({n: getattr(self, n) for n in self.state_names}, self.meta)

    @property
    def weight(self) -> torch.Tensor:
        """The decoded weight [out, in] (computed on demand; for inspection, not the hot path)."""
        return self.qweight().dequantize()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the decoded copy and the prepared kernel (the stored tensors changed)."""
        self._dense: torch.Tensor | None = None
        self._kernel: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._no_kernel = False
        self._train: Callable[..., torch.Tensor] | None = None

    def _apply(self, fn, recurse=True):  # moving the module invalidates what was derived
        self.invalidate()
        return super()._apply(fn, recurse)

    def _run_kernel(self, x: torch.Tensor) -> torch.Tensor | None:
        if self._no_kernel:
            return None
        if self._kernel is None:
            self._kernel = self.qweight().kernel()
            if self._kernel is None:
                self._no_kernel = True
                return None
        y = self._kernel(x.to(torch.float32)).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "train":
            if self._train is None:
                self._train = self.qweight().train_forward()
            tensors = {n: getattr(self, n) for n in self.state_names}
            y = self._train(x, tensors)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        if self.mode == "dense":
            if self._dense is None or self._dense.dtype != x.dtype or self._dense.device != x.device:
                self._dense = self.qweight().dequantize().to(device=x.device, dtype=x.dtype)
            return F.linear(x, self._dense, None if self.bias is None else self.bias.to(x.dtype))
        if (self.mode == "packed" and x.device.type == "cpu" and not torch.is_grad_enabled()
                and x.numel() // self.in_features <= KERNEL_MAX_TOKENS):
            y = self._run_kernel(x)
            if y is not None:
                return y
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self.qweight().linear(x, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"method={self.method}, mode={self.mode}")


def set_inference_mode(model: nn.Module, mode: str) -> int:
    """Set every QuantizedLinear of ``model`` to ``mode`` (see the module docstring); returns how
    many layers changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            m.set_mode(mode)
            n += 1
    return n

"""QuantizedLinear: an ``nn.Linear`` replacement that holds a method's stored form.

The QuantizedWeight's ``state()`` tensors (packed codes, scales, generators, codebooks, ...) are
registered as buffers under their state names, so ``.to(device)``, ``state_dict()`` and
safetensors saving see exactly what is stored. How a forward computes y = x Ŵᵀ + b is the
module's ``mode``:

* ``"packed"`` — the memory-light path for inference: on CPU the method's kernel (lvq/kernels,
  prepared once from the stored form, a few bits per weight) computes on the codes for a few
  tokens (token-by-token generation) and, for many (a prompt's prefill), decodes Ŵ from its
  prepared form for that call; on other devices a call decodes Ŵ from the stored form and drops
  it afterwards.
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

from .memory import release_free_memory
from .qweight import QuantizedWeight

MODES = ("packed", "dense", "decode", "train")
WARM_TOKENS = (1, 4, 24)  # one decoding step, a short prompt, a long one (lvq/kernels/_common.py)


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

    def _prepared_kernel(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The method's CPU kernel, prepared on first use (None if the method has none)."""
        if self._kernel is None and not self._no_kernel:
            self._kernel = self.qweight().kernel()
            self._no_kernel = self._kernel is None
        return self._kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The decode hot path (per layer and token), checked first: a kernel exists only in
        # "packed" mode on the CPU (prepared on first use; invalidate() clears it).
        if x.is_cpu and not torch.is_grad_enabled():
            kernel = self._kernel
            if kernel is None and self.mode == "packed":
                kernel = self._prepared_kernel()
            if kernel is not None:
                y = kernel(x) if x.dtype is torch.float32 else kernel(x.to(torch.float32)).to(x.dtype)
                return y if self.bias is None else y + self.bias.to(y.dtype)
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


def prepare_kernels(model: nn.Module) -> int:
    """Prepare the CPU kernel of every QuantizedLinear in "packed" mode on the CPU now rather
    than at its first forward, and run it on zero inputs (numba compiles, or loads from its
    cache, the paths a chat takes here rather than in the first reply: one token on every layer,
    a few tokens and a prompt on the first layer of each method). Then hand the
    preparation's freed temporaries back to the operating system (lvq/memory.py; glibc keeps
    them otherwise: ~100 MB on the bundled model). Returns how many kernels were prepared."""
    n, warm = 0, set()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QuantizedLinear) and m.mode == "packed" and all(
                    t.device.type == "cpu" for t in m.buffers()):
                kernel = m._prepared_kernel()
                if kernel is not None:
                    for tokens in WARM_TOKENS if m.weight_cls not in warm else WARM_TOKENS[:1]:
                        kernel(torch.zeros(tokens, m.in_features))
                    warm.add(m.weight_cls)
                    n += 1
    release_free_memory()
    return n


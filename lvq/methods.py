"""The methods registry: name -> (config class, quantize function, stored-weight class).

``quantize_layer(W, H, cfg)`` dispatches on ``cfg.method``. Adding a method is one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import baselines
from .errors import LvqError
from .qweight import QuantizedWeight


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    quantize: Callable[..., QuantizedWeight]
    weight_cls: type[QuantizedWeight]
    description: str
    # Bits per weight for an [out, in] layer under cfg, computed from shapes alone (used for the
    # size estimate shown before a run): estimate_bits(out_features, in_features, cfg) -> float
    estimate_bits: Callable[[int, int, Any], float] | None = None
    # Optional per-block hook run by the pipeline after a block's linears are quantized:
    # finetune_block(block, inputs, targets, block_kwargs, cfg, progress) -> dict of metrics
    finetune_block: Callable[..., dict[str, Any]] | None = None


def _registry() -> dict[str, Method]:
    from . import crvq, glvq  # noqa: F401  (imported here so a missing method fails clearly)

    entries = [
        Method("rtn", baselines.RTNConfig, baselines.quantize_rtn, baselines.RTNWeight,
               "round-to-nearest, asymmetric min-max per group (scalar baseline)",
               estimate_bits=baselines.estimate_bits),
        Method("gptq", baselines.GPTQConfig, baselines.quantize_gptq, baselines.RTNWeight,
               "GPTQ: column-wise rounding with error feedback through the inverse Hessian",
               estimate_bits=baselines.estimate_bits),
    ]
    entries += glvq.METHOD_ENTRIES + crvq.METHOD_ENTRIES
    return {m.name: m for m in entries}


def method_names() -> list[str]:
    return list(_registry())


def get_method(name: str) -> Method:
    reg = _registry()
    if name not in reg:
        raise LvqError(f"unknown method {name!r}; available: {', '.join(reg)}")
    return reg[name]


def quantize_layer(W: torch.Tensor, H: torch.Tensor | None, cfg) -> QuantizedWeight:
    """Quantize one weight matrix W [out, in] given H = XᵀX/n [in, in] (None = identity, plain MSE)."""
    if W.dim() != 2:
        raise ValueError(f"W must be a 2-D [out, in] matrix, got shape {tuple(W.shape)}")
    if H is not None and tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be [in, in] = [{W.shape[1]}, {W.shape[1]}], got {tuple(H.shape)}")
    return get_method(cfg.method).quantize(W, H, cfg)

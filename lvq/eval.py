"""Evaluation: perplexity on non-overlapping windows, and size accounting.

Protocol: tokenize the whole text (no special tokens), cut it into consecutive non-overlapping
windows of ``seqlen`` tokens (the incomplete tail is dropped), keep the *last* ``max_windows`` of
them (all if None), and report exp(mean token negative log-likelihood) over every predicted token
(seqlen − 1 per window), computed in the model's dtype (fp32 here). Always quote seqlen, the
number of windows and the text next to the number.

Size: bits per weight of the quantized linears (every stored bit, from each weight's
``bit_breakdown``) and the model's megabytes with every other tensor at 16 bits.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import quantizable_linears
from .data import tokenize
from .errors import LvqError
from .methods import get_method
from .qlinear import QuantizedLinear


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 512, max_windows: int | None = None,
               batch_size: int = 4, progress: Callable[[int, int, str], None] | None = None) -> float:
    """exp(mean NLL) over non-overlapping windows of ``seqlen`` tokens of ``text``."""
    ids = tokenize(tokenizer, text)
    n = ids.numel() // seqlen
    if n == 0:
        raise LvqError(f"evaluation text too short: {ids.numel()} tokens, one window needs {seqlen}")
    windows = ids[: n * seqlen].view(n, seqlen)
    if max_windows is not None:
        windows = windows[-max_windows:]
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    for i in range(0, windows.shape[0], batch_size):
        batch = windows[i:i + batch_size].to(device)
        logits = model(batch, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               batch[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += batch[:, 1:].numel()
        if progress:
            progress(min(i + batch_size, windows.shape[0]), windows.shape[0], "evaluating perplexity")
    return math.exp(nll / count)


def n_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> int:
    """How many windows :func:`perplexity` would use."""
    n = tokenize(tokenizer, text).numel() // seqlen
    return n if max_windows is None else min(n, max_windows)


def model_size(model: nn.Module) -> dict[str, float]:
    """Storage in MB: quantized linears at their real bits, every other parameter at 16 bits.

    Returns bits_per_weight (over the quantized linears), model_mb, fp16_mb (the whole model at
    16 bits, the reference) and quantized_params.
    """
    q_bits = 0.0
    q_params = 0
    other = 0
    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, QuantizedLinear):
            qw = mod.qweight()
            q_bits += sum(qw.bit_breakdown().values())
            q_params += mod.out_features * mod.in_features
            if mod.bias is not None:
                other += mod.bias.numel()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            other += p.numel()
    total_params = other + q_params
    return {
        "bits_per_weight": q_bits / q_params if q_params else 16.0,
        "model_mb": (q_bits + 16 * other) / 8 / 1e6,
        "fp16_mb": 16 * total_params / 8 / 1e6,
        "quantized_params": q_params,
    }


def estimate_size(model_or_config, cfg) -> dict[str, float]:
    """Bits per weight and model MB that ``cfg`` would give, from shapes alone (nothing quantized).

    ``model_or_config``: a model, or a transformers config (shapes from a meta-device model).
    """
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_or_config)
    else:
        model = model_or_config
    method = get_method(cfg.method)
    if method.estimate_bits is None:
        raise ValueError(f"{cfg.method} has no size estimate")
    q_bits, q_params = 0.0, 0
    for _b, _name, mod in quantizable_linears(model):
        q_bits += method.estimate_bits(mod.out_features, mod.in_features, cfg) * mod.out_features * mod.in_features
        q_params += mod.out_features * mod.in_features
    total = sum(p.numel() for p in model.parameters())
    other = total - q_params
    return {"bits_per_weight": q_bits / max(q_params, 1),
            "model_mb": (q_bits + 16 * other) / 8 / 1e6,
            "fp_mb": 16 * total / 8 / 1e6}

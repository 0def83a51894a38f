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

from .calibration import decoder_blocks, quantizable_linears
from .data import text_windows, tokenize
from .errors import LvqError
from .methods import estimate_layer_bits
from .qlinear import QuantizedLinear


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 512, max_windows: int | None = None,
               batch_size: int = 4, progress: Callable[[int, int, str], None] | None = None) -> float:
    """exp(mean NLL) over non-overlapping windows of ``seqlen`` tokens of ``text`` (a window
    starts with the model's start token when its tokenizer adds one: see data.text_windows)."""
    check_seqlen(model, seqlen)
    windows = text_windows(tokenizer, text, seqlen)
    if windows.shape[0] == 0:
        raise LvqError(f"evaluation text too short: {tokenize(tokenizer, text).numel()} tokens, "
                       f"one window needs {seqlen}")
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
    n = text_windows(tokenizer, text, seqlen).shape[0]
    return n if max_windows is None else min(n, max_windows)


def check_seqlen(model, seqlen: int) -> None:
    """Refuse windows longer than the model's context before any work is done."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if seqlen < 2:
        raise LvqError(f"a window needs at least 2 tokens, got seqlen={seqlen}")
    if context is not None and seqlen > context:
        raise LvqError(f"seqlen={seqlen} is longer than the model's context of {context} tokens; "
                       f"use --seqlen {min(context, 2048)} or less")


def model_size(model: nn.Module, other_bits: int = 16) -> dict[str, float]:
    """Storage in MB: quantized linears at their real bits, every other parameter at
    ``other_bits`` (16: fp16/bf16 storage, the default of saved runs; 32: fp32).

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
        "model_mb": (q_bits + other_bits * other) / 8 / 1e6,
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
    q_bits, q_params = 0.0, 0
    n_blocks = len(decoder_blocks(model))  # as the pipeline counts them for layer_config
    for b, name, mod in quantizable_linears(model):
        layer_cfg = cfg.layer_config(f"{b}.{name}", n_blocks)
        q_bits += estimate_layer_bits(mod.out_features, mod.in_features, layer_cfg) * mod.out_features * mod.in_features
        q_params += mod.out_features * mod.in_features
    total = sum(p.numel() for p in model.parameters())
    other = total - q_params
    return {"bits_per_weight": q_bits / max(q_params, 1),
            "model_mb": (q_bits + 16 * other) / 8 / 1e6,
            "fp_mb": 16 * total / 8 / 1e6}

"""quantize_model: the one orchestration loop (sequential, block by block).

For each decoder block, in order:
  1. find the block's linear *stages* (linears sharing an input: q/k/v, o, gate/up, down);
  2. for each stage: run the block on the calibration activations — the outputs of the already
     quantized blocks before it, with this block's earlier stages already quantized — and
     accumulate H = XᵀX/n for the stage's inputs (float64); quantize each linear with
     ``quantize_layer(W, H, cfg)`` and swap it for a QuantizedLinear;
  3. optionally run the method's block hook (e.g. CRVQ's block fine-tuning);
  4. pass the calibration activations through the *quantized* block to feed the next one.
Only one block's activations live at a time. ``progress(step, total, message)`` is called after
every linear; ``cancel`` (a threading.Event or a callable) is checked between linears and raises
:class:`Cancelled`, leaving the caller to discard the half-quantized model.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
import torch
from torch import nn

from .calibration import (HessianAccumulator, capture_block_inputs, decoder_blocks,
                          linear_stages, run_block)
from .config import CalibConfig
from .data import calibration_text, calibration_windows
from .errors import Cancelled
from .methods import get_method, quantize_layer
from .qlinear import QuantizedLinear
from .qweight import relative_error
from .report import Report, split_stats

Progress = Callable[[int, int, str], None]


@dataclass
class QuantizeResult:
    model: nn.Module
    tokenizer: Any
    config: Any
    calib: CalibConfig
    report: Report
    metrics: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def quantizable_linears(model: nn.Module) -> list[tuple[int, str, nn.Linear]]:
    """(block index, name inside the block, module) for every nn.Linear in the decoder blocks."""
    out = []
    for b, block in enumerate(decoder_blocks(model)):
        for name, mod in block.named_modules():
            if isinstance(mod, (nn.Linear, QuantizedLinear)):
                out.append((b, name, mod))
    return out


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


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


@contextmanager
def _decode_once(block: nn.Module):
    """Within the block, each QuantizedLinear decodes its weight once and keeps the dense copy
    (calibration passes run many batches through the same weights); the copies are dropped on
    exit, so at most one block's dense weights are held at a time."""
    qlins = [m for m in block.modules() if isinstance(m, QuantizedLinear)]
    for m in qlins:
        m.set_cache(True)
    try:
        yield
    finally:
        for m in qlins:
            m.set_cache(False)


class _StageDone(Exception):
    """Raised by the Hessian hook: the rest of the block is not needed for this stage."""


@torch.no_grad()
def _stage_hessian(block: nn.Module, stage: list[str], inputs, device) -> torch.Tensor:
    """H = XᵀX/n of the input shared by the linears of ``stage``.

    One pass over all calibration batches that stops each forward as soon as the stage's input
    has been seen, so the q/k/v stage costs a norm, not a block.
    """
    mod = block.get_submodule(stage[0])
    acc = HessianAccumulator(mod.in_features, device)

    def hook(m, inp):
        acc.add(inp[0])
        raise _StageDone

    handle = mod.register_forward_pre_hook(hook)
    try:
        for hs, kw in zip(inputs.hidden, inputs.kwargs):
            try:
                run_block(block, hs, kw)
            except _StageDone:
                pass
    finally:
        handle.remove()
    return acc.H


def quantize_model(model: nn.Module, tokenizer, cfg, calib: CalibConfig | None = None,
                   progress: Progress | None = None, cancel=None,
                   device: str | torch.device | None = None) -> QuantizeResult:
    """Quantize every linear of the decoder blocks of ``model`` in place with ``cfg``.

    The model stays where it is; each block is moved to ``device`` (default: the model's device,
    or CUDA when available) while it is processed.
    """
    calib = calib or CalibConfig()
    method = get_method(cfg.method)
    home = next(model.parameters()).device
    dev = torch.device(device) if device is not None else (
        home if home.type != "cpu" or not torch.cuda.is_available() else torch.device("cuda"))
    t0 = time.perf_counter()
    peak = _rss_mb()
    progress = progress or (lambda step, total, msg: None)

    text = calibration_text(calib.corpus)
    windows = calibration_windows(tokenizer, text, calib.n_windows, calib.seqlen, calib.seed)
    model.eval()
    was_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    blocks = decoder_blocks(model)
    total = sum(1 for _ in quantizable_linears(model))
    step = 0
    layer_rows: list[dict[str, Any]] = []
    table_rows: dict[str, list[dict[str, Any]]] = {}
    try:
        if dev != home:
            model.to(dev)
        progress(0, total, f"capturing inputs of block 1/{len(blocks)}")
        inputs = capture_block_inputs(model, windows, calib.batch_size, dev)
        if dev != home:
            model.to(home)
        for b, block in enumerate(blocks):
            block.to(dev)
            stages = linear_stages(block, inputs.hidden[0], inputs.kwargs[0])
            targets = None
            if method.finetune_block is not None and getattr(cfg, "finetune", False):
                with torch.no_grad():
                    targets = [run_block(block, hs, kw) for hs, kw in zip(inputs.hidden, inputs.kwargs)]
            for stage in stages:
                with _decode_once(block):
                    H = _stage_hessian(block, stage, inputs, dev)
                peak = max(peak, _rss_mb())
                for name in stage:
                    if _is_cancelled(cancel):
                        raise Cancelled(f"cancelled at block {b + 1}/{len(blocks)}, {name}")
                    lin = block.get_submodule(name)
                    W = lin.weight.detach().to(torch.float32)
                    tl = time.perf_counter()
                    qw = quantize_layer(W, H, cfg)
                    dt = time.perf_counter() - tl
                    W_hat = qw.dequantize()
                    scalars, tables = split_stats(qw.stats())
                    full = f"{b}.{name}"
                    layer_rows.append({
                        "layer": full, "block": b, "name": name,
                        "out_features": W.shape[0], "in_features": W.shape[1],
                        "method": cfg.method, "bits_per_weight": qw.bits_per_weight(),
                        "rel_error": relative_error(W, W_hat, H),
                        "mse": float(((W - W_hat) ** 2).mean()), "time_s": dt,
                        **{f"stat_{k}": v for k, v in scalars.items()},
                    })
                    for tname, rows in tables.items():
                        table_rows.setdefault(tname, []).extend({"layer": full, **r} for r in rows)
                    _set_submodule(block, name, QuantizedLinear(qw, bias=lin.bias))
                    del lin, W, W_hat
                    step += 1
                    peak = max(peak, _rss_mb())
                    progress(step, total, f"block {b + 1}/{len(blocks)} · {name}")
                del H
            if targets is not None:
                metrics = method.finetune_block(block, inputs.hidden, targets, inputs.kwargs[0], cfg, progress)
                for r in layer_rows:
                    if r["block"] == b:
                        r.update({f"finetune_{k}": v for k, v in (metrics or {}).items()})
            with torch.no_grad(), _decode_once(block):
                inputs.hidden = [run_block(block, hs, kw) for hs, kw in zip(inputs.hidden, inputs.kwargs)]
            block.to(home)
            peak = max(peak, _rss_mb())
    finally:
        if was_cache is not None:
            model.config.use_cache = was_cache
    elapsed = time.perf_counter() - t0
    size = model_size(model)
    metrics = {**size, "quant_time_s": elapsed, "peak_rss_mb": peak,
               "n_quantized_layers": len(layer_rows)}
    return QuantizeResult(model=model, tokenizer=tokenizer, config=cfg, calib=calib,
                          report=Report.from_records(layer_rows, table_rows), metrics=metrics,
                          model_name=str(getattr(model.config, "lvq_source", "")))

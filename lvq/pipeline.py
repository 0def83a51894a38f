"""quantize_model: the one orchestration loop (sequential, block by block).

For each decoder block, in order:
  1. find the block's linear *stages* (linears sharing an input: q/k/v, o, gate/up, down);
  2. for each stage: run the block on the calibration activations — the outputs of the already
     quantized blocks before it, with this block's earlier stages already quantized — and
     accumulate H = XᵀX/n for the stage's inputs (float64); quantize each linear with
     ``quantize_layer(W, H, cfg)`` and swap it for a QuantizedLinear;
  3. optionally fine-tune the block's continuous parameters, codes frozen (lvq/finetune.py);
  4. pass the calibration activations through the *quantized* block to feed the next one.
After the last block, optionally fine-tune the whole model end to end against the original's
next-token distribution (computed on the calibration windows before the first block changes).
Only one block's activations live at a time. ``progress(step, total, message)`` is called after
every linear; ``cancel`` (a threading.Event or a callable) is checked between linears and raises
:class:`Cancelled`, leaving the caller to discard the half-quantized model.
"""
from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
import torch
from torch import nn

from .calibration import (capture_block_inputs, decoder_blocks, linear_stages, quantizable_linears,
                          run_block, stage_hessian)
from .chat import greedy_replies
from .config import CalibConfig
from .data import calibration_text, calibration_windows, chat_windows, model_chat_windows
from .errors import Cancelled
from .eval import check_seqlen, model_size
from .finetune import finetune_block, finetune_model, teacher_targets
from .hessian import relative_error
from .methods import quantize_layer
from .qlinear import QuantizedLinear
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


@contextmanager
def _one_thread():
    """Run the quantizer of one layer on one CPU thread: its many small reductions and
    factorisations then add in the same order whatever the machine's thread count, so the
    rounding decisions (and the saved codes) do not depend on it. The calibration passes, whose
    large matrix products gave identical results on 1 and 2 threads, keep every thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextmanager
def _decode_once(block: nn.Module):
    """Within the block, each QuantizedLinear decodes its weight once and keeps the dense copy
    (calibration passes run many batches through the same weights); the copies are dropped on
    exit, so at most one block's dense weights are held at a time."""
    qlins = [m for m in block.modules() if isinstance(m, QuantizedLinear)]
    modes = [m.mode for m in qlins]
    for m in qlins:
        m.set_mode("dense")
    try:
        yield
    finally:
        for m, mode in zip(qlins, modes):
            m.set_mode(mode)


def _with_chat(windows: torch.Tensor, chat: torch.Tensor | None) -> torch.Tensor:
    """Calibration windows [n, T] and chat windows [m, T] -> [n + m, T], each kind spread evenly
    over the whole order, so that the held-out tail of fine-tuning's windows holds some of each."""
    if chat is None or not len(chat):
        return windows
    both = torch.cat([windows, chat])
    place = torch.cat([(torch.arange(len(w), dtype=torch.float64) + 0.5) / len(w) for w in (windows, chat)])
    return both[torch.argsort(place, stable=True)]


def _chat(model: nn.Module, tokenizer, text: str, cfg, calib: CalibConfig, progress: Progress,
          total: int) -> torch.Tensor | None:
    """End-to-end fine-tuning's chat windows [cfg.e2e_chat, seqlen] (or None): replies from the
    calibration text, or the original model's own (``cfg.e2e_chat_replies``), generated on one
    thread so that they do not depend on the machine's thread count."""
    if cfg.e2e_chat_replies != "model":
        return chat_windows(tokenizer, text, cfg.e2e_chat, calib.seqlen, calib.seed)
    turns = itertools.count(1)

    def reply(conversations):
        progress(0, total, f"the original model writes its replies in {len(conversations)} chat windows "
                           f"(turn {next(turns)})")
        with _one_thread():
            return greedy_replies(model, tokenizer, conversations, batch_size=calib.batch_size)
    return model_chat_windows(tokenizer, text, cfg.e2e_chat, calib.seqlen, reply, calib.seed)


def quantize_model(model: nn.Module, tokenizer, cfg, calib: CalibConfig | None = None,
                   progress: Progress | None = None, cancel=None,
                   device: str | torch.device | None = None) -> QuantizeResult:
    """Quantize every linear of the decoder blocks of ``model`` in place with ``cfg``.

    The model stays where it is; each block is moved to ``device`` (default: the model's device,
    or CUDA when available) while it is processed.
    """
    calib = calib or CalibConfig()
    home = next(model.parameters()).device
    dev = torch.device(device) if device is not None else (
        home if home.type != "cpu" or not torch.cuda.is_available() else torch.device("cuda"))
    t0 = time.perf_counter()
    peak = _rss_mb()
    progress = progress or (lambda step, total, msg: None)

    check_seqlen(model, calib.seqlen)
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
        teacher = e2e_windows = None
        if cfg.e2e_steps:
            progress(0, total, "the original model's next-token distribution (for end-to-end fine-tuning)")
            e2e_windows = _with_chat(windows, _chat(model, tokenizer, text, cfg, calib, progress, total))
            teacher = teacher_targets(model, e2e_windows, batch_size=calib.batch_size)
        progress(0, total, f"capturing inputs of block 1/{len(blocks)}")
        inputs = capture_block_inputs(model, windows, calib.batch_size, dev)
        if dev != home:
            model.to(home)
        for b, block in enumerate(blocks):
            inputs.kwargs = inputs.block_kwargs[b]  # this block's own mask and RoPE (Gemma-3, Qwen2)
            block.to(dev)
            stages = linear_stages(block, inputs.hidden[0], inputs.kwargs[0])
            targets = None
            if getattr(cfg, "finetune", False):
                with torch.no_grad():
                    targets = [run_block(block, hs, kw) for hs, kw in zip(inputs.hidden, inputs.kwargs)]
            for stage in stages:
                with _decode_once(block):
                    H = stage_hessian(block, stage, inputs, dev)
                peak = max(peak, _rss_mb())
                for name in stage:
                    if _is_cancelled(cancel):
                        raise Cancelled(f"cancelled at block {b + 1}/{len(blocks)}, {name}")
                    lin = block.get_submodule(name)
                    W = lin.weight.detach().to(torch.float32)
                    full = f"{b}.{name}"
                    tl = time.perf_counter()
                    with _one_thread():
                        qw = quantize_layer(W, H, cfg.layer_config(full, len(blocks)))
                    dt = time.perf_counter() - tl
                    W_hat = qw.dequantize()
                    scalars, tables = split_stats(qw.stats())
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
                    block.set_submodule(name, QuantizedLinear(qw, bias=lin.bias))
                    del lin, W, W_hat
                    step += 1
                    peak = max(peak, _rss_mb())
                    progress(step, total, f"block {b + 1}/{len(blocks)} · {name}")
                del H
            if targets is not None:
                metrics = finetune_block(block, inputs.hidden, targets, inputs.kwargs,
                                         cfg.finetune_steps, cfg.finetune_lr, progress)
                for r in layer_rows:
                    if r["block"] == b:
                        r.update({f"finetune_{k}": v for k, v in (metrics or {}).items()})
            with torch.no_grad(), _decode_once(block):
                inputs.hidden = [run_block(block, hs, kw) for hs, kw in zip(inputs.hidden, inputs.kwargs)]
            block.to(home)
            peak = max(peak, _rss_mb())
        e2e = {}
        if teacher is not None:
            del inputs
            model.to(dev)
            e2e = finetune_model(model, e2e_windows, teacher, cfg.e2e_steps, cfg.e2e_lr, progress, cancel)
            model.to(home)
            if _is_cancelled(cancel):
                raise Cancelled("cancelled during end-to-end fine-tuning")
            table_rows["e2e_curve"] = e2e.pop("curve", [])
            peak = max(peak, _rss_mb())
    finally:
        if was_cache is not None:
            model.config.use_cache = was_cache
    elapsed = time.perf_counter() - t0
    size = model_size(model)
    metrics = {**size, "quant_time_s": elapsed, "peak_rss_mb": peak,
               "n_quantized_layers": len(layer_rows), **{f"e2e_{k}": v for k, v in e2e.items()}}
    return QuantizeResult(model=model, tokenizer=tokenizer, config=cfg, calib=calib,
                          report=Report.from_records(layer_rows, table_rows), metrics=metrics,
                          model_name=str(getattr(model.config, "lvq_source", "")))

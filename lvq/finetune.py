"""Fine-tuning of a quantized block's continuous parameters, the codes frozen (engine code).

After a decoder block's linears are quantized, its continuous parameters — each QuantizedLinear's
trainable state tensors (``QuantizedWeight.trainable``: scales, zeros, lattice generators, μ,
codebooks) and the block's norm weights — are trained so that the quantized block reproduces the
original block's outputs on the calibration windows (AQLM §3.4; CRVQ applies it after each
block). The codes never change. docs/algorithms.md ("Fine-tuning") has the reasoning.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .calibration import run_block
from .qlinear import QuantizedLinear

Progress = Callable[[int, int, str], None]
PATIENCE = 3  # passes without a held-out gain before stopping


def _is_trainable(name: str, patterns: tuple[str, ...]) -> bool:
    """A state name is trainable when it equals a pattern, or starts with a pattern ending in '_'."""
    return any(name == p or (p.endswith("_") and name.startswith(p)) for p in patterns)


def _norm_parameters(block: nn.Module) -> list[nn.Parameter]:
    return [p for mod in block.modules() if "norm" in type(mod).__name__.lower()
            for p in mod.parameters(recurse=False)]


def finetune_block(block: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor],
                   block_kwargs: dict[str, Any], steps: int, lr: float,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Train the block's continuous parameters (codes frozen) to match ``targets``.

    block: a decoder layer whose linears are ``QuantizedLinear``; inputs/targets: lists of
    [batch, seq, hidden] tensors (targets = the original block's outputs). Loss per window:
    ‖block(x) − y‖² / ‖y‖². The last ⌈n/8⌉ windows (at least one when n >= 2) are held out;
    training stops after ``steps`` passes over the rest or when the held-out loss has not
    improved for PATIENCE passes, and the best state (by held-out loss) is kept. Parameters are
    trained in fp32 and stored back in their own dtype (fp16 for the quantized state).
    Returns {val_before, val_after, best_step, steps_run} ({"steps": 0} when nothing to train).
    """
    qlins = [m for m in block.modules() if isinstance(m, QuantizedLinear)]
    if not qlins or not inputs or steps <= 0:
        return {"steps": 0}
    n_val = max(1, math.ceil(len(inputs) / 8)) if len(inputs) >= 2 else 0
    train_idx = list(range(len(inputs) - n_val))
    val_idx = list(range(len(inputs) - n_val, len(inputs))) or train_idx

    trained: list[tuple[nn.Module, str, torch.dtype]] = []
    for m in qlins:
        for name in m.state_names:
            if _is_trainable(name, m.weight_cls.trainable):
                buf = getattr(m, name)
                trained.append((m, name, buf.dtype))
                setattr(m, name, buf.detach().to(torch.float32).requires_grad_(True))
    norm_params = _norm_parameters(block)
    grad_flags = {p: p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    for p in norm_params:
        p.requires_grad_(True)
    params = [getattr(m, name) for m, name, _ in trained] + norm_params
    opt = torch.optim.Adam(params, lr=lr)

    def window_loss(i: int) -> torch.Tensor:
        y = targets[i]
        return ((run_block(block, inputs[i], block_kwargs) - y) ** 2).sum() / (y * y).sum().clamp_min(1e-30)

    def val_loss() -> float:
        with torch.no_grad():
            return sum(float(window_loss(i)) for i in val_idx) / len(val_idx)

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    before = best = val_loss()
    best_state, best_step, stale, done = snapshot(), 0, 0, 0
    try:
        for step in range(1, steps + 1):
            for i in train_idx:
                opt.zero_grad(set_to_none=True)
                window_loss(i).backward()
                opt.step()
            done = step
            cur = val_loss()
            if progress is not None:
                progress(step, steps, f"block fine-tuning: held-out loss {cur:.4g}")
            if cur < best:
                best, best_state, best_step, stale = cur, snapshot(), step, 0
            else:
                stale += 1
                if stale >= PATIENCE:
                    break
    finally:
        with torch.no_grad():
            for p, v in zip(params, best_state):
                p.copy_(v)
        for (m, name, dtype), p in zip(trained, params):
            setattr(m, name, p.detach().to(dtype))
            m.invalidate()
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
    return {"val_before": before, "val_after": best, "best_step": best_step, "steps_run": done}

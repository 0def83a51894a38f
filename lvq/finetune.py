"""Fine-tuning of a quantized model's continuous parameters, the codes frozen (engine code).

Continuous parameters: each QuantizedLinear's trainable state tensors (``QuantizedWeight.trainable``:
scales, zeros, lattice generators, μ, codebooks) and the norm weights. The codes never change.

* ``finetune_block``: after a decoder block's linears are quantized, train its parameters so
  that the quantized block reproduces the original block's outputs on the calibration windows
  (AQLM §3.4; CRVQ applies it after each block).
* ``finetune_model``: after the last block, train all of them end to end so that the quantized
  model's next-token distribution matches the original's (KL to the teacher's top-k
  probabilities, computed before quantizing by ``teacher_targets``), as AQLM and QuIP# do.

docs/algorithms.md ("Fine-tuning") has the reasoning and the measurements.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
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
                   block_kwargs: dict[str, Any] | list[dict[str, Any]], steps: int, lr: float,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Train the block's continuous parameters (codes frozen) to match ``targets``.

    block: a decoder layer whose linears are ``QuantizedLinear``; inputs/targets: lists of
    [batch, seq, hidden] tensors (targets = the original block's outputs); block_kwargs: the
    block's call arguments, one dict per input batch (or one for all). Loss per window:
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

    kwargs = block_kwargs if isinstance(block_kwargs, list) else [block_kwargs] * len(inputs)
    with _trainable(block) as params:
        return _train_block(block, params, inputs, targets, kwargs, steps, lr, train_idx,
                            val_idx, progress)


def _train_block(block, params, inputs, targets, block_kwargs, steps, lr, train_idx, val_idx,
                 progress) -> dict[str, Any]:
    opt = torch.optim.Adam(params, lr=lr)

    def window_loss(i: int) -> torch.Tensor:
        y = targets[i]
        return ((run_block(block, inputs[i], block_kwargs[i]) - y) ** 2).sum() / (y * y).sum().clamp_min(1e-30)

    def val_loss() -> float:
        with torch.no_grad():
            return sum(float(window_loss(i)) for i in val_idx) / len(val_idx)

    before = val_loss()
    best, done = _Best(params, before), 0
    for step in range(1, steps + 1):
        for i in train_idx:
            opt.zero_grad(set_to_none=True)
            window_loss(i).backward()
            opt.step()
        done = step
        cur = val_loss()
        if progress is not None:
            progress(step, steps, f"block fine-tuning: held-out loss {cur:.4g}")
        if best.stop_after(cur, step):
            break
    best.restore()
    return {"val_before": before, "val_after": best.value, "best_step": best.step, "steps_run": done}


class _Best:
    """Early stopping: the best held-out value so far with its parameters' values and step; stop
    after PATIENCE evaluations without a gain; ``restore`` puts the best values back."""

    def __init__(self, params: list[torch.Tensor], value: float) -> None:
        self.params, self.value, self.step, self.stale = params, value, 0, 0
        self.state = [p.detach().clone() for p in params]

    def stop_after(self, value: float, step: int) -> bool:
        if value < self.value:
            self.value, self.step, self.stale = value, step, 0
            self.state = [p.detach().clone() for p in self.params]
            return False
        self.stale += 1
        return self.stale >= PATIENCE

    def restore(self) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, self.state):
                p.copy_(v)


# ----------------------------------------------------------------------------------------------
# End to end: the whole model's continuous parameters against the original's next-token
# distribution
# ----------------------------------------------------------------------------------------------
TOPK = 64  # teacher probabilities kept per position


@dataclass(frozen=True)
class TeacherTargets:
    """The original model's next-token distribution on calibration windows, top-k per position:
    idx [n, T, k] int64 token ids, prob [n, T, k] float32 renormalised over the k."""

    idx: torch.Tensor
    prob: torch.Tensor


@torch.no_grad()
def teacher_targets(model: nn.Module, windows: torch.Tensor, k: int = TOPK,
                    batch_size: int = 4) -> TeacherTargets:
    """Top-k next-token probabilities of ``model`` on windows [n, T] (run before quantizing)."""
    device = next(model.parameters()).device
    idx, prob = [], []
    for i in range(0, windows.shape[0], batch_size):
        logits = model(windows[i:i + batch_size].to(device), use_cache=False).logits.float()
        top = torch.topk(logits, k, dim=-1)
        idx.append(top.indices.cpu())
        prob.append(torch.softmax(top.values, dim=-1).cpu())
    return TeacherTargets(torch.cat(idx), torch.cat(prob))


def _kl_to_teacher(model: nn.Module, ids: torch.Tensor, idx: torch.Tensor,
                   prob: torch.Tensor) -> torch.Tensor:
    """Σ p (log p − log q) per position, averaged: the KL from the teacher's top-k distribution
    p (renormalised) to the student's q at those tokens. ids [B, T]; idx, prob [B, T, k]."""
    logq = torch.log_softmax(model(ids, use_cache=False).logits.float(), dim=-1).gather(-1, idx)
    return (prob * (prob.clamp_min(1e-30).log() - logq)).sum(-1).mean()


def finetune_model(model: nn.Module, windows: torch.Tensor, targets: TeacherTargets, steps: int,
                   lr: float, progress: Progress | None = None, cancel=None,
                   eval_every: int = 8) -> dict[str, Any]:
    """Train every QuantizedLinear's trainable tensors and every norm weight of ``model`` (codes
    and embeddings frozen) to minimise the KL to the original model's next-token distribution.

    windows [n, T] token ids with their ``targets``; the last ⌈n/8⌉ windows (at least one when
    n >= 2) are held out. ``steps`` Adam steps, one training window each (cycling); every
    ``eval_every`` steps the held-out KL is measured, the best state is kept, and training stops
    after PATIENCE evaluations without a gain. Returns {kl_before, kl_after, best_step,
    steps_run, curve: [{step, heldout_kl}]}.
    """
    if steps <= 0 or windows.shape[0] == 0:
        return {"steps": 0}
    device = next(model.parameters()).device
    n = windows.shape[0]
    n_val = max(1, math.ceil(n / 8)) if n >= 2 else 0
    train_idx = list(range(n - n_val)) or list(range(n))
    val_idx = list(range(n - n_val, n)) or train_idx

    def kl_of(i: int) -> torch.Tensor:
        return _kl_to_teacher(model, windows[i:i + 1].to(device), targets.idx[i:i + 1].to(device),
                              targets.prob[i:i + 1].to(device))

    def held_out() -> float:
        with torch.no_grad():
            return sum(float(kl_of(i)) for i in val_idx) / len(val_idx)

    with _trainable(model) as params, _block_checkpointing(model):
        opt = torch.optim.Adam(params, lr=lr)
        before = held_out()
        curve = [{"step": 0, "heldout_kl": before}]
        best, done = _Best(params, before), 0
        for step in range(1, steps + 1):
            if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
                break
            opt.zero_grad(set_to_none=True)
            kl_of(train_idx[(step - 1) % len(train_idx)]).backward()
            opt.step()
            done = step
            if step % eval_every and step != steps:
                continue
            cur = held_out()
            curve.append({"step": step, "heldout_kl": cur})
            if progress is not None:
                progress(step, steps, f"end-to-end fine-tuning: held-out KL {cur:.4g}")
            if best.stop_after(cur, step):
                break
        best.restore()
    return {"kl_before": before, "kl_after": best.value, "best_step": best.step, "steps_run": done,
            "curve": curve}


@contextmanager
def _block_checkpointing(model: nn.Module):
    """Within: each decoder block keeps only its input for the backward pass and recomputes the
    rest (transformers' activation checkpointing, non-reentrant), so training holds about one
    block's activations and rebuilt weights instead of all of them, for about one more forward
    per step; gradients are the same. Only the blocks are flagged as training (checkpointing
    needs it), never their submodules, so no dropout switches on. Models without the support
    train as they are."""
    blocks = [m for m in model.modules() if getattr(type(m), "gradient_checkpointing", None) is False]
    if not blocks or not getattr(model, "supports_gradient_checkpointing", False):
        yield
        return
    model.activation_checkpointing_enable({"use_reentrant": False})
    flags = [b.training for b in blocks]
    for b in blocks:
        b.training = True
    try:
        yield
    finally:
        for b, flag in zip(blocks, flags):
            b.training = flag
        model.activation_checkpointing_disable()
        if hasattr(model, "_require_grads_hook"):  # the input hook enable() adds for reentrant ones
            model.disable_input_require_grads()


@contextmanager
def _trainable(root: nn.Module):
    """Within the block: every QuantizedLinear trainable tensor under ``root`` becomes an fp32
    tensor with gradients, every norm weight requires grad, all else is frozen; on exit the
    tensors go back to their stored dtype (fp16) and the flags are restored. Yields the list of
    trained tensors."""
    trained: list[tuple[nn.Module, str, torch.dtype]] = []
    qlins = [m for m in root.modules() if isinstance(m, QuantizedLinear)]
    modes = [m.mode for m in qlins]
    for m in qlins:
        m.set_mode("train")  # gradients flow through the trainable tensors; codes decoded once
        for name in m.state_names:
            if _is_trainable(name, m.trainable):
                buf = getattr(m, name)
                trained.append((m, name, buf.dtype))
                setattr(m, name, buf.detach().to(torch.float32).requires_grad_(True))
    norm_params = _norm_parameters(root)
    grad_flags = {p: p.requires_grad for p in root.parameters()}
    for p in root.parameters():
        p.requires_grad_(False)
    for p in norm_params:
        p.requires_grad_(True)
    params = [getattr(m, name) for m, name, _ in trained] + norm_params
    try:
        yield params
    finally:
        for (m, name, dtype), p in zip(trained, params):
            setattr(m, name, p.detach().to(dtype))
        for m, mode in zip(qlins, modes):
            m.set_mode(mode)
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)

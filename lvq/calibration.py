"""Calibration machinery: block inputs, Hessian accumulation, and the order of a block's linears.

* :func:`capture_block_inputs` runs the model's embedding stage on calibration windows and records
  what the first decoder block receives (hidden states and keyword arguments), per batch.
* :class:`HessianAccumulator` keeps H = XᵀX / n in float64 for one linear input, fed batch by batch
  (each batch's XᵀX is formed in the activations' dtype and added in float64).
* :func:`linear_stages` finds the order in which a block's linears consume their inputs: linears
  that read the *same* input tensor form one stage (q/k/v, then o, then gate/up, then down in a
  Llama block), so a stage can be quantized before the inputs of the next one are computed.
* :func:`stage_hessian` accumulates one stage's H over all calibration batches, stopping each
  forward as soon as the stage's input has been seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .qlinear import QuantizedLinear


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}; "
                     f"supported: Llama/Mistral/Qwen/Gemma-style (model.layers), GPT-2, GPT-NeoX")


class _Stop(Exception):
    pass


def quantizable_linears(model: nn.Module) -> list[tuple[int, str, nn.Linear]]:
    """(block index, name inside the block, module) for every nn.Linear in the decoder blocks."""
    out = []
    for b, block in enumerate(decoder_blocks(model)):
        for name, mod in block.named_modules():
            if isinstance(mod, (nn.Linear, QuantizedLinear)):
                out.append((b, name, mod))
    return out


@dataclass
class BlockInputs:
    """Per-batch inputs of a decoder block: hidden states [B, T, hidden] and call kwargs."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int,
                         device: torch.device) -> BlockInputs:
    """Run ``windows`` [n, seqlen] through the model up to its first block; record its inputs."""
    blocks = decoder_blocks(model)
    captured = BlockInputs()

    def pre_hook(_module, args, kwargs):
        hs = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hs.detach())
        captured.kwargs.append({k: v for k, v in kwargs.items()
                                if k not in ("past_key_values", "past_key_value", "cache")})
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for i in range(0, windows.shape[0], batch_size):
            try:
                model(windows[i:i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Call one decoder block and return its hidden-state output [B, T, hidden]."""
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class HessianAccumulator:
    """H = XᵀX / n over all rows x of the inputs seen so far, in float64. H: [in, in]."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """x: [..., in] activations of one batch."""
        x = x.detach().reshape(-1, x.shape[-1])
        m = x.shape[0]
        if m == 0:
            return
        xf = x.to(torch.float32)
        self.H *= self.n / (self.n + m)
        self.H += (xf.T @ xf).to(torch.float64) / (self.n + m)
        self.n += m


def linear_stages(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> list[list[str]]:
    """Names of the block's nn.Linear modules grouped by shared input, in call order.

    One forward of ``hidden`` through ``block`` with hooks records which linear is called when and
    on which input tensor; linears reading the same tensor form a stage.
    """
    order: list[tuple[str, int]] = []
    keep_alive: list[torch.Tensor] = []  # so that no input's id() is reused within the forward
    handles = []

    def record(name: str, inp: torch.Tensor) -> None:
        order.append((name, id(inp)))
        keep_alive.append(inp)

    for name, mod in block.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: record(name, inp[0])))
    try:
        with torch.no_grad():
            run_block(block, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    seen_inputs: dict[int, int] = {}
    for name, key in order:
        if any(name in s for s in stages):
            continue
        if key in seen_inputs:
            stages[seen_inputs[key]].append(name)
        else:
            seen_inputs[key] = len(stages)
            stages.append([name])
    return stages


class _StageDone(Exception):
    """Raised by the Hessian hook: the rest of the block is not needed for this stage."""


@torch.no_grad()
def stage_hessian(block: nn.Module, stage: list[str], inputs: "BlockInputs",
                  device: torch.device) -> torch.Tensor:
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

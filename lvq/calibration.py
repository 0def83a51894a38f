"""Calibration machinery: block inputs, Hessian accumulation, and the order of a block's linears.

* :func:`capture_block_inputs` runs the model on calibration windows and records what the first
  decoder block receives (hidden states) and what every block is called with (keyword arguments:
  attention mask, RoPE tables, ...), per batch. Blocks need not share their keyword arguments:
  Gemma-3 and Qwen2 mix sliding-window and full-attention blocks, each kind with its own mask
  (and, in Gemma-3, its own RoPE base).
* :class:`HessianAccumulator` keeps H = XᵀX / n in float64 for one linear input, fed batch by batch
  (each batch's XᵀX is formed in the activations' dtype and added in float64).
* :func:`linear_stages` finds the order in which a block's linears consume their inputs: linears
  that read the *same* input tensor form one stage (q/k/v, then o, then gate/up, then down in a
  Llama block; qkv_proj, o_proj, gate_up_proj, down_proj in a Phi-3 block, whose fused linears
  are quantized whole), so a stage can be quantized before the inputs of the next one are
  computed. A linear the forward never calls is an error, never a silent skip.
* :func:`quantizable_linears` lists the linears to quantize and refuses an architecture whose
  blocks keep weight matrices outside ``nn.Linear`` (GPT-2's Conv1D, fused MoE experts).
* :func:`stage_hessian` accumulates one stage's H over all calibration batches, stopping each
  forward as soon as the stage's input has been seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import LvqError
from .qlinear import QuantizedLinear

# Where causal LMs keep their decoder blocks (an nn.ModuleList); the first match is used.
BLOCK_PATHS = ("model.layers", "model.language_model.layers", "model.decoder.layers",
               "transformer.h", "gpt_neox.layers")


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM."""
    for path in BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj):
            return obj
    raise LvqError(f"{type(model).__name__} is not supported: lvq cannot find its decoder blocks "
                   f"(a list of layers at {', '.join(BLOCK_PATHS)}); Llama, Mistral, Qwen2/3, "
                   f"Gemma-3 and Phi-3 style models keep them at model.layers")


class _Stop(Exception):
    pass


def _foreign_weights(block: nn.Module) -> list[str]:
    """The block's weight matrices (2-D or more) that no nn.Linear owns: "name (module class)"."""
    out = []
    for name, mod in block.named_modules():
        if isinstance(mod, (nn.Linear, QuantizedLinear)):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() >= 2:
                out.append(f"{name + '.' if name else ''}{pname} ({type(mod).__name__})")
    return out


def quantizable_linears(model: nn.Module) -> list[tuple[int, str, nn.Linear]]:
    """(block index, name inside the block, module) for every nn.Linear in the decoder blocks.

    Raises LvqError when a block keeps weight matrices outside nn.Linear (they would stay
    unquantized without a word) or has no linear at all.
    """
    out = []
    for b, block in enumerate(decoder_blocks(model)):
        foreign = _foreign_weights(block)
        if foreign:
            raise LvqError(
                f"{type(model).__name__} is not supported: block {b} ({type(block).__name__}) keeps "
                f"weights outside nn.Linear ({', '.join(foreign[:4])}), which lvq cannot quantize")
        found = [(b, name, mod) for name, mod in block.named_modules()
                 if isinstance(mod, (nn.Linear, QuantizedLinear))]
        if not found:
            raise LvqError(f"{type(model).__name__} is not supported: block {b} "
                           f"({type(block).__name__}) has no nn.Linear layer to quantize")
        out.extend(found)
    return out


@dataclass
class BlockInputs:
    """Per-batch inputs of a decoder block: hidden states [B, T, hidden] and call kwargs.

    ``hidden`` and ``kwargs`` are the current block's; ``block_kwargs[b]`` holds block b's call
    kwargs per batch (the pipeline sets ``kwargs = block_kwargs[b]`` before block b). Blocks
    called with the same kwargs share one list, so this costs references, not memory.
    """

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)
    block_kwargs: list[list[dict[str, Any]]] = field(default_factory=list)


_CACHE_KWARGS = ("past_key_values", "past_key_value", "cache")


def _same(x: Any, y: Any) -> bool:
    """Whether two call arguments are the same: one object, or equal plain values (containers
    item by item). Distinct tensors count as different, whatever their values."""
    if x is y:
        return True
    if isinstance(x, (tuple, list)) and type(x) is type(y):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (bool, int, float, str)) and type(x) is type(y):
        return x == y
    return False


def _representatives(calls: list[dict[str, Any]]) -> list[int]:
    """For each block, the first block called with the same kwargs (``calls``: one per block)."""
    reps: list[int] = []
    for b, kw in enumerate(calls):
        reps.append(next((c for c in range(b) if reps[c] == c and _same(calls[c], kw)), b))
    return reps


def _block_calls(model: nn.Module, blocks: nn.ModuleList, batch: torch.Tensor, watch: list[int],
                 hidden: list[torch.Tensor] | None) -> dict[int, dict[str, Any]]:
    """One forward of ``batch``: the call kwargs of the blocks in ``watch`` (sorted), block 0's
    hidden-state input appended to ``hidden``; the forward stops on entering the last of them."""
    got: dict[int, dict[str, Any]] = {}

    def pre_hook(b: int, args, kwargs):
        kwargs = dict(kwargs)
        hs = args[0] if args else kwargs.pop("hidden_states")
        if b == 0 and hidden is not None:
            hidden.append(hs.detach())
        got[b] = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS}
        if b == watch[-1]:
            raise _Stop

    handles = [blocks[b].register_forward_pre_hook(
        lambda _m, args, kwargs, b=b: pre_hook(b, args, kwargs), with_kwargs=True) for b in watch]
    try:
        model(batch, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [b for b in watch if b not in got]
    if missing:
        raise LvqError(f"{type(model).__name__} is not supported: its forward did not call decoder "
                       f"block(s) {missing[:4]}")
    return got


@torch.no_grad()
def capture_block_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int,
                         device: torch.device) -> BlockInputs:
    """Run ``windows`` [n, seqlen] through the model; record the first block's hidden-state input
    and every block's call kwargs, per batch.

    A probe forward of one window through all blocks finds which blocks are called with the same
    kwargs (the same mask and RoPE objects: every block of a Llama, each attention kind of a
    Gemma-3); the calibration batches then run only up to the first block of the last kind, so a
    Llama costs the embeddings, as before, and a Gemma-3 the blocks before its first
    full-attention block.
    """
    blocks = decoder_blocks(model)
    probe = _block_calls(model, blocks, windows[:1].to(device), list(range(len(blocks))), None)
    reps = _representatives([probe[b] for b in range(len(blocks))])
    watch = sorted(set(reps))
    hidden: list[torch.Tensor] = []
    calls: dict[int, list[dict[str, Any]]] = {b: [] for b in watch}
    for i in range(0, windows.shape[0], batch_size):
        got = _block_calls(model, blocks, windows[i:i + batch_size].to(device), watch, hidden)
        for b in watch:
            calls[b].append(got[b])
    block_kwargs = [calls[r] for r in reps]
    return BlockInputs(hidden=hidden, kwargs=block_kwargs[0], block_kwargs=block_kwargs)


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

    linears = [name for name, mod in block.named_modules() if isinstance(mod, nn.Linear)]
    for name in linears:
        handles.append(block.get_submodule(name).register_forward_hook(
            lambda m, inp, out, name=name: record(name, inp[0])))
    try:
        with torch.no_grad():
            run_block(block, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    seen_inputs: dict[int, int] = {}
    first_input: dict[str, int] = {}
    for name, key in order:
        if name in first_input:
            if key != first_input[name]:
                raise LvqError(f"{type(block).__name__} is not supported: its linear {name} is called "
                               f"on more than one input in a forward, and lvq calibrates each "
                               f"linear on one input")
            continue
        first_input[name] = key
        if key in seen_inputs:
            stages[seen_inputs[key]].append(name)
        else:
            seen_inputs[key] = len(stages)
            stages.append([name])
    unused = [n for n in linears if n not in first_input]
    if unused:
        raise LvqError(f"{type(block).__name__} is not supported: its forward never calls the linear(s) "
                       f"{', '.join(unused[:4])} as modules, so lvq cannot calibrate them")
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

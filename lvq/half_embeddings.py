"""Embeddings and lm_head held in fp16 for decoding on the CPU (no quantization, no rounding).

A saved run stores its unquantized embedding matrix E [vocab, dim] in fp16 (lvq/runs.py), and
loading widens it to fp32. For a chat on the CPU that fp32 copy is the largest tensor of a 2-bit
model (113 MB on the bundled model, tied to the lm_head). ``halve_embeddings`` puts the fp16
values back, exactly: only where every value of the matrix survives fp32 -> fp16 -> fp32
unchanged (a run stored in fp16 always does; bf16 or fp32 stores usually do not and are left
alone), so the model computes the same function as before:

* ``HalfEmbedding`` (replaces ``nn.Embedding``): the requested rows, widened to fp32;
* ``HalfHead`` (replaces the lm_head ``nn.Linear``; a tied head shares the embedding's fp16
  tensor): one fp32 token on the CPU goes through the compiled ``kernels.half.half_matvec``
  (fp16 read, fp32 arithmetic); more tokens are computed a few thousand rows at a time, each
  chunk widened to fp32 for F.linear (no full fp32 copy, even for a 512-token window).

Inference only: these modules hold buffers, not parameters (nothing to train).
``load_run(..., fp16_embeddings=True)`` calls ``halve_embeddings`` after preparing the CPU kernels
("packed" mode); it is not the default because this one-thread head is slower than torch's
two-thread fp32 product here (BENCHMARKS.md, decoding table).
"""
from __future__ import annotations

import torch
from torch import nn

from .qembedding import _untie_mapping, is_plain_embedding

CHUNK_ROWS = 4096  # lm_head rows widened to fp32 at a time for inputs of several tokens


def _exact_fp16(w: torch.Tensor) -> bool:
    """True when every value of the float tensor ``w`` is an fp16 number (round trip exact)."""
    if w.dtype is torch.float16:
        return True
    return bool(torch.equal(w.to(torch.float16).to(w.dtype), w))


class HalfEmbedding(nn.Module):
    """forward(ids [...]) -> float32 [..., dim]: rows of the fp16 buffer ``weight`` [vocab, dim],
    times ``embed_scale`` (e.g. Gemma's √dim) when set."""

    def __init__(self, weight: torch.Tensor, embed_scale: float | None = None,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.float16).contiguous())
        self.num_embeddings, self.embedding_dim = self.weight.shape
        self.embed_scale = None if embed_scale is None else float(embed_scale)
        self.padding_idx = padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = nn.functional.embedding(input_ids.to(self.weight.device), self.weight).to(torch.float32)
        if self.embed_scale is not None:
            out = out * torch.tensor(self.embed_scale, dtype=out.dtype, device=out.device)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fp16"


class HalfHead(nn.Module):
    """forward(x [..., dim] float32) -> float32 [..., vocab] = x Eᵀ (+ bias), E the fp16 buffer
    ``weight`` [vocab, dim] widened exactly, fp32 arithmetic (see the module docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.float16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        self.out_features, self.in_features = self.weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .kernels._common import one_token_view  # numba: loaded when a head first runs

        xn = one_token_view(x, self.in_features) if self.weight.is_cpu else None
        if xn is not None:
            from .kernels.half import half_matvec  # numba, as above

            y = torch.empty(self.out_features, dtype=torch.float32)
            half_matvec(xn[0], self.weight.view(torch.int16).numpy().view("uint16"), y.numpy())
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            xf = x.to(torch.float32)
            y = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.float32, device=x.device)
            for a in range(0, self.out_features, CHUNK_ROWS):
                b = min(a + CHUNK_ROWS, self.out_features)
                y[..., a:b] = nn.functional.linear(xf, self.weight[a:b].to(torch.float32))
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16"


def halve_embeddings(model: nn.Module) -> int:
    """Replace the model's fp32 input embedding and lm_head, in place, by ``HalfEmbedding`` and
    ``HalfHead`` holding the same values in fp16 (a tied pair shares one tensor), where the
    values are exactly fp16 numbers and the modules are plain (or scaled) ``nn.Embedding`` and
    ``nn.Linear`` on the CPU, and runs the head's one-token kernel once. Returns the bytes of
    memory given back (0: nothing changed)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    plain_emb = (is_plain_embedding(emb) and id(emb) in names and emb.weight.dtype is torch.float32
                 and emb.weight.is_cpu)
    plain_head = (type(head) is nn.Linear and id(head) in names and head.weight.dtype is torch.float32
                  and head.weight.is_cpu)
    tied = plain_emb and plain_head and head.weight is emb.weight
    done: set[str] = set()
    saved = 0
    if plain_emb and _exact_fp16(emb.weight):
        scale = getattr(emb, "embed_scale", None)
        half = HalfEmbedding(emb.weight, None if scale is None else float(scale), emb.padding_idx)
        model.set_submodule(names[id(emb)], half)
        done.add(names[id(emb)])
        saved += emb.weight.numel() * 2
        if tied:
            new_head = HalfHead(half.weight, head.bias)
            new_head.weight = half.weight  # one tensor for the pair
            model.set_submodule(names[id(head)], new_head)
            done.add(names[id(head)])
    if plain_head and not tied and _exact_fp16(head.weight):
        model.set_submodule(names[id(head)], HalfHead(head.weight, head.bias))
        done.add(names[id(head)])
        saved += head.weight.numel() * 2
    if done:
        _untie_mapping(model, done)
        head = model.get_output_embeddings()
        if isinstance(head, HalfHead):  # its kernel compiles (or loads from numba's cache) now
            with torch.no_grad():
                head(torch.zeros(1, head.in_features))
    return saved

"""Quantized input embeddings and lm_head: 8- or 4-bit round-to-nearest codes, row by row.

The embedding matrix E [vocab, dim] is quantized with lvq's RTN (lvq/baselines.py): per row and
group of ``group_size`` columns an fp16 scale s and zero z, per weight a ``bits``-bit code q, so
row t decodes to Ê_t = (q_t − z_t)·s_t. With dim·bits a multiple of 8 every row is a whole
number of bytes of the packed codes, so a row can be read alone:

* ``QuantizedEmbedding`` (replaces ``nn.Embedding``) holds the stored tensors as buffers and its
  forward gathers only the requested rows' bytes and decodes them: memory stays ~bits per weight
  and no decoded matrix is ever built;
* the lm_head becomes a ``QuantizedLinear`` over the same kind of weight (``EmbeddingWeight``;
  on CPU its "packed" mode runs the scalar numba kernel). When the model ties lm_head to the
  embeddings, the head's buffers *are* the embedding's: stored once, counted once.

What saved runs need (lvq/runs.py, lvq/hf.py): ``embedding_entries`` describes the quantized
modules as JSON, ``install_quantized_embeddings`` rebuilds them (from tensors, or empty for
transformers to fill), ``tie_heads`` re-shares a tied head's buffers (after loading, or after a
move to another device, which copies each buffer separately), ``quantized_model_size`` counts
them in the model's size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .baselines import RTNWeight
from .config import RTNConfig
from .errors import LvqError
from .eval import model_size
from .methods import quantize_layer
from .packing import unpack
from .qlinear import QuantizedLinear

EMBED_BITS = (4, 8)
CHUNK_ROWS = 4096  # rows quantized at a time (RTN is per row; bounds the packing's temporaries)


def check_embed_settings(bits: Any, group_size: Any = 64, dim: int | None = None) -> None:
    """LvqError unless ``bits`` is 4 or 8, ``group_size`` a positive integer and rows of ``dim``
    codes whole bytes."""
    if isinstance(bits, bool) or bits not in EMBED_BITS:
        raise LvqError(f"embedding bits must be 4 or 8, got {bits!r}; use 8 (close to lossless) "
                       "or 4 (half the size), e.g. --embed-bits 8")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise LvqError(f"embedding group_size must be a positive integer, got {group_size!r}")
    if dim is not None and (dim * bits) % 8:
        raise LvqError(f"{bits}-bit rows of {dim} values are not whole bytes; use 8 bits")


@dataclass(frozen=True)
class EmbeddingWeight(RTNWeight):
    """RTNWeight [vocab, dim] whose rows are whole bytes of ``codes`` (dim·bits % 8 == 0), so that
    rows decode alone and without the generic bit unpacking."""

    def __post_init__(self) -> None:
        check_embed_settings(self.bits, self.group_size, self.in_features)

    def decode_rows(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Ê[rows] as float32 [n, dim] from those rows' stored bytes only (all rows when None);
        the same arithmetic as ``dequantize``, so the values are identical."""
        packed, scale, zero = self.codes.view(self.out_features, -1), self.scale, self.zero
        if rows is not None:
            packed, scale, zero = packed[rows], scale[rows], zero[rows]
        if self.bits == 8:
            q = packed.to(torch.float32)
        elif self.bits == 4:  # packing is LSB first: the low nibble is the even column
            q = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], -1).to(torch.float32)
        else:
            q = unpack(packed.reshape(-1), self.bits, (packed.shape[0], self.in_features)).to(torch.float32)
        g = self._col_groups(q.device)
        return (q - zero.to(torch.float32)[:, g]) * scale.to(torch.float32)[:, g]

    def dequantize(self) -> torch.Tensor:
        return self.decode_rows(None)


def quantize_embedding_matrix(E: torch.Tensor, bits: int, group_size: int = 64) -> EmbeddingWeight:
    """RTN codes of an embedding or lm_head matrix E [vocab, dim]: per row, groups of
    ``group_size`` columns (``lvq.quantize_layer`` with ``RTNConfig``, a block of rows at a time)."""
    check_embed_settings(bits, group_size, E.shape[1])
    cfg = RTNConfig(bits=bits, group_size=group_size)
    parts = [quantize_layer(E[a:a + CHUNK_ROWS].detach().to(torch.float32), None, cfg)
             for a in range(0, E.shape[0], CHUNK_ROWS)]
    return EmbeddingWeight(codes=torch.cat([p.codes for p in parts]), scale=torch.cat([p.scale for p in parts]),
                           zero=torch.cat([p.zero for p in parts]), bits=bits, group_size=group_size,
                           out_features=E.shape[0], in_features=E.shape[1])


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` replacement: forward(ids [batch, seq]) -> float32 [batch, seq, dim], the
    requested rows decoded from their codes (times ``embed_scale``, e.g. Gemma's √dim, if set).
    ``tied_head``: the name of the lm_head that shares these buffers, if any."""

    def __init__(self, qweight: RTNWeight, embed_scale: float | None = None,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        tensors, meta = qweight.state()
        EmbeddingWeight.from_state(tensors, meta)  # checks that rows are whole bytes
        self.meta: dict[str, Any] = meta
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.state_names = list(tensors)
        for name, t in tensors.items():
            self.register_buffer(name, t.detach().clone())
        self.embed_scale = None if embed_scale is None else float(embed_scale)
        self.padding_idx = padding_idx
        self.tied_head: str | None = None

    def qweight(self) -> EmbeddingWeight:
        """The stored form (views of this module's buffers)."""
        return EmbeddingWeight.from_state({n: getattr(self, n) for n in self.state_names}, self.meta)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = input_ids.reshape(-1).to(self.codes.device)
        out = self.qweight().decode_rows(rows)
        if self.embed_scale is not None:
            out = out * torch.tensor(self.embed_scale, dtype=out.dtype, device=out.device)
        return out.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.meta['bits']}, "
                f"group_size={self.meta['group_size']}, tied_head={self.tied_head}")


def is_head(module: nn.Module) -> bool:
    """A quantized lm_head (a QuantizedLinear over an EmbeddingWeight; no decoder linear is one)."""
    return isinstance(module, QuantizedLinear) and issubclass(module.weight_cls, EmbeddingWeight)


def share_buffers(head: QuantizedLinear, embedding: QuantizedEmbedding) -> None:
    """Point the head's stored tensors at the embedding's (one copy in memory and on disk)."""
    for n in head.state_names:
        setattr(head, n, getattr(embedding, n))
    head.invalidate()


def tie_heads(model: nn.Module) -> int:
    """Re-share every tied head's buffers with its embedding; returns how many were tied."""
    n = 0
    for m in model.modules():
        if isinstance(m, QuantizedEmbedding) and m.tied_head:
            share_buffers(model.get_submodule(m.tied_head), m)
            n += 1
    return n


def is_plain_embedding(emb: nn.Module) -> bool:
    """A plain ``nn.Embedding`` or a scaled one (a subclass with ``embed_scale``, e.g. Gemma's):
    the input embeddings lvq may replace (quantized here, held in fp16 in lvq/half_embeddings.py)."""
    return isinstance(emb, nn.Embedding) and (type(emb) is nn.Embedding or hasattr(emb, "embed_scale"))


def _untie_mapping(model: nn.Module, names: set[str]) -> None:
    """Drop transformers' tied-parameter entries (``lm_head.weight`` -> ``...embed_tokens.weight``)
    that point into replaced modules: those have no ``weight`` parameter, and ``tie_heads`` ties."""
    def inside(key: str) -> bool:
        return any(key == n or key.startswith(n + ".") for n in names)
    for prefix, mod in model.named_modules():
        for attr in ("all_tied_weights_keys", "_tied_weights_keys"):
            mapping = getattr(mod, attr, None)
            if isinstance(mapping, dict) and mapping:
                full = (lambda k: f"{prefix}.{k}") if prefix else (lambda k: k)
                kept = {k: v for k, v in mapping.items() if not (inside(full(k)) or inside(full(v)))}
                if len(kept) != len(mapping):
                    setattr(mod, attr, kept)


def quantize_embeddings(model: nn.Module, bits: int, group_size: int = 64) -> dict[str, Any]:
    """Replace the model's input embedding and lm_head, in place, by ``bits``-bit RTN modules
    (bits 4 or 8; per row, groups of ``group_size`` columns). A tied lm_head shares the
    embedding's codes; an untied one is quantized on its own. Returns what was done:
    {"bits", "group_size", "tied", "modules": {name: {"kind", "bits_per_weight", ...}}}."""
    check_embed_settings(bits, group_size)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(emb, QuantizedEmbedding):
        raise LvqError("the embeddings are already quantized")
    if not is_plain_embedding(emb):
        raise LvqError(f"the input embedding is a {type(emb).__name__}, which lvq cannot quantize "
                       "(a plain or scaled nn.Embedding is needed); run without embedding quantization")
    names = {id(m): n for n, m in model.named_modules()}
    emb_name = names[id(emb)]
    head = head if isinstance(head, nn.Linear) and id(head) in names else None
    tied = head is not None and head.weight is emb.weight
    mode = next((m.mode for m in model.modules() if isinstance(m, QuantizedLinear)), "decode")
    scale = getattr(emb, "embed_scale", None)
    qw = quantize_embedding_matrix(emb.weight, bits, group_size)
    qemb = QuantizedEmbedding(qw, embed_scale=None if scale is None else float(scale), padding_idx=emb.padding_idx)
    done = {emb_name: {"kind": "embedding", "bits_per_weight": qw.bits_per_weight()}}
    model.set_submodule(emb_name, qemb)
    if head is not None:
        head_name = names[id(head)]
        hq = qw if tied else quantize_embedding_matrix(head.weight, bits, group_size)
        qhead = QuantizedLinear(hq, bias=None if head.bias is None else head.bias.detach(), mode=mode)
        if tied:
            share_buffers(qhead, qemb)
            qemb.tied_head = head_name
        model.set_submodule(head_name, qhead)
        done[head_name] = {"kind": "head", "bits_per_weight": hq.bits_per_weight(),
                           "tied_to": emb_name if tied else None}
    _untie_mapping(model, set(done))
    return {"bits": bits, "group_size": group_size, "tied": tied, "modules": done}


def _stored(m: QuantizedLinear | QuantizedEmbedding) -> dict[str, Any]:
    return {"weight_cls": EmbeddingWeight.__name__, "meta": m.meta,
            "tensors": {n: [list(getattr(m, n).shape), str(getattr(m, n).dtype).split(".")[-1]]
                        for n in m.state_names}}


def embedding_entries(model: nn.Module) -> dict[str, dict[str, Any]]:
    """JSON description of the quantized embeddings and heads, by module name (run.json and the
    transformers quantization_config): stored form, tensor shapes and dtypes, and the tie."""
    out: dict[str, dict[str, Any]] = {}
    tied_to = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantizedEmbedding):
            out[name] = {"kind": "embedding", **_stored(m), "embed_scale": m.embed_scale,
                         "padding_idx": m.padding_idx, "tied_head": m.tied_head}
            if m.tied_head:
                tied_to[m.tied_head] = name
    for name, m in model.named_modules():
        if is_head(m):
            out[name] = {"kind": "head", **_stored(m), "bias": m.bias is not None, "tied_to": tied_to.get(name)}
    return out


def tied_head_keys(entries: dict[str, dict[str, Any]]) -> set[str]:
    """State-dict keys of tied heads (saved once, under the embedding's name)."""
    return {f"{name}.{n}" for name, e in entries.items() if e.get("tied_to") for n in e["tensors"]}


def _take(name: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if tensors is None:  # empty, for transformers to fill from the checkpoint
        return {n: torch.zeros(shape, dtype=getattr(torch, dtype)) for n, (shape, dtype) in entry["tensors"].items()}
    try:
        return {n: tensors.pop(f"{name}.{n}") for n in entry["tensors"]}
    except KeyError as e:
        raise LvqError(f"tensor {e} of the quantized {entry['kind']} {name} is missing") from None


def install_quantized_embeddings(model: nn.Module, entries: dict[str, dict[str, Any]],
                                 tensors: dict[str, torch.Tensor] | None = None) -> set[str]:
    """Replace the modules ``entries`` (``embedding_entries``) names by quantized ones, filled from
    ``tensors`` (their entries are popped) or, when None, zeros of the recorded shapes. Returns
    the state-dict keys the new modules hold (tied heads' included)."""
    keys: set[str] = set()
    built: dict[str, QuantizedEmbedding] = {}
    for name, e in sorted(entries.items(), key=lambda kv: kv[1]["kind"] != "embedding"):
        src = e.get("tied_to")
        if src and src not in built:
            raise LvqError(f"the quantized head {name} is tied to {src!r}, which is not a quantized embedding")
        qw = built[src].qweight() if src else EmbeddingWeight.from_state(_take(name, e, tensors), e["meta"])
        if e["kind"] == "embedding":
            mod = QuantizedEmbedding(qw, e.get("embed_scale"), e.get("padding_idx"))
            mod.tied_head = e.get("tied_head")
            built[name] = mod
        else:
            bias = None
            if e.get("bias"):
                bias = torch.zeros(qw.out_features) if tensors is None else tensors.pop(f"{name}.bias", None)
                if bias is None:
                    raise LvqError(f"the bias of the quantized head {name} is missing")
                keys.add(f"{name}.bias")
            mod = QuantizedLinear(qw, bias=bias)
            if src:
                share_buffers(mod, built[src])
        model.set_submodule(name, mod)
        keys.update(f"{name}.{n}" for n in mod.state_names)
    _untie_mapping(model, set(entries))
    return keys


def quantized_model_size(model: nn.Module, other_bits: int = 16) -> dict[str, float]:
    """``lvq.eval.model_size`` with quantized embeddings and heads at their stored bits (a tied
    pair once) in model_mb and fp16_mb, and left out of bits_per_weight and quantized_params
    (which stay the decoder blocks' linears)."""
    size = model_size(model, other_bits)
    embs = [m for m in model.modules() if isinstance(m, QuantizedEmbedding)]
    if not embs and not any(is_head(m) for m in model.modules()):
        return size
    dec = [m for m in model.modules() if isinstance(m, QuantizedLinear) and not is_head(m)]
    dec_bits = sum(sum(m.qweight().bit_breakdown().values()) for m in dec)
    dec_params = sum(m.out_features * m.in_features for m in dec)
    own = [m for m in embs if not m.tied_head]  # a tied embedding's bits are the head's, counted
    extra_bits = sum(sum(m.qweight().bit_breakdown().values()) for m in own)
    extra_params = sum(m.num_embeddings * m.embedding_dim for m in own)
    return {**size, "bits_per_weight": dec_bits / dec_params if dec_params else 16.0,
            "model_mb": size["model_mb"] + extra_bits / 8 / 1e6,
            "fp16_mb": size["fp16_mb"] + 16 * extra_params / 8 / 1e6,
            "quantized_params": dec_params}

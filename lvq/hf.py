"""Saved runs load in plain transformers: ``AutoModelForCausalLM.from_pretrained(run_dir)``.

A run folder's ``config.json`` carries ``quantization_config = {"quant_method": "lvq", ...}``
with every quantized linear's stored form (class, metadata, tensor shapes and dtypes), and those
of a quantized embedding and lm_head under ``embeddings`` (lvq/qembedding.py). Through
transformers' public registration API for custom quantizers (``register_quantization_config``,
``register_quantizer``), ``import lvq`` teaches transformers that method: before the weights are
read, each listed ``nn.Linear`` is replaced by an empty ``QuantizedLinear`` whose buffers the
checkpoint then fills, exactly as ``lvq.load_run`` rebuilds it (likewise the embedding; a tied
lm_head shares its buffers again once the weights are in). Without lvq imported, transformers
refuses the folder ("Unknown quantization type ... lvq") instead of loading random weights.

``register()`` runs once when lvq is imported (the one piece of work lvq does at import: the
issue this answers asks that a plain ``import lvq`` be enough).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from .methods import weight_class
from .qembedding import embedding_entries, install_quantized_embeddings, is_head, tie_heads, tied_head_keys
from .qlinear import QuantizedLinear, set_inference_mode

QUANT_METHOD = "lvq"
FORMAT = 1


class LvqConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a saved run. layers: {module name: {"weight_cls", "meta",
    "tensors": {state name: [shape, dtype]}, "bias": bool}}; method: the method config;
    embeddings: the quantized embedding and lm_head (``lvq.qembedding.embedding_entries``)."""

    def __init__(self, layers: dict[str, Any] | None = None, method: dict[str, Any] | None = None,
                 lvq_format: int = FORMAT, embeddings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.layers = layers or {}
        self.method = method or {}
        self.lvq_format = lvq_format
        self.embeddings = embeddings or {}

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, "lvq_format": self.lvq_format, "method": self.method,
                "layers": self.layers, **({"embeddings": self.embeddings} if self.embeddings else {})}


def hf_quantization_config(model, method_config: dict[str, Any]) -> dict[str, Any]:
    """The ``quantization_config`` dict of a quantized model (written by ``lvq.save_run``)."""
    layers = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantizedLinear) and not is_head(mod):
            layers[name] = {"weight_cls": mod.weight_cls.__name__, "meta": mod.meta,
                            "bias": mod.bias is not None,
                            "tensors": {n: [list(getattr(mod, n).shape), str(getattr(mod, n).dtype).split(".")[-1]]
                                        for n in mod.state_names}}
    return LvqConfig(layers=layers, method=method_config, embeddings=embedding_entries(model)).to_dict()


def _empty_quantized_linear(entry: dict[str, Any]) -> QuantizedLinear:
    """A QuantizedLinear with buffers of the recorded shapes and dtypes (the checkpoint fills them)."""
    tensors = {n: torch.zeros(shape, dtype=getattr(torch, dtype)) for n, (shape, dtype) in entry["tensors"].items()}
    qweight = weight_class(entry["weight_cls"]).from_state(tensors, entry["meta"])
    bias = torch.zeros(qweight.out_features) if entry["bias"] else None
    return QuantizedLinear(qweight, bias=bias)


class LvqHfQuantizer(HfQuantizer):
    """Loads lvq runs (pre-quantized only; quantizing happens in lvq)."""

    requires_calibration = True

    def update_dtype(self, dtype):
        return torch.float32 if dtype is None or dtype == "auto" else dtype

    def _process_model_before_weight_loading(self, model, **kwargs):
        for name, entry in self.quantization_config.layers.items():
            with torch.device("cpu"):
                model.set_submodule(name, _empty_quantized_linear(entry))
        embeddings = self.quantization_config.embeddings
        with torch.device("cpu"):
            install_quantized_embeddings(model, embeddings)  # also drops the ties into these modules
        # each quantized module's one-byte "weight" guard (lvq/runs.py GUARD) is expected here
        guards = {re.escape(f"{name}.weight") + "$" for name in [*self.quantization_config.layers, *embeddings]}
        model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | guards
        # a tied lm_head's tensors are saved once, under the embedding's name (tied after loading)
        shared = {re.escape(k) + "$" for k in tied_head_keys(embeddings)}
        if shared:
            model._keys_to_ignore_on_load_missing = set(model._keys_to_ignore_on_load_missing or ()) | shared
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        tie_heads(model)
        device = next(model.parameters()).device
        set_inference_mode(model, "packed" if device.type == "cpu" else "dense")
        return model

    def is_serializable(self):
        return False  # a run is written by lvq.save_run, which also writes run.json and the report

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Teach transformers the "lvq" quantization method (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(LvqConfig)
        register_quantizer(QUANT_METHOD)(LvqHfQuantizer)

"""The methods registry: name -> Method (config class, quantize function, stored-weight class).

Built once, here, from the ``METHODS`` lists that the method modules declare (they never import
this module back). ``quantize_layer(W, H, cfg)`` dispatches on ``cfg.method``;
``config_from_dict`` rebuilds a config from its JSON form. Adding a method is one module with a
``METHODS`` list, named below.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import baselines, crvq, glvq
from .errors import LvqError
from .qweight import Method, QuantizedWeight
from .rotated_weight import RotatedWeight, quantize_rotated, rotation_bits

_REGISTRY: dict[str, Method] = {m.name: m for m in (*baselines.METHODS, *glvq.METHODS, *crvq.METHODS)}
# Stored forms by class name (as saved runs name them): every method's, and the rotated wrapper.
WEIGHT_CLASSES: dict[str, type[QuantizedWeight]] = {
    **{m.weight_cls.__name__: m.weight_cls for m in _REGISTRY.values()},
    RotatedWeight.__name__: RotatedWeight,
}

# Settings that older lvq versions wrote into run.json and that no longer exist (they had no
# effect); reading an old run drops them instead of refusing it.
_RETIRED_SETTINGS = {"glvq": {"seed"}}


def method_names() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise LvqError(f"unknown method {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def config_from_dict(d: dict[str, Any]):
    """Rebuild a method config from its ``to_dict()`` form (as stored in run.json)."""
    d = dict(d)
    name = d.pop("method", None)
    if name is None:
        raise ValueError("config has no 'method' field")
    cls = get_method(name).config_cls
    for key in _RETIRED_SETTINGS.get(name, ()):
        d.pop(key, None)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown settings for {name}: {sorted(unknown)}")
    for f in dataclasses.fields(cls):  # JSON turns tuples into lists
        if f.name in d and isinstance(d[f.name], list):
            d[f.name] = tuple(d[f.name])
    return cls(**d)


def weight_class(name: str) -> type[QuantizedWeight]:
    """The stored-form class a saved run names (LvqError for one this lvq does not know)."""
    if name not in WEIGHT_CLASSES:
        raise LvqError(f"unknown stored form {name!r}; this lvq reads {', '.join(WEIGHT_CLASSES)}")
    return WEIGHT_CLASSES[name]


def quantize_layer(W: torch.Tensor, H: torch.Tensor | None, cfg) -> QuantizedWeight:
    """Quantize one weight matrix W [out, in] given H = XᵀX/n [in, in] (None = identity, plain
    MSE), with incoherence processing around the method when ``cfg.incoherence``."""
    if W.dim() != 2:
        raise ValueError(f"W must be a 2-D [out, in] matrix, got shape {tuple(W.shape)}")
    if H is not None and tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must be [in, in] = [{W.shape[1]}, {W.shape[1]}], got {tuple(H.shape)}")
    quantize = get_method(cfg.method).quantize
    return quantize_rotated(W, H, cfg, quantize) if cfg.incoherence else quantize(W, H, cfg)


def estimate_layer_bits(out_features: int, in_features: int, cfg) -> float:
    """Bits per weight ``quantize_layer`` would store for an [out, in] layer, from shapes alone."""
    method = get_method(cfg.method)
    if method.estimate_bits is None:
        raise ValueError(f"{cfg.method} has no size estimate")
    bits = method.estimate_bits(out_features, in_features, cfg)
    if cfg.incoherence:
        bits += rotation_bits(out_features, in_features, cfg.train_rotation) / (out_features * in_features)
    return bits

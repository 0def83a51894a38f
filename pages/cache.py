"""What the dashboard's sessions share in one process: loaded models, reports, per-session signals.

* Models are loaded once per process and shared by every session (``BASE_MODELS`` for original
  models, ``RUN_MODELS`` for saved quantized runs); each cache loads a key under its own lock, so
  two sessions asking for the same model at once wait for one load instead of doing two.
* Cancel / stop flags are ``threading.Event``\\ s keyed by the Gradio session, so one user's Stop
  never stops another user's generation (``SIGNALS``).

The caches are process-wide by design (a model is hundreds of MB); nothing here loads anything at
import time.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any, Callable

from transformers import AutoConfig

import lvq
from lvq.models import resolve


class KeyedCache:
    """A small LRU cache whose values are built once per key, under a per-key lock."""

    def __init__(self, loader: Callable[[str], Any], max_items: int = 2):
        self._loader = loader
        self._max = max_items
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def get(self, key: str) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = self._loader(key)
            self.put(key, value)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items


def _load_config(name: str):
    return AutoConfig.from_pretrained(resolve(name)[1])


BASE_MODELS = KeyedCache(lvq.load_model, max_items=2)  # name -> (model, tokenizer), fp32, shared
RUN_MODELS = KeyedCache(lvq.load_run, max_items=2)     # run dir -> (model, tokenizer, report)
REPORTS = KeyedCache(lvq.load_report, max_items=8)     # run dir -> Report (small pandas tables)
CONFIGS = KeyedCache(_load_config, max_items=8)        # model name -> transformers config
_PPL_FP: dict[tuple, float] = {}
_PPL_LOCK = threading.Lock()


def fresh_model(name: str):
    """A private copy of the original model to quantize in place (the shared one stays intact)."""
    model, tok = BASE_MODELS.get(name)
    return copy.deepcopy(model), tok


def fp_perplexity(name: str) -> Callable[..., float]:
    """An ``fp_perplexity`` for :func:`lvq.jobs.run_job` that scores the original ``name`` once
    per protocol (corpus text, seqlen, windows) and remembers the result."""
    def score(model, tok, text: str, seqlen: int, windows: int) -> float:
        key = (name, hash(text), seqlen, windows)
        with _PPL_LOCK:
            if key in _PPL_FP:
                return _PPL_FP[key]
        ppl = lvq.perplexity(model, tok, text, seqlen=seqlen, max_windows=windows)
        with _PPL_LOCK:
            _PPL_FP[key] = ppl
        return ppl
    return score


def estimate_size(name: str, cfg) -> dict:
    """lvq.estimate_size from the model's config (the model itself is not loaded)."""
    if name in BASE_MODELS:
        return lvq.estimate_size(BASE_MODELS.get(name)[0], cfg)
    return lvq.estimate_size(CONFIGS.get(name), cfg)


class SessionSignals:
    """``threading.Event`` per (session, kind): Cancel for runs, Stop for chat."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()

    def fresh(self, session: str, kind: str) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self._events[(session, kind)] = ev
        return ev

    def set(self, session: str, kind: str) -> bool:
        with self._lock:
            ev = self._events.get((session, kind))
        if ev is None:
            return False
        ev.set()
        return True


SIGNALS = SessionSignals()


def session_id(request: Any) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def gpu(fn: Callable) -> Callable:
    """Wrap a GPU entry point with ``spaces.GPU`` on a ZeroGPU Space; plain elsewhere."""
    try:
        import spaces  # type: ignore[import-not-found]  # only present on a Hugging Face Space
    except ImportError:
        return fn
    return spaces.GPU(fn)

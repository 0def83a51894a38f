"""What the dashboard's sessions share in one process: loaded models, reports, per-session signals.

* Models are loaded once per process and shared by every session (``BASE_MODELS`` for original
  models, ``RUN_MODELS`` for saved quantized runs); each cache loads a key under its own lock, so
  two sessions asking for the same model at once wait for one load instead of doing two.
* Cancel / stop flags are ``threading.Event``\\ s keyed by the Gradio session, so one user's Stop
  never stops another user's generation (``SIGNALS``).
* ``OPENED`` remembers when each saved run was last opened by any page of any session: a run
  loaded in ``RUN_MODELS`` or opened within the last ``open_minutes()`` is *open*, and the runs
  folder's size budget (pages/retention.py) never deletes an open run.
* On a ZeroGPU Space, ``gpu(fn, duration)`` asks for the GPU for as long as the job needs
  (``quantize_seconds``, ``chat_seconds``), capped.

The caches are process-wide by design (a model is hundreds of MB); nothing here loads anything at
import time.
"""
from __future__ import annotations

import copy
import json
import math
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import lvq
from lvq.calibration import quantizable_linears
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

    def drop(self, key: str) -> None:
        """Forget ``key`` (a deleted run); whoever still holds the value keeps it."""
        with self._lock:
            self._items.pop(key, None)


OPEN_MINUTES = 30.0  # default of $LVQ_OPEN_MINUTES


def open_minutes() -> float:
    """How long a run counts as open after a page last opened it: ``$LVQ_OPEN_MINUTES`` or 30."""
    try:
        return max(float(os.environ.get("LVQ_OPEN_MINUTES", OPEN_MINUTES)), 0.0)
    except ValueError:
        return OPEN_MINUTES


class RecentRuns:
    """When each run folder was last opened (path -> time.monotonic()), under a lock."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, path: str) -> None:
        with self._lock:
            self._seen[path] = time.monotonic()

    def recent(self, path: str, minutes: float | None = None) -> bool:
        minutes = open_minutes() if minutes is None else minutes
        with self._lock:
            t = self._seen.get(path)
        return t is not None and time.monotonic() - t < minutes * 60

    def forget(self, path: str) -> None:
        with self._lock:
            self._seen.pop(path, None)


def _load_config(name: str):
    return AutoConfig.from_pretrained(resolve(name)[1])


def _count_weights(name: str) -> tuple[int, int]:
    """(weights in the decoder blocks' linears, all parameters) of model ``name``, from its config
    on the meta device (nothing is loaded)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(CONFIGS.get(name))
    linear = sum(m.in_features * m.out_features for _b, _n, m in quantizable_linears(model))
    return linear, sum(p.numel() for p in model.parameters())


BASE_MODELS = KeyedCache(lvq.load_model, max_items=2)  # name -> (model, tokenizer), fp32, shared
RUN_MODELS = KeyedCache(lvq.load_run, max_items=2)     # run dir -> (model, tokenizer, report)
REPORTS = KeyedCache(lvq.load_report, max_items=8)     # run dir -> Report (small pandas tables)
CONFIGS = KeyedCache(_load_config, max_items=8)        # model name -> transformers config
WEIGHTS = KeyedCache(_count_weights, max_items=8)      # model name -> (linear weights, parameters)
OPENED = RecentRuns()                                  # run dir -> when a page last opened it
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


def is_open(path: str) -> bool:
    """A run is open while its model is loaded here or a page opened it recently (``OPENED``)."""
    return path in RUN_MODELS or OPENED.recent(path)


# ZeroGPU: spaces.GPU(duration=s) asks the Space's scheduler for the GPU for up to s seconds. The
# request is checked against the visitor's remaining quota and per-call limit before the call
# starts, shorter requests are scheduled sooner, a call still running after s seconds is aborted,
# and only the time used is charged. So each entry point asks for an estimate of its job, capped.
GPU_MIN_S = 20     # attach the GPU, move the model, a short job
GPU_MAX_S = 120    # the most any call asks for (longer requests are refused on the smaller tiers)
GPU_FLOPS = 1e13   # effective fp32 rate of a ZeroGPU slice for the forward passes (a guess)
# GPU seconds per million quantized weights at each method's "fast" effort. Guesses scaled down
# from the CPU timings in BENCHMARKS.md, not yet measured on a GPU: replace with measured figures.
SECONDS_PER_MWEIGHT = {"rtn": 0.02, "gptq": 0.1, "glvq": 0.5, "aqlm": 0.8, "crvq": 0.8}
CHAT_SECONDS_PER_TOKEN = 0.03  # one decoding step of a sub-1B model, Python overhead included


def _within_limits(seconds: float) -> int:
    return int(min(GPU_MAX_S, max(GPU_MIN_S, math.ceil(seconds))))


def _effort(cfg) -> float:
    """How much more work ``cfg`` is than its method's "fast" preset (1 = the same)."""
    if cfg.method == "glvq":
        return max(cfg.steps, 1) / 10
    if cfg.method in ("aqlm", "crvq"):
        books = getattr(cfg, "num_codebooks", 1) + getattr(cfg, "num_extended", 0) * getattr(cfg, "critical_ratio", 0)
        tune = 1 + cfg.finetune_steps / 10 if getattr(cfg, "finetune", False) else 1
        return max(cfg.epochs, 1) / 2 * 2 ** ((cfg.codebook_bits - 6) / 2) * books * tune
    return 1.0


def quantize_seconds(model_name: str, config: str, corpus: Any = None, upload: Any = None,
                     n_windows: float = 32, seqlen: float = 512, eval_windows: float = 32,
                     *_rest: Any, **_kwargs: Any) -> int:
    """GPU seconds to ask for one quantization job; takes the Quantize page's run arguments
    (model, config JSON, corpus, upload, calibration windows, seqlen, evaluation windows, ...).

    Forward passes (about 4 per block over the calibration windows, 2 evaluations) at GPU_FLOPS,
    plus the method's time per million weights scaled by the config's effort, plus end-to-end
    fine-tuning (a forward and a backward pass of about 3 forwards' work, one window per step).
    """
    try:
        cfg = lvq.config_from_dict(json.loads(config))
        linear, params = WEIGHTS.get(str(model_name).strip())
        tokens = (4 * int(n_windows) + 2 * int(eval_windows)) * int(seqlen)
        effort = _effort(cfg)
    except Exception:  # the job itself reports what is wrong; ask for the most meanwhile
        return GPU_MAX_S
    rate = SECONDS_PER_MWEIGHT.get(cfg.method, max(SECONDS_PER_MWEIGHT.values()))
    e2e_tokens = 3 * int(getattr(cfg, "e2e_steps", 0)) * int(seqlen)
    return _within_limits(GPU_MIN_S + 2 * params * (tokens + e2e_tokens) / GPU_FLOPS
                          + linear / 1e6 * rate * effort)


def chat_seconds(prompt: Any = None, run_dir: Any = None, hist_o: Any = None, hist_q: Any = None,
                 max_new_tokens: float = 128, *_rest: Any, **_kwargs: Any) -> int:
    """GPU seconds to ask for one chat turn (the Chat page's arguments): two models, each up to
    ``max_new_tokens`` decoding steps."""
    try:
        steps = 2 * int(max_new_tokens)
    except (TypeError, ValueError):
        return GPU_MAX_S
    return _within_limits(GPU_MIN_S + steps * CHAT_SECONDS_PER_TOKEN)


def gpu(fn: Callable, duration: int | Callable[..., int] = 60) -> Callable:
    """Wrap a GPU entry point with ``spaces.GPU`` on a ZeroGPU Space; plain elsewhere.

    duration: seconds to ask for, or a function of ``fn``'s arguments that returns them
    (``quantize_seconds``, ``chat_seconds``); kept within [GPU_MIN_S, GPU_MAX_S].
    """
    try:
        import spaces  # type: ignore[import-not-found]  # only present on a Hugging Face Space
    except ImportError:
        return fn
    if callable(duration):
        return spaces.GPU(duration=lambda *args, **kwargs: _within_limits(duration(*args, **kwargs)))(fn)
    return spaces.GPU(duration=_within_limits(duration))(fn)

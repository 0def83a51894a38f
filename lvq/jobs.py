"""One end-to-end job from a frozen spec: load, evaluate the original, quantize, evaluate, save.

The CLI (``python -m lvq quantize``/``sweep``), the dashboard's Quantize page and the benchmark all
run this one function; they only build a :class:`JobSpec` and show progress. Every saved run's
``metrics`` follow ``lvq.runs.METRICS`` (also read by the run table and the Compare page).
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import CalibConfig
from .data import eval_text
from .errors import Cancelled, LvqError
from .eval import perplexity
from .models import load_model
from .pipeline import QuantizeResult, quantize_model
from .qembedding import EMBED_BITS, quantize_embeddings, quantized_model_size
from .qlinear import set_inference_mode
from .runs import STORE_DTYPES, round_unquantized, save_run

Progress = Callable[[int, int, str], None]  # (step, total, message); total = 0: no step count


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity before/after on the last ``windows`` windows of ``seqlen`` tokens of the
    evaluation part of ``corpus`` (None: the calibration corpus). windows = 0 skips evaluation;
    ``reference`` = False skips the original model's perplexity."""

    corpus: str | None = None
    seqlen: int = 512
    windows: int = 32
    reference: bool = True

    def __post_init__(self) -> None:
        if self.seqlen < 2:
            raise ValueError(f"evaluation windows need at least 2 tokens, got seqlen={self.seqlen}")
        if self.windows < 0:
            raise ValueError(f"evaluation windows must be >= 0, got {self.windows}")


@dataclass(frozen=True)
class JobSpec:
    """Everything one run needs: model (bundled name, local folder or hub id), the method config,
    calibration and evaluation settings, and the run folder to write. ``sweep``: the sweep this
    run belongs to, ``{"name": str, "swept": {setting: value}}`` (JSON-safe), stored as the run's
    ``metrics["sweep"]`` (lvq/sweep.py fills it; None for a single run). ``embed_bits``: 4 or 8
    quantizes the input embedding and lm_head after the decoder blocks (lvq/qembedding.py,
    RTN, groups of 64; a tied pair once); None keeps them at ``store_dtype``."""

    model: str
    method: Any
    out_dir: str
    calib: CalibConfig = field(default_factory=CalibConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    overwrite: bool = False
    store_dtype: str = "fp16"

    sweep: dict[str, Any] | None = None
    embed_bits: int | None = None

    def __post_init__(self) -> None:
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.embed_bits is not None and (isinstance(self.embed_bits, bool) or self.embed_bits not in EMBED_BITS):
            raise ValueError(f"embed_bits must be one of {', '.join(map(str, EMBED_BITS))} or None "
                             f"(embeddings kept at {self.store_dtype}), got {self.embed_bits!r}")


@dataclass
class JobResult:
    run_dir: Path
    metrics: dict[str, Any]
    result: QuantizeResult


def _check_cancel(cancel, when: str) -> None:
    if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
        raise Cancelled(f"cancelled {when}; nothing was saved")


def run_job(spec: JobSpec, progress: Progress | None = None, cancel=None, *,
            loaded: tuple[Any, Any] | None = None,
            fp_perplexity: Callable[..., float] | None = None) -> JobResult:
    """Run ``spec`` end to end and save the run folder (atomically; nothing on cancel or error).

    loaded: (model, tokenizer) to quantize in place instead of loading ``spec.model`` (the
    dashboard passes a private copy of its shared model). fp_perplexity(model, tokenizer, text,
    seqlen, windows) -> float replaces the original model's evaluation (the dashboard caches it).
    cancel: a threading.Event or a callable, checked between layers and before saving.
    """
    t0 = time.perf_counter()
    say = progress or (lambda step, total, msg: None)
    out = Path(spec.out_dir)
    if out.exists() and not spec.overwrite:
        raise LvqError(f"{out} already exists; choose another name or allow overwriting")
    ev = spec.eval
    corpus = ev.corpus or spec.calib.corpus
    text = eval_text(corpus) if ev.windows else ""
    say(0, 0, f"loading {spec.model}…")
    model, tok = loaded if loaded is not None else load_model(spec.model)
    metrics: dict[str, Any] = {}
    if ev.windows:
        metrics.update(eval_corpus=corpus, eval_seqlen=ev.seqlen, eval_windows=ev.windows)
        if ev.reference:
            say(0, 0, "perplexity of the original model…")
            fp = fp_perplexity or perplexity
            metrics["ppl_fp"] = fp(model, tok, text, ev.seqlen, ev.windows)
    _check_cancel(cancel, "before quantizing")
    result = quantize_model(model, tok, spec.method, calib=spec.calib, progress=progress,
                            cancel=cancel)
    result.model_name = spec.model
    if spec.embed_bits is not None:
        say(0, 0, f"quantizing the embeddings to {spec.embed_bits} bits…")
        quantize_embeddings(model, spec.embed_bits)
        result.metrics["embed_bits"] = spec.embed_bits
    round_unquantized(model, spec.store_dtype)  # what is saved is what gets evaluated
    result.metrics.update(quantized_model_size(model, other_bits=STORE_DTYPES[spec.store_dtype].itemsize * 8))
    if ev.windows:
        say(0, 0, "perplexity of the quantized model…")
        set_inference_mode(model, "dense")  # long windows: decode each layer once, not per batch
        metrics["ppl"] = perplexity(model, tok, text, ev.seqlen, ev.windows)
    set_inference_mode(model, "packed" if next(model.parameters()).device.type == "cpu" else "dense")
    _check_cancel(cancel, "before saving")
    metrics["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics["job_time_s"] = time.perf_counter() - t0
    if spec.sweep is not None:
        metrics["sweep"] = spec.sweep
    say(0, 0, f"saving to {out}…")
    save_run(result, out, metrics=metrics, overwrite=spec.overwrite, dtype=spec.store_dtype)
    metrics["file_mb"] = (out / "model.safetensors").stat().st_size / 1e6
    return JobResult(run_dir=out, metrics={**result.metrics, **metrics}, result=result)

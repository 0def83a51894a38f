"""What the dashboard shares between sessions, and where it keeps its files.

* Models are loaded once per process and shared by every session (``BASE_MODELS`` for original
  models, ``RUN_MODELS`` for saved quantized runs); each cache loads a key under its own lock, so
  two sessions asking for the same model at once wait for one load instead of doing two.
* Cancel / stop flags are ``threading.Event``\\ s keyed by the Gradio session, so one user's Stop
  never stops another user's generation (``SIGNALS``).
* The UI reads and writes only its own folders: runs under ``runs_root()`` (``$LVQ_RUNS_DIR`` or
  ``runs/`` in the repository) and the bundled benchmark table in ``assets/``.

Nothing here touches a model at import time.
"""
from __future__ import annotations

import copy
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
BENCH_CSV = ASSETS / "bench_results.csv"
BENCH_COLUMNS = ["label", "method", "bits_per_weight", "model_mb", "ppl", "seqlen", "windows",
                 "quant_time_s", "peak_rss_mb"]
UPLOAD_LIMIT_BYTES = 20 * 2**20
DEFAULT_MODEL = "smollm2-135m"


# ----------------------------------------------------------------------------------------------
# Folders and environment
# ----------------------------------------------------------------------------------------------
def runs_root() -> Path:
    """Where runs are saved: ``$LVQ_RUNS_DIR`` or ``<repo>/runs``."""
    root = Path(os.environ.get("LVQ_RUNS_DIR") or REPO / "runs")
    root.mkdir(parents=True, exist_ok=True)
    return root


def extra_models() -> list[str]:
    """Local model folders added to the picker by ``$LVQ_EXTRA_MODELS`` (os.pathsep-separated)."""
    raw = os.environ.get("LVQ_EXTRA_MODELS", "")
    return [p for p in raw.split(os.pathsep) if p.strip()]


def model_choices() -> list[str]:
    """Bundled models that are installed, then the extra local folders."""
    import lvq

    names = [m["name"] for m in lvq.list_models() if m.get("available", True)]
    return names + [p for p in extra_models() if p not in names]


def gpu(fn: Callable) -> Callable:
    """Wrap a GPU entry point with ``spaces.GPU`` on a ZeroGPU Space; plain elsewhere."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(fn)


# ----------------------------------------------------------------------------------------------
# Shared model caches
# ----------------------------------------------------------------------------------------------
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


def _load_base(name: str):
    import lvq

    return lvq.load_model(name)


def _load_run(path: str):
    import lvq

    return lvq.load_run(path)


BASE_MODELS = KeyedCache(_load_base, max_items=2)      # name -> (model, tokenizer), fp32, shared
RUN_MODELS = KeyedCache(_load_run, max_items=2)        # run dir -> (model, tokenizer, report)
_PPL_FP: dict[tuple, float] = {}
_PPL_LOCK = threading.Lock()


def fresh_model(name: str):
    """A private copy of the original model to quantize in place (the shared one stays intact)."""
    model, tok = BASE_MODELS.get(name)
    return copy.deepcopy(model), tok


def fp_perplexity(name: str, corpus: str, seqlen: int, windows: int) -> float:
    """Perplexity of the original model on ``corpus``'s evaluation text, computed once per setting."""
    import lvq

    key = (name, corpus, seqlen, windows)
    with _PPL_LOCK:
        if key in _PPL_FP:
            return _PPL_FP[key]
    model, tok = BASE_MODELS.get(name)
    ppl = lvq.perplexity(model, tok, lvq.eval_text(corpus), seqlen=seqlen, max_windows=windows)
    with _PPL_LOCK:
        _PPL_FP[key] = ppl
    return ppl


# ----------------------------------------------------------------------------------------------
# Per-session flags
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Runs and tables
# ----------------------------------------------------------------------------------------------
def list_runs() -> pd.DataFrame:
    """The run table of ``runs_root()`` (empty with the usual columns when there is none)."""
    import lvq

    return lvq.list_runs(runs_root())


def run_choices(method: str | None = None) -> list[tuple[str, str]]:
    """(label, path) pairs for run dropdowns, newest first; only ``method`` runs when given."""
    df = list_runs()
    if method is not None and len(df):
        df = df[df["method"].astype(str).str.lower() == method]
    if len(df) and "created" in df:
        df = df.sort_values("created", ascending=False)
    out = []
    for _, r in df.iterrows():
        bits = r.get("bits_per_weight")
        tag = f" · {bits:.2f} b/w" if isinstance(bits, (int, float)) and bits == bits else ""
        out.append((f"{r['run']}{tag}", str(r["path"])))
    return out


def new_run_dir(model: str, method: str, bits: float | None) -> Path:
    short = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name)[:40].strip("-") or "model"
    b = f"-{bits:g}b" if bits is not None else ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs_root().resolve() / f"{short}-{method}{b}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def run_path(run_dir: str | None) -> str:
    """A run folder inside ``runs_root()`` (the UI opens no other folder); ValueError otherwise."""
    if not run_dir:
        raise ValueError("no run selected")
    root = runs_root().resolve()
    p = Path(run_dir)
    p = (p if p.is_absolute() else root / p).resolve()
    if root not in p.parents or not p.is_dir():
        raise ValueError(f"{run_dir} is not a saved run of this dashboard")
    return str(p)


def _load_report(run_dir: str):
    import lvq

    loader = getattr(lvq, "load_report", None)
    if loader is not None:
        return loader(run_dir)
    lvq.read_run_info(run_dir)  # a clear LvqError for a folder that is not a run
    return lvq.Report.load(Path(run_dir) / "report")


REPORTS = KeyedCache(_load_report, max_items=8)      # run dir -> Report (small pandas tables)


def load_report(run_dir: str):
    """The report of a saved run, without loading its model."""
    return REPORTS.get(run_path(run_dir))


def _load_config(name: str):
    from transformers import AutoConfig

    from lvq.models import resolve

    return AutoConfig.from_pretrained(resolve(name)[1])


CONFIGS = KeyedCache(_load_config, max_items=8)      # model name -> transformers config


def estimate_size(name: str, cfg) -> dict:
    """lvq.estimate_size from the model's config (the model itself is not loaded)."""
    import lvq

    if name in BASE_MODELS:
        return lvq.estimate_size(BASE_MODELS.get(name)[0], cfg)
    return lvq.estimate_size(CONFIGS.get(name), cfg)


def report_table(report: Any, name: str) -> pd.DataFrame:
    """``report.tables[name]`` (or ``report.layers`` for "layers"); empty when absent."""
    if report is None:
        return pd.DataFrame()
    if name == "layers":
        df = getattr(report, "layers", None)
    else:
        df = (getattr(report, "tables", None) or {}).get(name)
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame()


def load_bench(path: Path | str = BENCH_CSV) -> pd.DataFrame:
    """The benchmark table written by ``make bench``; empty (same columns) when it is missing."""
    p = Path(path)
    if not p.is_file():
        return pd.DataFrame(columns=BENCH_COLUMNS)
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return pd.DataFrame(columns=BENCH_COLUMNS)
    for c in BENCH_COLUMNS:
        if c not in df:
            df[c] = None
    return df


def read_upload(path: str | None) -> str:
    """Validate an uploaded calibration file: UTF-8 text, not empty, at most 20 MB."""
    from lvq.data import read_text_file

    if not path:
        raise ValueError("no file uploaded: choose a .txt file or pick a bundled corpus")
    return read_text_file(path, max_bytes=UPLOAD_LIMIT_BYTES)

"""The dashboard's files: where runs live, the run table, reports, the benchmark table, uploads.

The UI reads and writes only its own folders: runs under ``runs_root()`` (``$LVQ_RUNS_DIR`` or
``runs/`` in the repository) and the benchmark table in ``assets/``; ``run_path`` refuses any
other folder.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pandas as pd

import lvq
from lvq.data import read_text_file

from . import cache

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
BENCH_CSV = ASSETS / "bench_results.csv"
BENCH_COLUMNS = ["label", "method", "bits_per_weight", "model_mb", "ppl", "seqlen", "windows",
                 "quant_time_s", "peak_rss_mb"]
UPLOAD_LIMIT_BYTES = 20 * 2**20


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
    names = [m["name"] for m in lvq.list_models() if m.get("available", True)]
    return names + [p for p in extra_models() if p not in names]


def list_runs() -> pd.DataFrame:
    """The run table of ``runs_root()`` (empty with the usual columns when there is none)."""
    return lvq.list_runs(runs_root())


def run_choices(methods: tuple[str, ...] | str | None = None) -> list[tuple[str, str]]:
    """(label, path) pairs for run dropdowns, newest first; only runs of ``methods`` when given."""
    df = list_runs()
    if isinstance(methods, str):
        methods = (methods,)
    if methods is not None and len(df):
        df = df[df["method"].astype(str).str.lower().isin(methods)]
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


def load_report(run_dir: str):
    """The report of a saved run, without loading its model (cached per run)."""
    return cache.REPORTS.get(run_path(run_dir))


def report_table(report, name: str) -> pd.DataFrame:
    """``report.tables[name]`` (or ``report.layers`` for "layers"); empty when absent."""
    if report is None:
        return pd.DataFrame()
    df = report.layers if name == "layers" else report.tables.get(name)
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


def preset_rows(bench: pd.DataFrame | None = None) -> pd.DataFrame:
    """Benchmark rows measured with exactly a method's preset config (default settings of that
    preset): columns method, preset, label, bits_per_weight, ppl, quant_time_s."""
    bench = load_bench() if bench is None else bench
    rows = []
    for _, r in bench.iterrows():
        try:
            cfg = lvq.config_from_dict(json.loads(r["config"]))
        except (TypeError, ValueError, KeyError):  # fp rows, retired settings, unknown methods
            continue
        seen: list = []
        for name in cfg.presets:  # a preset equal to an earlier one (RTN's two) is listed once
            preset = type(cfg).preset(name)
            if preset in seen:
                continue
            seen.append(preset)
            if cfg == preset:
                rows.append({"method": cfg.method, "preset": name, "label": r["label"],
                             "bits_per_weight": r["bits_per_weight"], "ppl": r["ppl"],
                             "quant_time_s": r["quant_time_s"]})
    df = pd.DataFrame(rows, columns=["method", "preset", "label", "bits_per_weight", "ppl",
                                     "quant_time_s"])
    return df.drop_duplicates(["method", "preset"]).reset_index(drop=True)


def read_upload(path: str | None) -> str:
    """Validate an uploaded calibration file: UTF-8 text, not empty, at most 20 MB."""
    if not path:
        raise ValueError("no file uploaded: choose a .txt file or pick a bundled corpus")
    return read_text_file(path, max_bytes=UPLOAD_LIMIT_BYTES)

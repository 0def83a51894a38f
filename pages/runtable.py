"""The dashboard's files: where runs live, the run table, reports, the benchmark table, uploads.

The UI reads and writes only its own folders: runs under ``runs_root()`` (``$LVQ_RUNS_DIR`` or
``runs/`` in the repository), the report-only examples under ``examples_root()``
(``$LVQ_EXAMPLES_DIR`` or ``assets/examples/``) and the benchmark table in ``assets/``.
``run_path`` is the one door to a run: it refuses any other folder, any run the visitor may not
see (pages/sessions.py), and an example where weights are needed; every page and API endpoint
opens runs through it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd

import lvq
from lvq.data import read_text_file

from . import cache, sessions

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
BENCH_CSV = ASSETS / "bench_results.csv"
BENCH_COLUMNS = ["label", "method", "bits_per_weight", "model_mb", "ppl", "seqlen", "windows",
                 "quant_time_s", "peak_rss_mb"]
UPLOAD_LIMIT_BYTES = 20 * 2**20
REPORT_ONLY = "report-only example: quantize to chat with it"
EXAMPLE_TAG = "example — report only: quantize to chat with it"


def runs_root() -> Path:
    """Where runs are saved: ``$LVQ_RUNS_DIR`` or ``<repo>/runs``."""
    root = Path(os.environ.get("LVQ_RUNS_DIR") or REPO / "runs")
    root.mkdir(parents=True, exist_ok=True)
    return root


def examples_root() -> Path:
    """Where the report-only examples are: ``$LVQ_EXAMPLES_DIR`` or ``<repo>/assets/examples``
    (may be missing; never written by the UI)."""
    return Path(os.environ.get("LVQ_EXAMPLES_DIR") or ASSETS / "examples")


def extra_models() -> list[str]:
    """Local model folders added to the picker by ``$LVQ_EXTRA_MODELS`` (os.pathsep-separated)."""
    raw = os.environ.get("LVQ_EXTRA_MODELS", "")
    return [p for p in raw.split(os.pathsep) if p.strip()]


def model_choices() -> list[str]:
    """Bundled models that are installed, then the extra local folders."""
    names = [m["name"] for m in lvq.list_models() if m.get("available", True)]
    return names + [p for p in extra_models() if p not in names]


def _access(viewer: sessions.Viewer, record: dict | None) -> str:
    if viewer.owns(record):
        return "yours · shared" if record.get("shared") else "yours"
    if record is None:
        return "local"  # no owner.json: saved outside the dashboard (visible with LVQ_SHARED_RUNS=1)
    return "shared" if record.get("shared") else "another visitor's"


def list_runs(viewer: sessions.Viewer, examples: bool = False) -> pd.DataFrame:
    """The run table of the runs this visitor may see (``lvq.list_runs`` columns plus ``access``:
    yours / yours · shared / shared / local / example), then the examples when asked."""
    df = lvq.list_runs(runs_root())
    records = [sessions.read_owner(p) for p in df["path"]]
    keep = [viewer.sees(r) for r in records]
    df = df.assign(access=[_access(viewer, r) for r in records])[keep]
    if examples and examples_root().is_dir():
        ex = lvq.list_runs(examples_root()).assign(access="example")
        df = pd.concat([df, ex], ignore_index=True) if len(ex) else df
    return df.reset_index(drop=True)


def run_choices(viewer: sessions.Viewer, methods: tuple[str, ...] | str | None = None,
                examples: bool = True, prefer: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(label, path) pairs for run dropdowns: the visitor's runs, then other visible runs (each
    newest first), then the examples (those of the ``prefer`` methods first); only runs of
    ``methods`` when given."""
    df = list_runs(viewer, examples=examples)
    if isinstance(methods, str):
        methods = (methods,)
    if methods is not None and len(df):
        df = df[df["method"].astype(str).str.lower().isin(methods)]
    if len(df):
        rank = df["access"].map(lambda a: 0 if a.startswith("yours") else 2 if a == "example" else 1)
        rank = rank + ((df["access"] == "example") & ~df["method"].astype(str).str.lower().isin(prefer))
        df = df.assign(_rank=rank, _created=df["created"].astype(str))
        df = df.sort_values(["_rank", "_created"], ascending=[True, False], kind="stable")
    out = []
    for _, r in df.iterrows():
        bits = r.get("bits_per_weight")
        tag = f" · {bits:.2f} b/w" if isinstance(bits, (int, float)) and bits == bits else ""
        who = {"example": f" · {EXAMPLE_TAG}", "shared": " · shared", "local": "",
               "another visitor's": " · another visitor's"}.get(r["access"], "")
        out.append((f"{r['run']}{tag}{who}", str(r["path"])))
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


def _locate(run_dir: str | None) -> tuple[Path, bool]:
    """(resolved folder, is an example) of a run folder directly inside the runs or examples
    folder; ValueError for anything else."""
    if not run_dir:
        raise ValueError("no run selected")
    root = runs_root().resolve()
    p = Path(str(run_dir))
    p = (p if p.is_absolute() else root / p).resolve()
    if p.is_dir() and not p.name.startswith("."):
        if p.parent == root:
            return p, False
        if p.parent == examples_root().resolve():
            return p, True
    raise ValueError(f"{run_dir} is not a saved run of this dashboard")


def run_path(run_dir: str | None, viewer: sessions.Viewer, weights: bool = False) -> str:
    """A run folder this visitor may open, inside ``runs_root()`` or ``examples_root()``;
    ValueError otherwise: outside those folders, another visitor's unshared run (the same message
    as a missing run: nothing is revealed), or, with ``weights``, a report-only example."""
    p, example = _locate(run_dir)
    if example:
        if weights:
            raise ValueError(REPORT_ONLY)
        return str(p)
    if not viewer.sees(sessions.read_owner(p)):
        raise ValueError(f"{run_dir} is not a saved run of this dashboard")
    cache.OPENED.touch(str(p))
    return str(p)


def is_example(run_dir: str | None) -> bool:
    """Whether ``run_dir`` is one of the report-only examples."""
    try:
        return _locate(run_dir)[1]
    except ValueError:
        return False


def load_report(run_dir: str | None, viewer: sessions.Viewer):
    """The report of a saved run or example, without loading a model (cached per run)."""
    return cache.REPORTS.get(run_path(run_dir, viewer))


def remove_run_dir(path: str) -> None:
    """Delete a run folder of the runs folder: renamed to a hidden name first (so no page ever
    lists a half-deleted run), then removed; dropped from the caches."""
    p, example = _locate(path)
    if example:
        raise ValueError("examples are never deleted")
    trash = p.with_name(f".{p.name}.deleting-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(p, trash)
    for c in (cache.RUN_MODELS, cache.REPORTS):
        c.drop(str(p))
    cache.OPENED.forget(str(p))
    shutil.rmtree(trash, ignore_errors=True)


def delete_run(run_dir: str | None, viewer: sessions.Viewer) -> str:
    """Delete one of the visitor's own runs; returns its name. ValueError for anything else."""
    p, example = _locate(run_dir)
    if example:
        raise ValueError("examples cannot be deleted")
    path = run_path(str(p), viewer)
    if not viewer.may_delete(sessions.read_owner(path)):
        raise ValueError("only the visitor who made a run can delete it")
    remove_run_dir(path)
    return p.name


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
    preset): columns method, preset, label, bits_per_weight, ppl, quant_time_s (the fastest of
    the row's runs where the table has it: benchmark jobs often shared the cores) and n_seeds."""
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
                fastest = r.get("quant_time_s_min")
                rows.append({"method": cfg.method, "preset": name, "label": r["label"],
                             "bits_per_weight": r["bits_per_weight"], "ppl": r["ppl"],
                             "quant_time_s": r["quant_time_s"] if pd.isna(fastest) else fastest,
                             "n_seeds": 1 if pd.isna(r.get("n_seeds")) else int(r["n_seeds"])})
    df = pd.DataFrame(rows, columns=["method", "preset", "label", "bits_per_weight", "ppl",
                                     "quant_time_s", "n_seeds"])
    return df.drop_duplicates(["method", "preset"]).reset_index(drop=True)


def read_upload(path: str | None) -> str:
    """Validate an uploaded calibration file: UTF-8 text, not empty, at most 20 MB."""
    if not path:
        raise ValueError("no file uploaded: choose a .txt file or pick a bundled corpus")
    return read_text_file(path, max_bytes=UPLOAD_LIMIT_BYTES)

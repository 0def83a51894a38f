"""The benchmark's tables: result files in assets/bench/, BENCHMARKS.md, the dashboard's table.

Every model-level entry may run with several calibration seeds (one row per seed in
``assets/bench/<section>.csv``); BENCHMARKS.md shows each entry once, with the median over its
seeds and the [min – max] range next to it, so that a difference between two settings can be
read against the spread of the same setting.
"""
from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets" / "bench"
COLUMNS = ["section", "label", "seed", "method", "bits_per_weight", "model_mb", "file_mb", "ppl",
           "talk_ppl", "talk_degenerate", "seqlen", "windows", "quant_time_s", "peak_rss_mb", "config"]
SPREAD = ("ppl", "talk_ppl", "talk_degenerate")  # medians with [min – max] over seeds


@contextmanager
def locked():
    """Serialise writes of the result files between concurrent benchmark processes."""
    ASSETS.mkdir(parents=True, exist_ok=True)
    with open(ASSETS / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read(section: str) -> pd.DataFrame:
    f = ASSETS / f"{section}.csv"
    df = pd.read_csv(f) if f.is_file() else pd.DataFrame(columns=COLUMNS)
    if "seed" not in df:
        df["seed"] = 0
    return df


def append(section: str, row: dict) -> None:
    """Add (or replace) one (label, seed) row of a section's result file."""
    with locked():
        df = read(section)
        seed = row.get("seed", 0)
        df = df[~((df["label"] == row["label"]) & (df["seed"].fillna(0) == seed))]
        df = pd.concat([df, pd.DataFrame([{"section": section, **row}])], ignore_index=True)
        df.to_csv(ASSETS / f"{section}.csv", index=False)
    talk = (f", talk ppl {row['talk_ppl']:.3g} ({row['talk_degenerate']:.0%} degenerate)"
            if isinstance(row.get("talk_ppl"), float) else "")
    print(f"[{section}] {row['label']} (seed {seed}): {row['bits_per_weight']:.3f} bpw, ppl "
          f"{row['ppl']:.2f}{talk}, {row['quant_time_s']:.0f} s", flush=True)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (numbers to 4 significant digits)."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "" if v != v else f"{v:.4g}"


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per label (first-seen order): the medians over seeds of ``SPREAD`` with their
    ranges ("median [min – max]" when more than one seed ran), the other numbers' medians, and
    the number of seeds ``n``."""
    rows = []
    for label, g in df.groupby("label", sort=False):
        r: dict = {"label": label, "method": g["method"].iloc[0], "n": len(g)}
        for c in ("bits_per_weight", "model_mb", "file_mb"):
            if c in g:
                r[c] = g[c].median()
        for c in SPREAD:
            if c not in g or g[c].isna().all():
                continue
            v = g[c].dropna()
            r[c] = _fmt(v.median()) + (f" [{_fmt(v.min())} – {_fmt(v.max())}]" if len(v) > 1 else "")
        for c in ("seqlen", "windows", "quant_time_s", "peak_rss_mb"):
            if c in g:
                r[c] = g[c].median()
        rows.append(r)
    return pd.DataFrame(rows)


def medians(df: pd.DataFrame) -> pd.DataFrame:
    """One row per label with numeric medians, ``ppl_min``/``ppl_max`` (for plots) and
    ``quant_time_s_min`` (the fastest run: the one least slowed by jobs beside it)."""
    if not len(df):
        return df
    num = df.select_dtypes("number").columns.difference(["seed"])
    g = df.groupby("label", sort=False)
    out = g[list(num)].median()
    for c in ("ppl", "talk_ppl"):
        if c in df:
            out[f"{c}_min"], out[f"{c}_max"] = g[c].min(), g[c].max()
    if "quant_time_s" in df:
        out["quant_time_s_min"] = g["quant_time_s"].min()
    out["n_seeds"] = g.size()
    first = g[["section", "method", "config"]].first()
    return first.join(out).reset_index()


def write_markdown(cmdline: str, sections: dict[str, str], preface: list[str],
                   extra: dict[str, list[str]]) -> None:
    """BENCHMARKS.md from every section file that exists (titles in ``sections``; ``extra``:
    paragraphs or tables placed after a section's table), and assets/bench_results.csv (the
    medians the dashboard's Compare page plots)."""
    with locked():
        log = ASSETS / "commands.txt"
        done = log.read_text().splitlines() if log.is_file() else []
        if cmdline not in done:
            done.append(cmdline)
            log.write_text("\n".join(done) + "\n")
        parts = list(preface) + [f"    {c}" for c in done] + [""]
        for key, title in sections.items():
            f = ASSETS / f"{key}.csv"
            if not f.is_file():
                continue
            raw = pd.read_csv(f)
            model_level = "label" in raw and "ppl" in raw and "method" in raw and "config" in raw
            df = aggregate(raw) if model_level else raw.drop(columns=["section"], errors="ignore")
            parts += [f"## {title}", "", markdown_table(df), ""] + extra.get(key, [])
        (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
        frames = [medians(read(k)) for k in ("model", "ablation", "sweep", "calib")
                  if (ASSETS / f"{k}.csv").is_file()]
        if frames:
            pd.concat(frames, ignore_index=True).to_csv(ROOT / "assets" / "bench_results.csv", index=False)


def config_of(row) -> dict:
    return json.loads(row.config) if isinstance(row.config, str) and row.config else {}

"""The runs folder's size budget: after each saved run, the oldest runs go until it fits.

Rule (``enforce``): while the run folders under ``runs_root()`` take more than the budget
(``$LVQ_RUNS_MAX_GB``, default 5 GB; 0 or less: no budget), delete the oldest run (by run.json's
``created``) that is neither

* *open*: its model loaded in ``cache.RUN_MODELS`` (a chat may be using it) or opened by any page
  of any session within the last ``cache.open_minutes()`` (``$LVQ_OPEN_MINUTES``, default 30), nor
* the run just saved (``keep``).

Examples live in their own folder and are never counted or deleted. Whose run it is does not
matter: the budget is the machine's. The Quantize page warns before a run (``warning``) when the
new run would bring the folder past ``WARN_FRACTION`` of the budget.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import lvq

from . import cache, runtable

DEFAULT_GB = 5.0
WARN_FRACTION = 0.8
_LOCK = threading.Lock()


def budget_bytes() -> float:
    """The budget in bytes (``$LVQ_RUNS_MAX_GB``, default 5); inf when it is 0 or less."""
    try:
        gb = float(os.environ.get("LVQ_RUNS_MAX_GB", DEFAULT_GB))
    except ValueError:
        gb = DEFAULT_GB
    return float("inf") if gb <= 0 else gb * 1e9


def folder_bytes(path: str | Path) -> int:
    total = 0
    for f in Path(path).rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:  # deleted meanwhile
            pass
    return total


def runs_by_age() -> list[tuple[str, str, int]]:
    """(path, created, bytes) of every run folder in the runs folder, oldest first."""
    df = lvq.list_runs(runtable.runs_root())
    rows = [(str(p), str(c), folder_bytes(p)) for p, c in zip(df["path"], df["created"])]
    return sorted(rows, key=lambda r: (r[1], r[0]))


def enforce(keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Delete the oldest runs that are not open and not in ``keep`` until the runs fit the
    budget (or nothing more may go); returns the deleted runs' names, oldest first."""
    budget = budget_bytes()
    deleted: list[str] = []
    with _LOCK:
        runs = runs_by_age()
        total = sum(b for *_, b in runs)
        for path, _created, size in runs:
            if total <= budget:
                break
            if path in keep or cache.is_open(path):
                continue
            try:
                runtable.remove_run_dir(path)
            except (OSError, ValueError):  # gone already, or not removable: leave it
                continue
            total -= size
            deleted.append(Path(path).name)
    return deleted


def warning(new_mb: float | None = None) -> str:
    """A line for the Quantize page when the runs folder (plus a new run of ``new_mb`` MB) nears
    the budget; "" otherwise."""
    budget = budget_bytes()
    if budget == float("inf"):
        return ""
    used = sum(b for *_, b in runs_by_age())
    after = used + (new_mb or 0.0) * 1e6
    if after < WARN_FRACTION * budget:
        return ""
    return (f"⚠️ The runs folder holds {used / 1e9:.2f} of its {budget / 1e9:g} GB. Saving this run "
            f"deletes the oldest runs not in use (not opened in the last {cache.open_minutes():g} "
            f"minutes) until it fits — possibly yours.")

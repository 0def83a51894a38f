"""Copy the benchmark's model-level table into README.md (between the bench markers).

    python scripts/update_readme.py          # after `make bench`

The library never edits README.md; this script does, from assets/bench/model.csv, sorted by
bits per weight so that entries of similar size sit together.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from lvq.bench.table import aggregate, markdown_table

ROOT = Path(__file__).resolve().parents[1]
README_START, README_END = "<!-- bench:model -->", "<!-- /bench:model -->"
COLUMNS = ["label", "method", "n", "bits_per_weight", "ppl", "talk_ppl", "talk_degenerate",
           "quant_time_s", "peak_rss_mb"]


def with_readme_table(readme: str, model: pd.DataFrame) -> str:
    """``readme`` with the text between the markers replaced by ``model``'s table (unchanged
    when the markers are missing)."""
    i, j = readme.find(README_START), readme.find(README_END)
    if i < 0 or j < i:
        return readme
    df = aggregate(model).sort_values("bits_per_weight", kind="stable")
    df = df[[c for c in COLUMNS if c in df.columns]]
    return readme[:i + len(README_START)] + "\n" + markdown_table(df) + "\n" + readme[j:]


def main() -> int:
    table = ROOT / "assets" / "bench" / "model.csv"
    if not table.is_file():
        print(f"no {table.relative_to(ROOT)}: run `make bench` first", file=sys.stderr)
        return 1
    readme = ROOT / "README.md"
    readme.write_text(with_readme_table(readme.read_text(), pd.read_csv(table)))
    print(f"README.md: model table updated from {table.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The report of a quantization run: plain pandas tables for plots and for saving as CSV.

``layers``: one row per quantized linear (layer, block, name, shape, method, bits_per_weight,
rel_error = ‖(W − Ŵ)X‖²/‖WX‖² on the calibration inputs, time_s, plus the method's scalar stats).
``tables``: the method's per-layer tables stacked over layers with a ``layer`` column
(e.g. ``groups`` for GLVQ, ``channels``/``codebooks`` for CRVQ, ``curve`` for loss curves).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class Report:
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @classmethod
    def from_records(cls, layer_rows: list[dict[str, Any]],
                     table_rows: dict[str, list[dict[str, Any]]]) -> "Report":
        return cls(pd.DataFrame(layer_rows),
                   {k: pd.DataFrame(v) for k, v in table_rows.items() if v})

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.layers.to_csv(folder / "layers.csv", index=False)
        for name, df in self.tables.items():
            df.to_csv(folder / f"{name}.csv", index=False)

    @classmethod
    def load(cls, folder: Path) -> "Report":
        layers = pd.read_csv(folder / "layers.csv") if (folder / "layers.csv").is_file() else pd.DataFrame()
        tables = {f.stem: pd.read_csv(f) for f in sorted(folder.glob("*.csv")) if f.stem != "layers"}
        return cls(layers, tables)


def split_stats(stats: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """A QuantizedWeight.stats() dict -> (scalar columns, tables); other values are dropped."""
    scalars, tables = {}, {}
    for k, v in stats.items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            scalars[k] = v
        elif isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            tables[k] = v
    return scalars, tables

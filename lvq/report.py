"""The report of a quantization run: plain pandas tables for plots and for saving as CSV.

``layers``: one row per quantized linear (layer, block, name, shape, method, bits_per_weight,
rel_error = ‖(W − Ŵ)X‖²/‖WX‖² on the calibration inputs, time_s, plus the method's scalar stats).
``tables``: the method's per-layer tables stacked over layers with a ``layer`` column
(e.g. ``groups`` for GLVQ, ``channels``/``codebooks`` for CRVQ, ``curve`` for loss curves).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


class Report:
    """``layers`` and ``tables`` as pandas DataFrames. A report loaded from a folder reads its
    CSV files on first access: a process that only chats with a loaded run never imports pandas
    (~70 MB of memory)."""

    def __init__(self, layers: pd.DataFrame | None = None,
                 tables: dict[str, pd.DataFrame] | None = None) -> None:
        self._layers = layers
        self._tables = tables
        self._folder: Path | None = None

    @property
    def layers(self) -> pd.DataFrame:
        self._read()
        return self._layers

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        self._read()
        return self._tables

    def _read(self) -> None:
        if self._layers is not None and self._tables is not None:
            return
        import pandas as pd  # heavy: imported when a table is first used

        folder, self._folder = self._folder, None
        if self._layers is None:
            f = folder / "layers.csv" if folder is not None else None
            self._layers = pd.read_csv(f) if f is not None and f.is_file() else pd.DataFrame()
        if self._tables is None:
            self._tables = ({f.stem: pd.read_csv(f) for f in sorted(folder.glob("*.csv")) if f.stem != "layers"}
                            if folder is not None else {})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return NotImplemented
        return (self.layers.equals(other.layers) and self.tables.keys() == other.tables.keys()
                and all(df.equals(other.tables[k]) for k, df in self.tables.items()))

    __hash__ = None  # mutable tables

    def __repr__(self) -> str:
        if self._layers is None and self._folder is not None:
            return f"Report(unread: {self._folder})"
        return f"Report({len(self.layers)} layers, tables {sorted(self.tables)})"

    @classmethod
    def from_records(cls, layer_rows: list[dict[str, Any]],
                     table_rows: dict[str, list[dict[str, Any]]]) -> "Report":
        import pandas as pd

        return cls(pd.DataFrame(layer_rows), {k: pd.DataFrame(v) for k, v in table_rows.items() if v})

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.layers.to_csv(folder / "layers.csv", index=False)
        for name, df in self.tables.items():
            df.to_csv(folder / f"{name}.csv", index=False)

    @classmethod
    def load(cls, folder: Path) -> "Report":
        """The report saved in ``folder`` (its CSV files are read on first access)."""
        report = cls()
        report._folder = Path(folder)
        return report


def split_stats(stats: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """A QuantizedWeight.stats() dict -> (scalar columns, tables); other values are dropped."""
    scalars, tables = {}, {}
    for k, v in stats.items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            scalars[k] = v
        elif isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            tables[k] = v
    return scalars, tables

"""Report-only example runs for the dashboard's first visit: the tables of a real run, no weights.

``write_example(run_dir, dest)`` turns a saved run into a small folder the dashboard can show
before a visitor has quantized anything (``assets/examples/<name>/``)::

    run.json                   the run's run.json with "example": true and no "files" entry
    report/*.csv               its report tables (floats to 6 digits; a table over
                               TABLE_LIMIT_BYTES keeps only the example layers' rows)
    report/lattice_view.csv    GLVQ runs only: a few groups of a few layers, enough for the
                               Lattice page to draw without the weights (``VIEW_PARTS``)

The lattice view is written from the same ``group_data`` the dashboard computes for a real run
(from its weights), and read back with ``view_group``: one representation, two sources. Nothing
here reads or writes anything but the two folders it is given.
"""
from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import LvqError
from ..glvq_weight import Codec, GLVQWeight
from ..models import load_model
from ..rotated_weight import RotatedWeight
from ..rotation import rotate_weight
from ..runs import load_layer, read_run_info, replace_folder

MAX_VECTORS = 512            # vectors per group in a view (evenly spaced over the group)
VIEW_GROUPS = 2              # groups per layer in an example's view
TABLE_LIMIT_BYTES = 400_000  # a report table larger than this keeps only the example layers
VIEW_TABLE = "lattice_view"
# Rows of lattice_view.csv, by "part": the group's generator G (d rows; the first carries the
# group's metadata: bits, mu, lattice, decoder, n_groups, rotated, vectors_total); its signed
# codes Z; the normalised weight vectors Y as quantized (of the rotated weight for a rotated
# layer); for rotated layers the same slice of the original weight ("before"), per row scaled
# to the RMS of Y. Columns x0..x{d-1} hold the d coordinates.
VIEW_PARTS = ("G", "Z", "Y", "before")
META = ("bits", "mu", "lattice", "decoder", "n_groups", "rotated", "vectors_total")


# ----------------------------------------------------------------------------------------------
# One group's data (real weights or an example's table)
# ----------------------------------------------------------------------------------------------
def glvq_parts(qw) -> tuple[GLVQWeight, RotatedWeight | None]:
    """(the GLVQ stored form, the rotation around it or None); LvqError for other methods."""
    if isinstance(qw, RotatedWeight) and isinstance(qw.inner, GLVQWeight):
        return qw.inner, qw
    if isinstance(qw, GLVQWeight):
        return qw, None
    raise LvqError(f"a {type(qw).__name__} layer has no lattice groups (GLVQ layers only)")


def _spread(n: int, k: int) -> np.ndarray:
    """k evenly spaced indices of range(n) (all of them when n <= k)."""
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).round().astype(int))


def _row_rms(X: torch.Tensor) -> torch.Tensor:
    return X.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)


def group_data(qw, g: int, W: torch.Tensor | None = None, max_vectors: int = MAX_VECTORS) -> dict[str, Any]:
    """Group ``g`` of a GLVQ layer (plain or rotated) for plots.

    W: the layer's original weight [out, in] when known. Returns G [d, d] (numpy), mu, bits,
    lattice, decoder, n_groups, rotated, vectors_total, Z [n, d] signed codes, Y [n, d] the
    normalised vectors as quantized (None without W), before [n, d] the original weight's
    vectors of a rotated layer (None otherwise); n <= ``max_vectors``, the same vectors in all.
    """
    inner, rot = glvq_parts(qw)
    n_groups = len(inner.bounds())
    if not 0 <= g < n_groups:
        raise LvqError(f"group {g} does not exist: this layer has {n_groups} groups")
    Wq = None if W is None else W.detach().to(torch.float32).cpu()
    Wr = rotate_weight(Wq, rot.U, rot.V) if rot is not None and Wq is not None else Wq
    view = inner.group_view(g, Wr)
    idx = torch.as_tensor(_spread(len(view.Z), max_vectors))
    Y = view.Y[idx] if view.from_original else None
    before = None
    if rot is not None and Wq is not None:
        a, b = inner.bounds()[g]
        X = Wq[:, a:b].to(torch.float64)
        X = X / _row_rms(X) * float(view.Y.pow(2).mean().sqrt())
        before = X.reshape(-1, inner.dim)[idx]
    return {"G": view.G.numpy(), "mu": float(view.mu), "bits": int(view.bits),
            "lattice": inner.lattice, "decoder": inner.decoder, "n_groups": n_groups,
            "rotated": rot is not None, "vectors_total": int(len(view.Z)),
            "Z": view.Z[idx].numpy().astype(np.int64), "Y": None if Y is None else Y.numpy(),
            "before": None if before is None else before.numpy()}


def decoded_points(data: dict[str, Any]) -> np.ndarray:
    """The points the codes ``Z`` decode to, in the coordinates of ``Y`` [n, d]."""
    G = torch.as_tensor(np.asarray(data["G"], dtype=np.float32))
    d, bits = G.shape[0], int(data["bits"])
    codec = Codec(str(data["lattice"]), str(data["decoder"]), d)
    U = torch.as_tensor(np.asarray(data["Z"], dtype=np.int64)) + (1 << (bits - 1))
    gen = G[0, 0] if codec.decoder == "nearest" else G
    return codec.decode(U, gen, bits).numpy().astype(np.float64)


# ----------------------------------------------------------------------------------------------
# lattice_view.csv
# ----------------------------------------------------------------------------------------------
def view_rows(layer: str, g: int, data: dict[str, Any]) -> pd.DataFrame:
    """The rows of one group in lattice_view.csv."""
    parts = []
    for part in VIEW_PARTS:
        M = data["G"] if part == "G" else data.get(part)
        if M is None:
            continue
        M = np.asarray(M)
        df = pd.DataFrame(M, columns=[f"x{k}" for k in range(M.shape[1])])
        df.insert(0, "i", np.arange(len(M)))
        df.insert(0, "part", part)
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "group", g)
    out.insert(0, "layer", layer)
    for key in META:
        out[key] = None
        out.loc[0, key] = data[key]
    return out


def view_layers(table: pd.DataFrame) -> list[str]:
    """Layers in a lattice_view table, in order."""
    return list(dict.fromkeys(table["layer"].astype(str))) if len(table) and "layer" in table else []


def view_groups(table: pd.DataFrame, layer: str) -> list[int]:
    """Groups of ``layer`` in a lattice_view table."""
    if not len(table) or "layer" not in table:
        return []
    rows = table[table["layer"].astype(str) == layer]
    return sorted({int(g) for g in rows["group"]})


def view_group(table: pd.DataFrame, layer: str, g: int) -> dict[str, Any]:
    """``group_data`` of one group, read back from a lattice_view table; LvqError if absent."""
    rows = table[(table["layer"].astype(str) == layer) & (table["group"] == g)] if len(table) else table
    if not len(rows):
        raise LvqError(f"this example has no view of group {g} of layer {layer!r}")
    xs = [c for c in rows.columns if c.startswith("x") and c[1:].isdigit()]
    G = rows[rows["part"] == "G"].sort_values("i")
    d = len(G)
    xs = sorted(xs, key=lambda c: int(c[1:]))[:d]
    meta = G.iloc[0]

    def part(name: str, dtype=np.float64):
        p = rows[rows["part"] == name].sort_values("i")
        return p[xs].to_numpy(dtype=dtype) if len(p) else None

    return {"G": G[xs].to_numpy(dtype=np.float64), "mu": float(meta["mu"]), "bits": int(meta["bits"]),
            "lattice": str(meta["lattice"]), "decoder": str(meta["decoder"]),
            "n_groups": int(meta["n_groups"]), "rotated": str(meta["rotated"]).lower() == "true",
            "vectors_total": int(meta["vectors_total"]), "Z": part("Z", np.int64), "Y": part("Y"),
            "before": part("before")}


# ----------------------------------------------------------------------------------------------
# The example folder
# ----------------------------------------------------------------------------------------------
def example_layers(layers: pd.DataFrame) -> list[str]:
    """About three layers worth showing: block 0's q_proj, a middle block's mlp.down_proj and the
    last block's o_proj; the first, middle and last layer when those names do not exist."""
    names = list(layers["layer"].astype(str)) if len(layers) and "layer" in layers else []
    if not names:
        return []
    blocks = sorted({int(n.split(".")[0]) for n in names if n.split(".")[0].isdigit()})
    want = []
    if blocks:
        want = [f"{blocks[0]}.self_attn.q_proj", f"{blocks[len(blocks) // 2]}.mlp.down_proj",
                f"{blocks[-1]}.self_attn.o_proj"]
    picked = [n for n in want if n in names]
    if len(picked) < len(want) or not picked:
        picked = [names[0], names[len(names) // 2], names[-1]]
    return list(dict.fromkeys(picked))


def _csv_text(df: pd.DataFrame, float_format: str = "%.6g") -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format=float_format)
    return buf.getvalue()


def _original_weights(model, info: dict[str, Any], layers: list[str]) -> dict[str, torch.Tensor]:
    full = {}
    for name in layers:
        match = [n for n in info["layers"] if n == name or n.endswith(f"layers.{name}")]
        if match:
            full[name] = model.get_submodule(match[0]).weight.detach()
    return full


def lattice_view(run_dir: Path, info: dict[str, Any], layers: list[str], model=None,
                 groups: int = VIEW_GROUPS, max_vectors: int = MAX_VECTORS) -> pd.DataFrame:
    """lattice_view rows for ``groups`` groups (the first and evenly spread ones) of each layer;
    the original weights come from ``model`` (None: stored codes only, no weight vectors)."""
    weights = _original_weights(model, info, layers) if model is not None else {}
    parts = []
    for layer in layers:
        qw = load_layer(run_dir, layer)
        inner, _ = glvq_parts(qw)
        n = len(inner.bounds())
        for g in sorted({int(round(k * n / groups)) for k in range(groups)} & set(range(n))):
            parts.append(view_rows(layer, g, group_data(qw, g, weights.get(layer), max_vectors)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def folder_bytes(path: str | Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_example(run_dir: str | Path, dest: str | Path, original_model=None) -> Path:
    """Write the report-only example of the saved run ``run_dir`` to ``dest`` (replaced if it
    exists; written to a temporary folder beside it, then renamed).

    original_model: the run's original model (an HF causal LM) for the lattice view's weight
    vectors; None loads ``run.json``'s model source (without it the view has codes only).
    """
    run_dir, dest = Path(run_dir), Path(dest)
    info = read_run_info(run_dir)
    if info.get("example"):
        raise LvqError(f"{run_dir} is already an example")
    layers_csv = run_dir / "report" / "layers.csv"
    layers = pd.read_csv(layers_csv) if layers_csv.is_file() else pd.DataFrame()
    chosen = example_layers(layers)
    tables: dict[str, str] = {}
    trimmed = []
    for f in sorted((run_dir / "report").glob("*.csv")):
        df = pd.read_csv(f)
        text = _csv_text(df)
        if f.stem != "layers" and len(text) > TABLE_LIMIT_BYTES and "layer" in df:
            text = _csv_text(df[df["layer"].astype(str).isin(chosen)])
            trimmed.append(f.stem)
        tables[f.stem] = text
    if info["method"].get("method") == "glvq" and chosen:
        model = original_model
        if model is None:
            try:
                model, _tok = load_model(str(info["model"].get("source") or ""))
            except (LvqError, OSError, ValueError):
                model = None
        view = lattice_view(run_dir, info, chosen, model)
        if len(view):
            tables[VIEW_TABLE] = _csv_text(view, "%.4g")  # plot coordinates: 4 digits
    out = {k: v for k, v in info.items() if k != "files"}
    out.update(example=True, example_of=run_dir.name, example_layers=chosen, example_trimmed=trimmed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; an example is meant to be read by the app
        (tmp / "report").mkdir()
        for name, text in tables.items():
            (tmp / "report" / f"{name}.csv").write_text(text)
        (tmp / "run.json").write_text(json.dumps(out, indent=1))
        replace_folder(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest

"""Benchmarks of the additive quantizers (AQLM and CRVQ): pure functions returning DataFrames or
configs. Nothing runs at import.

* ``gaussian_table``: MSE per weight on i.i.d. N(0, 1) weights (H = I) beside the distortion-rate
  bound D(R) = 2^(−2R).
* ``sweep_configs``: the paper's Figure 4 grid, λ ∈ {0, 1%, 2%, 5%} × m ∈ {1, 2, 3} at e = 8.

``MODEL_EFFORT`` (epochs, Adam steps, k-means iterations) is the effort of the earlier model table
("before" in BENCHMARKS.md), which the sweep's caveat compares against.
Note that on the bundled model (in_features 576 and 1536) λ = 1% and 2% give the same single
critical group on the 576-wide layers (⌊λ·576/8⌋ rounds up to 1; see lvq.crvq).
"""
from __future__ import annotations

import math
import time

import pandas as pd
import torch

from ..config import AQLMConfig, CRVQConfig
from ..crvq import critical_group_count, quantize_aqlm, quantize_crvq
from ..hessian import relative_error

MODEL_EFFORT = {"epochs": 4, "adam_steps": 30, "kmeans_iters": 15}
SWEEP_EFFORT = {"epochs": 3, "adam_steps": 20, "kmeans_iters": 10}
GAUSSIAN_EFFORT = {"epochs": 4, "adam_steps": 30, "kmeans_iters": 15}
GAUSSIAN_ROWS = 256


def _quantize(W: torch.Tensor, cfg, H: torch.Tensor | None = None):
    return (quantize_crvq if cfg.method == "crvq" else quantize_aqlm)(W, H, cfg)


def _gaussian_configs() -> list[tuple[str, object]]:
    e = GAUSSIAN_EFFORT
    return [
        ("AQLM 1x8 d8", AQLMConfig(dim=8, codebook_bits=8, **e)),
        ("CRVQ d8 e8 m3 λ2%", CRVQConfig(dim=8, codebook_bits=8, num_extended=3, extended_bits=8,
                                         critical_ratio=0.02, **e)),
        ("AQLM 1x8 d4", AQLMConfig(dim=4, codebook_bits=8, **e)),
        ("AQLM 2x8 d8", AQLMConfig(dim=8, codebook_bits=8, num_codebooks=2, **e)),
        ("CRVQ d4 e8 m3 λ2%", CRVQConfig(dim=4, codebook_bits=8, num_extended=3, extended_bits=8,
                                         critical_ratio=0.02, **e)),
    ]


def gaussian_table(n: int = 4096, seed: int = 0, rows: int | None = None) -> pd.DataFrame:
    """MSE per weight of AQLM and CRVQ on an i.i.d. N(0, 1) [rows, n] matrix with H = I.

    rows defaults to 256 (``--gaussian-crvq-rows 4096`` gives the full square matrix; the "rows"
    column says which ran). Bits are given for the codes alone ("bpw_codes", the rate R of D(R))
    and with everything stored ("bpw_total": codebooks, scales, permutation). "gap_db" = 10·log10(mse / D(bpw_codes)).
    """
    g = torch.Generator().manual_seed(seed)
    n_rows = rows or GAUSSIAN_ROWS
    W = torch.randn(n_rows, n, generator=g)
    out = []
    for name, cfg in _gaussian_configs():
        t0 = time.perf_counter()
        q = _quantize(W, cfg)
        parts = q.bit_breakdown()
        nw = W.numel()
        bpw_codes = (parts["codes_basic"] + parts["codes_extended"]) / nw
        mse = float(((W - q.dequantize()) ** 2).mean())
        bound = 2.0 ** (-2 * bpw_codes)
        out.append({
            "method": cfg.method, "setting": name, "rows": n_rows, "cols": n,
            "bpw_codes": bpw_codes, "bpw_total": q.bits_per_weight(), "mse": mse,
            "bound_D(R_codes)": bound, "bound_D(R_total)": 2.0 ** (-2 * q.bits_per_weight()),
            "gap_db": 10 * math.log10(mse / bound), "time_s": time.perf_counter() - t0,
        })
    return pd.DataFrame(out)


def sweep_configs() -> list[tuple[str, CRVQConfig]]:
    """The paper's Figure 4: λ ∈ {0, 1%, 2%, 5%} × m ∈ {1, 2, 3}, d = 8, e = 8 (basic and
    extended). λ = 0 has no critical channels whatever m is (AQLM with one codebook), so it
    is one entry, not three."""
    out = [("crvq-l0 (= AQLM 1x8; m unused)",
            CRVQConfig(dim=8, codebook_bits=8, num_extended=1, extended_bits=8, critical_ratio=0.0,
                       **SWEEP_EFFORT))]
    for lam in (0.01, 0.02, 0.05):
        for m in (1, 2, 3):
            out.append((f"crvq-l{lam * 100:g}-m{m}",
                        CRVQConfig(dim=8, codebook_bits=8, num_extended=m, extended_bits=8,
                                   critical_ratio=lam, **SWEEP_EFFORT)))
    return out


def sweep_layer_table(Ws: dict[str, torch.Tensor], Hs: dict[str, torch.Tensor]) -> pd.DataFrame:
    """The sweep's settings on real layers: relative output error ‖(W − Ŵ)X‖²/‖WX‖² per layer
    (W [out, in], H [in, in]), one column per (λ, m), plus the critical vector-groups each λ gives
    (⌊λ·in/d⌋, rounded up to 1) and a geometric-mean row. Separates the layer objective, which
    the extended codebooks lower by construction, from whole-model perplexity."""
    configs = [(label.split(" ")[0], cfg) for label, cfg in sweep_configs()]
    # One "groups" column per λ of the sweep (m only needs to be > 0 for the count).
    lambdas = {cfg.critical_ratio: cfg.dim for _, cfg in configs if cfg.critical_ratio > 0}
    rows = []
    for name, W in Ws.items():
        row: dict[str, object] = {"layer": name, "shape": str(tuple(W.shape))}
        for lam, dim in lambdas.items():
            row[f"groups λ{lam * 100:g}%"] = critical_group_count(W.shape[1], dim, lam, 1)
        for col, cfg in configs:
            q = _quantize(W, cfg, Hs[name])
            row[col] = relative_error(W, q.dequantize(), Hs[name])
        rows.append(row)
    df = pd.DataFrame(rows)
    errs = [col for col, _ in configs]
    mean = {"layer": "geometric mean", "shape": ""}
    mean.update({c: math.exp(df[c].map(math.log).mean()) for c in errs})
    return pd.concat([df, pd.DataFrame([mean])], ignore_index=True)

"""The benchmark's table writers (the measurements themselves run in `make bench`)."""
import pandas as pd
import pytest

from lvq.bench.table import markdown_table
from scripts.update_readme import README_END, README_START, with_readme_table


def _model_rows() -> pd.DataFrame:
    return pd.DataFrame({"section": ["model"] * 3, "label": ["fp32", "glvq2", "crvq1"],
                         "method": ["fp", "glvq", "crvq"], "bits_per_weight": [16.0, 2.148, 1.13],
                         "ppl": [25.5, 319.0, 1638.0], "quant_time_s": [0.0, 366.4, 829.6],
                         "peak_rss_mb": [float("nan"), 2979.0, 3222.0], "config": ["{}"] * 3})


def test_markdown_table_formats_numbers_and_blanks_nan():
    text = markdown_table(pd.DataFrame({"a": ["x"], "b": [1234.5678], "c": [float("nan")]}))
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| x | 1235 |  |"]


def test_readme_table_replaced_between_markers_sorted_by_size():
    readme = f"intro\n{README_START}\nold table\n{README_END}\nafter\n"
    out = with_readme_table(readme, _model_rows())
    assert out.startswith("intro\n" + README_START + "\n| label |") and out.endswith(README_END + "\nafter\n")
    assert "old table" not in out and "config" not in out
    body = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if line.startswith("| ") and "label" not in line]
    assert body == ["crvq1", "glvq2", "fp32"]
    assert with_readme_table(out, _model_rows()) == out  # idempotent


def test_readme_without_markers_is_left_alone():
    assert with_readme_table("no markers here\n", _model_rows()) == "no markers here\n"


def test_sweep_grid_lays_rows_out_by_lambda_and_m():
    import json

    from lvq.bench.__main__ import sweep_grid

    rows = [(0.0, 1, 2635.0, 1.088), (0.01, 1, 1447.0, 1.179), (0.01, 2, 1881.0, 1.256)]
    df = pd.DataFrame({"label": ["a", "b", "c"], "ppl": [r[2] for r in rows], "bits_per_weight": [r[3] for r in rows],
                       "config": [json.dumps({"critical_ratio": r[0], "num_extended": r[1]}) for r in rows]})
    grid = sweep_grid(df)
    assert list(grid.columns) == ["λ", "m = 1", "m = 2"] and list(grid["λ"]) == ["0%", "1%"]
    assert grid.iloc[0].tolist() == ["0%", "2635 (1.088)", "2635 (1.088)"]  # λ = 0: m unused
    assert grid.iloc[1].tolist() == ["1%", "1447 (1.179)", "1881 (1.256)"]


def test_sweep_caveat_names_both_efforts():
    from lvq.bench.__main__ import _sweep_caveat
    from lvq.bench.crvq import MODEL_EFFORT, SWEEP_EFFORT

    text = _sweep_caveat()
    for effort in (SWEEP_EFFORT, MODEL_EFFORT):
        assert f"{effort['epochs']} epochs, {effort['adam_steps']} Adam steps" in text


def test_sweep_layer_table_one_column_per_setting_and_a_geomean_row(monkeypatch):
    import math

    import torch

    from lvq.bench import crvq as bench_crvq
    from lvq.config import CRVQConfig

    cheap = dict(dim=8, codebook_bits=4, extended_bits=4, epochs=1, adam_steps=2, kmeans_iters=2)
    monkeypatch.setattr(bench_crvq, "sweep_configs", lambda: [
        ("crvq-l0 (= AQLM)", CRVQConfig(critical_ratio=0.0, num_extended=1, **cheap)),
        ("crvq-l1-m1", CRVQConfig(critical_ratio=0.01, num_extended=1, **cheap)),
        ("crvq-l5-m2", CRVQConfig(critical_ratio=0.05, num_extended=2, **cheap))])
    g = torch.Generator().manual_seed(0)
    Ws = {"a": torch.randn(16, 64, generator=g), "b": torch.randn(8, 320, generator=g)}
    df = bench_crvq.sweep_layer_table(Ws, {k: torch.eye(W.shape[1]) for k, W in Ws.items()})
    assert list(df["layer"]) == ["a", "b", "geometric mean"]
    assert list(df["groups λ1%"][:2]) == [1, 1] and list(df["groups λ5%"][:2]) == [1, 2]  # ⌊λ·in/8⌋, at least 1
    assert "groups λ0%" not in df  # λ = 0 has no critical groups to count
    assert (df[["crvq-l0", "crvq-l1-m1", "crvq-l5-m2"]][:2] > 0).all().all()
    assert df["crvq-l0"].iloc[2] == pytest.approx(math.sqrt(df["crvq-l0"].iloc[0] * df["crvq-l0"].iloc[1]))


def test_aggregate_reports_median_and_range_over_seeds():
    from lvq.bench.table import aggregate, medians

    df = pd.DataFrame({"label": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0], "method": ["glvq"] * 3 + ["rtn"],
                       "bits_per_weight": [2.05] * 3 + [2.27], "ppl": [80.0, 95.0, 87.0, 9e5],
                       "talk_ppl": [3.0, 4.0, 5.0, 90.0], "talk_degenerate": [0.0, 0.0, 0.0625, 1.0],
                       "quant_time_s": [100.0, 120.0, 110.0, 50.0], "config": ["{}"] * 4, "section": "model"})
    agg = aggregate(df)
    assert list(agg["label"]) == ["a", "b"] and list(agg["n"]) == [3, 1]
    assert agg["ppl"].iloc[0] == "87 [80 – 95]" and agg["ppl"].iloc[1] == "9e+05"
    assert agg["talk_degenerate"].iloc[0] == "0 [0 – 0.0625]"
    med = medians(df)
    assert med.set_index("label").loc["a", "ppl"] == 87.0 and med.set_index("label").loc["a", "ppl_max"] == 95.0


def test_decode_step_times_stamp_every_new_token(tiny_model_dir):
    """The decode benchmark's clock: one time stamp per generated token, in order, so that
    last − first covers only the decoding steps (the first token comes from the prefill)."""
    import torch

    import lvq
    from lvq.bench.decode import _step_times

    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        stamps = _step_times(model, ids, 6, pad=0)
    assert len(stamps) == 6 and stamps == sorted(stamps) and stamps[-1] > stamps[0]


def test_ablation_rows_identical_to_a_model_run_are_copied(tmp_path, monkeypatch):
    """A lever row with the model table's config, seed and calibration size is that run: copied
    (same numbers, its own label), not quantized again; any difference means a new run."""
    import json

    import lvq.bench.__main__ as bench
    import lvq.bench.table as table
    from lvq.config import GPTQConfig

    monkeypatch.setattr(table, "ASSETS", tmp_path)
    cfg = GPTQConfig(bits=2, group_size=128)
    old = {k: v for k, v in cfg.to_dict().items() if k != "e2e_chat"}  # saved before a field existed
    pd.DataFrame([{"section": "model", "label": "GPTQ 2-bit g128", "seed": 1, "method": "gptq",
                   "bits_per_weight": 2.27, "ppl": 99.0, "quant_time_s": 150.0, "config": json.dumps(old),
                   "calib_tokens": 16384}]).to_csv(tmp_path / "model.csv", index=False)
    assert bench._copy_identical_run("ablation", "GPTQ plain", cfg, 1, 16384)
    assert not bench._copy_identical_run("ablation", "GPTQ plain", cfg, 0, 16384)          # other seed
    assert not bench._copy_identical_run("ablation", "GPTQ plain", cfg, 1, 65536)          # other calibration
    assert not bench._copy_identical_run("ablation", "x", cfg.replace(incoherence=True), 1, 16384)
    rows = pd.read_csv(tmp_path / "ablation.csv")
    assert rows[["label", "seed", "ppl"]].values.tolist() == [["GPTQ plain", 1, 99.0]]
    # the model table takes a run of the calibration curve (a preset measured there at its size)
    pd.DataFrame([{"section": "calib", "label": "GPTQ with 64k calibration tokens", "seed": 2,
                   "method": "gptq", "bits_per_weight": 2.27, "ppl": 88.0, "quant_time_s": 150.0,
                   "config": json.dumps(cfg.to_dict()), "calib_tokens": 65536}]).to_csv(tmp_path / "calib.csv",
                                                                                      index=False)
    assert bench._copy_identical_run("model", "GPTQ 2-bit g128", cfg, 2, 65536)
    assert not bench._copy_identical_run("model", "GPTQ 2-bit g128", cfg, 2, 16384)
    rows = pd.read_csv(tmp_path / "model.csv")
    assert rows[["label", "seed", "ppl"]].values.tolist() == [["GPTQ 2-bit g128", 1, 99.0], ["GPTQ 2-bit g128", 2, 88.0]]


def test_quality_preset_brings_its_calibration_size():
    """GLVQ's quality preset runs with 128 calibration windows (CLI default, bench entries);
    other presets and methods with CalibConfig's 32; an explicit --calib-windows wins."""
    import argparse

    from lvq.bench import quality
    from lvq.cli import _calib
    from lvq.config import CRVQConfig, GLVQConfig

    assert GLVQConfig.preset_calib_windows("quality") == 128
    assert GLVQConfig.preset_calib_windows("fast") == CRVQConfig.preset_calib_windows("quality") == 32
    args = dict(corpus="wiki-bundled", calib_seqlen=512, seed=0)
    assert _calib(argparse.Namespace(method="glvq", preset="quality", calib_windows=None, **args)).n_windows == 128
    assert _calib(argparse.Namespace(method="glvq", preset="fast", calib_windows=None, **args)).n_windows == 32
    assert _calib(argparse.Namespace(method="glvq", preset="quality", calib_windows=8, **args)).n_windows == 8
    assert _calib(argparse.Namespace(method=None, preset=None, calib_windows=None, **args)).n_windows == 32
    windows = {e[0]: (e[3] if len(e) > 3 else None) for e in quality.headline()}
    assert windows["GLVQ 2 bpw (quality)"] == 128 and windows["GLVQ 2 bpw (fast)"] is None

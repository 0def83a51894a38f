"""Dashboard pages: each build() constructs; figure builders are checked on small synthetic tables."""
from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch

import lvq
from pages import bitalloc, channels, chat, compare, figures, lattice, learn, quantize, runtable, sessions

PAGES = [quantize, bitalloc, lattice, channels, compare, chat, learn]


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LVQ_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LVQ_EXAMPLES_DIR", str(tmp_path / "examples"))


@pytest.mark.parametrize("module", PAGES, ids=lambda m: m.__name__)
def test_each_page_builds(module):
    with gr.Blocks():
        page = module.build()
    assert page.load is None or callable(page.load)
    assert len(page.outputs) == 0 or page.refresh is not None


def test_app_builds_with_every_tab():
    import app

    demo = app.build_app()
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert labels == [title for title, _ in app.PAGES]
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"quantize", "chat", "compare", "bitalloc", "lattice", "channels"} <= names


def groups_table():
    rows = []
    for li, layer in enumerate(["0.q", "0.k", "1.q"]):
        for g in range(4):
            rows.append({"layer": layer, "group": g, "bits": [1, 2, 3, 2][(g + li) % 4],
                         "salience": 10.0 ** (g - li), "err_after": 0.1 * (g + 1)})
    return pd.DataFrame(rows)


def test_bit_allocation_figures():
    df = groups_table()
    heat = figures.bits_heatmap(df)
    z = np.array(heat.data[0].z, dtype=float)
    assert z.shape == (3, 4) and list(heat.data[0].y) == ["0.q", "0.k", "1.q"]
    assert z[1, 0] == 2 and z[2, 3] == 2          # layer 0.k group 0; layer 1.q group 3
    assert "salience" in heat.data[0].hovertemplate and "error" in heat.data[0].hovertemplate
    hist = figures.bits_histogram(df)
    assert list(hist.data[0].x) == ["1", "2", "3"] and list(hist.data[0].y) == [3, 6, 3]
    sc = figures.salience_vs_bits(df)
    assert len(sc.data[0].x) == 12 and np.allclose(np.round(sc.data[0].y), df["bits"])
    assert figures.bits_heatmap(pd.DataFrame()).layout.annotations  # empty -> a message


def test_channel_figures():
    imp = np.array([5.0, 0.1, 9.0, 0.3, 2.0, 0.2])
    order = np.argsort(-imp)
    rank = np.empty(6, int)
    rank[order] = np.arange(6)
    df = pd.DataFrame({"layer": "0.q", "channel": range(6), "importance": imp, "critical": rank < 2,
                       "rank": rank, "err_basic": imp, "err_full": np.where(rank < 2, imp / 10, imp)})
    fig = figures.channel_importance(df, 0.3)
    assert list(fig.data[0].y) == sorted(imp, reverse=True)
    assert list(fig.data[0].marker.color[:3]) == ["#d62728", "#d62728", "#9ecae1"]
    assert fig.layout.shapes[0].x0 == 1.5                      # the λ cut after 2 critical channels
    perm = figures.channel_permutation(df)
    assert list(perm.data[0].y) == list(rank)
    err = figures.channel_error(df)
    assert len(err.data) == 2 and err.data[1].y[0] == pytest.approx(0.9)
    cb = pd.DataFrame({"layer": "0.q", "codebook": [0] * 4 + [1] * 4, "code": list(range(4)) * 2,
                       "count": [1, 1, 1, 1, 4, 0, 0, 0]})
    usage = figures.codebook_usage(cb)
    assert "2.00 of 2 bits" in usage.data[0].name and "0.00 of 2 bits" in usage.data[1].name
    assert usage.layout.yaxis.type == "log" and usage.layout.yaxis.dtick == 1  # decades only


def test_pareto_and_compare_figure():
    df = pd.DataFrame({"label": list("abcde"), "method": ["rtn", "gptq", "glvq", "glvq", "crvq"],
                       "bits_per_weight": [2.0, 2.0, 2.1, 3.0, 1.5], "ppl": [90.0, 40.0, 30.0, 35.0, 60.0]})
    front = figures.pareto_front(df, "bits_per_weight")
    assert list(front["label"]) == ["e", "b", "c"]
    fig = figures.compare_figure(df, ppl_fp=22.6)
    names = [t.name for t in fig.data]
    assert names == ["crvq", "glvq", "gptq", "rtn", "Pareto front"]
    assert fig.layout.shapes[0].y0 == 22.6 and fig.layout.yaxis.type == "log"
    # the fp32 label sits at the line: on a log axis an annotation's y is log10(ppl)
    assert abs(fig.layout.annotations[0].y - np.log10(22.6)) < 1e-9 and "22.60" in fig.layout.annotations[0].text
    assert figures.compare_figure(df, ppl_fp=22.6, log_y=False).layout.annotations[0].y == 22.6
    assert figures.compare_figure(df.iloc[:0]).layout.annotations
    assert all(t.error_y.array is None for t in fig.data)  # no seed ranges, no error bars
    ranged = df.assign(ppl_min=[85.0, 38.0, 28.0, 35.0, 60.0], ppl_max=[95.0, 45.0, 30.0, 35.0, 60.0])
    glvq = next(t for t in figures.compare_figure(ranged).data if t.name == "glvq")
    assert list(glvq.error_y.arrayminus) == [2.0, 0.0] and list(glvq.error_y.array) == [0.0, 0.0]


def test_preset_costs_come_from_the_bench_table():
    import lvq

    fast = lvq.GLVQConfig.preset("fast")
    bench = pd.DataFrame({"label": ["a", "b", "fp"], "method": ["glvq", "glvq", "fp"],
                          "bits_per_weight": [2.148, 2.148, 16], "ppl": [319.0, 500.0, 25.5],
                          "quant_time_s": [366.0, 10.0, 0.0],
                          "config": [json.dumps(fast.to_dict()), json.dumps(fast.replace(group_size=256).to_dict()), "{}"]})
    rows = runtable.preset_rows(bench)
    assert list(rows["label"]) == ["a"] and list(rows["preset"]) == ["fast"]
    text = quantize.presets_markdown(rows)
    assert "GLVQ **fast**: 2.15 bpw, perplexity 319, quantization 6.1 min" in text
    # several seeds: the median perplexity, and the fastest run's time (jobs often shared the cores)
    seeded = bench.assign(n_seeds=[3, 1, 1], quant_time_s_min=[250.0, 10.0, 0.0])
    text = quantize.presets_markdown(runtable.preset_rows(seeded))
    assert ("GLVQ **fast**: 2.15 bpw, perplexity 319 (median of 3 seeds), quantization 4.2 min "
            "(fastest run)") in text


def test_medians_keep_the_fastest_run():
    from lvq.bench.table import medians

    raw = pd.DataFrame({"label": ["a", "a", "a"], "section": "model", "method": "glvq", "config": "{}",
                        "seed": [0, 1, 2], "ppl": [48.2, 48.1, 49.4], "quant_time_s": [3740.0, 3733.0, 1484.0]})
    row = medians(raw).iloc[0]
    assert (row["quant_time_s"], row["quant_time_s_min"], row["n_seeds"]) == (3733.0, 1484.0, 3)


def test_compare_table_merges_bench_and_runs(tmp_path):
    bench = pd.DataFrame({"label": ["fp32", "rtn3"], "method": ["fp32", "rtn"], "bits_per_weight": [32, 3.5],
                          "model_mb": [540, 80], "ppl": [22.6, 93.0], "seqlen": 512, "windows": 8})
    runs = pd.DataFrame({"run": ["r1"], "method": ["glvq"], "bits_per_weight": [2.1], "model_mb": [60],
                         "ppl": [40.0], "ppl_fp": [22.7]})
    df = compare.combined_table(bench, runs)
    assert list(df["source"]) == ["benchmark", "benchmark", "run"] and list(df["label"]) == ["fp32", "rtn3", "r1"]
    assert compare.fp_reference(df) == 22.6
    assert compare.fp_reference(df.iloc[1:]) == 22.7
    assert runtable.load_bench(tmp_path / "missing.csv").empty
    (tmp_path / "b.csv").write_text("label,method,bits_per_weight,ppl\nx,rtn,3,90\n")
    assert set(runtable.load_bench(tmp_path / "b.csv").columns) >= set(runtable.BENCH_COLUMNS)


def test_quantize_config_helpers():
    s = quantize.settings_dict("rtn", {"bits": 3.0, "group_size": 64})
    assert s == {"method": "rtn", "bits": 3, "group_size": 64} and isinstance(s["bits"], int)
    cfg = quantize.build_config(json.dumps({"method": "glvq", "bits": 1.5, "dim": 8}))
    assert cfg.method == "glvq" and cfg.bits == 1.5
    with pytest.raises(ValueError, match="bits"):
        quantize.build_config({"method": "rtn", "bits": 12})
    with pytest.raises(ValueError, match="JSON"):
        quantize.build_config("{")
    for m in quantize._methods():
        fields = {f for f, *_ in quantize.CONTROLS[m]}
        quantize.build_config(quantize.settings_dict(m, {}))  # defaults are valid
        assert fields <= set(quantize._config_cls(m)().to_dict())


def test_upload_validation(tmp_path):
    with pytest.raises(ValueError, match="no file"):
        runtable.read_upload(None)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        runtable.read_upload(str(tmp_path / "e.txt"))
    (tmp_path / "b.txt").write_bytes(b"\x00\xff" * 10)
    with pytest.raises(ValueError, match="binary"):
        runtable.read_upload(str(tmp_path / "b.txt"))
    (tmp_path / "ok.txt").write_text("hello world")
    assert runtable.read_upload(str(tmp_path / "ok.txt")) == "hello world"


def test_run_path_stays_inside_runs_root(tmp_path):
    (runtable.runs_root() / "r").mkdir()
    everyone = sessions.Viewer(owner=None, show_all=True)
    assert runtable.run_path("r", everyone).endswith("/r")
    for bad in ("..", str(tmp_path), "missing", None, str(runtable.runs_root() / "r" / "..")):
        with pytest.raises(ValueError):
            runtable.run_path(bad, everyone)


def test_lattice_group_view_reads_a_glvq_layer():
    import lvq

    torch.manual_seed(0)
    W = torch.randn(16, 64)
    qw = lvq.quantize_layer(W, None, lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0))
    view = qw.group_view(1, W)
    view = type(view)(**{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in vars(view).items()})
    assert view.G.shape == (8, 8) and view.Z.shape == (16 * 32 // 8, 8) and view.Y.shape == view.Z.shape
    lo = -(1 << (view.bits - 1))
    assert view.Z.min() >= lo and view.Z.max() <= -lo - 1
    assert np.abs(view.Y).max() <= 1.01                 # normalised by fp16 row scales, companded
    # decoded points G (z + ½) are what the layer stores for this group
    decoded = qw.group_view(1, None)
    assert np.allclose(decoded.Y.numpy(), (view.Z + 0.5) @ view.G.T)
    fig = figures.lattice_figure(view.G[:2, :2], view.Y[:, :2], "t", offset=0.5, codes=view.Z[:, :2])
    assert [t.name for t in fig.data] == ["Babai cells", "lattice points G(z+o)", "weight vectors", "used points"]


def test_learn_figures_respond_to_their_sliders():
    for key, fn, sliders in learn.SECTIONS:
        args = [v for _l, _lo, _hi, v, _s in sliders] + (["Laplace"] if key == "companding" else [])
        fig = fn(*args)
        assert fig.data, key
    a = learn.companding_figure(0.0, 2, "Laplace").layout.title.text
    b = learn.companding_figure(100.0, 2, "Laplace").layout.title.text
    assert a != b
    _books, Xh1 = learn.additive_codebooks(np.random.default_rng(0).normal(size=(200, 2)), 1, 4)
    _books, Xh3 = learn.additive_codebooks(np.random.default_rng(0).normal(size=(200, 2)), 3, 4)
    X = np.random.default_rng(0).normal(size=(200, 2))
    assert ((X - Xh3) ** 2).mean() < ((X - Xh1) ** 2).mean()


def test_chat_message_text_handles_gradio_parts():
    assert chat.message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert chat.plain_history([{"role": "user", "content": "hi", "metadata": None}]) == \
        [{"role": "user", "content": "hi"}]


def test_lattice_page_draws_a_nearest_point_group_as_vectors_and_points():
    """An E8 / nearest-point layer has no Babai parallelograms: vectors joined to their decoded
    points instead, and the note says why; a learned lattice gets its Babai cells."""
    import lvq
    from lvq.bench import examples

    torch.manual_seed(0)
    W = torch.randn(16, 64)
    qw = lvq.quantize_layer(W, None, lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0,
                                                    lattice="E8", decoder="nearest"))
    figs = lattice.draw_group(examples.group_data(qw, 1, W), "group 1", 0, 1)
    assert "nearest-point decoding" in figs[-1] and "E8" in figs[-1]
    assert [t.name for t in figs[0].data] == ["quantization error", "decoded points", "weight vectors"]
    assert "not rotated" in figs[4].layout.annotations[0].text
    learned = lvq.quantize_layer(W, None, lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0))
    figs = lattice.draw_group(examples.group_data(learned, 1, W), "group 1", 0, 1)
    assert "Babai cells" in [t.name for t in figs[0].data]


def test_decoded_points_are_what_the_layer_stores():
    """group_data's codes decode (examples.decoded_points) to the stored weights, normalised, for
    the Babai decoder and for a fixed codebook with nearest-point decoding."""
    import lvq
    from lvq.bench import examples

    torch.manual_seed(0)
    W = torch.randn(16, 64)
    for cfg in (lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0),
                lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0, lattice="E8P", decoder="nearest")):
        qw = lvq.quantize_layer(W, None, cfg)
        data = examples.group_data(qw, 1, W, max_vectors=10_000)
        stored = (qw.dequantize()[:, 32:64] / qw.scales[:, 1:2].float()).reshape(-1, 8).numpy()
        assert np.allclose(examples.decoded_points(data), stored, atol=1e-4), cfg.lattice
        assert data["Y"].shape == data["Z"].shape == (16 * 32 // 8, 8) and data["before"] is None
    sub = examples.group_data(qw, 0, W, max_vectors=7)
    assert len(sub["Z"]) == 7 and sub["vectors_total"] == 64


def test_lattice_page_shows_a_rotated_group_before_and_after():
    import lvq
    from lvq.bench import examples

    torch.manual_seed(0)
    W = torch.randn(32, 64)
    W[:, 3] *= 20  # an outlier column: rotation spreads it
    qw = lvq.quantize_layer(W, None, lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0, incoherence=True,
                                                    lattice="E8P", decoder="nearest"))
    data = examples.group_data(qw, 0, W)
    assert data["rotated"] and data["before"].shape == data["Y"].shape
    assert figures.kurtosis(data["before"]) > figures.kurtosis(data["Y"])
    figs = lattice.draw_group(data, "group 0", 0, 3)
    assert [t.name for t in figs[4].data] == ["before rotation", "after rotation"]
    assert "kurtosis" in figs[5].data[0].name and "Rotated layer" in figs[-1]
    codes_only = examples.group_data(qw, 0, None)
    assert codes_only["Y"] is None and codes_only["before"] is None
    assert "original model unavailable" in lattice.draw_group(codes_only, "group 0", 0, 1)[4].layout.annotations[0].text


def test_quantize_controls_cover_the_lattice_choice():
    settings = quantize.settings_dict("glvq", {"lattice": "E8", "decoder": "nearest", "dim": 8.0})
    cfg = quantize.build_config(settings)
    assert (cfg.lattice, cfg.decoder, cfg.dim) == ("E8", "nearest", 8)
    with pytest.raises(ValueError, match="standard lattice"):
        quantize.build_config({"method": "glvq", "lattice": "learned", "decoder": "nearest"})


def test_channels_note_reports_block_finetuning():
    rows = pd.DataFrame({"layer": ["3.mlp.up_proj"], "block": [3], "finetune_val_before": [0.2],
                         "finetune_val_after": [0.15], "finetune_best_step": [7], "finetune_steps_run": [10]})
    note = channels.finetune_note(rows)
    assert "block 4" in note and "0.2 → 0.15" in note and "-25.0%" in note and "pass 7 of 10" in note
    assert "no pass of 3" in channels.finetune_note(rows.assign(finetune_best_step=0, finetune_steps_run=3,
                                                                 finetune_val_after=0.2))
    assert channels.finetune_note(rows.drop(columns=["finetune_val_after"])) == ""  # run without fine-tuning
    assert channels.finetune_note(pd.DataFrame()) == ""


def test_quantize_controls_cover_crvq_finetuning():
    cfg = quantize.build_config(quantize.settings_dict("crvq", {"finetune": True, "finetune_steps": 12.0}))
    assert cfg.finetune is True and cfg.finetune_steps == 12


def test_block_summary_and_layer_groups():
    layers = pd.DataFrame({"layer": ["0.self_attn.q_proj", "0.mlp.down_proj", "1.self_attn.q_proj", "1.mlp.down_proj"],
                           "block": [0, 0, 1, 1], "rel_error": [0.01, 0.1, 0.02, 0.2],
                           "bits_per_weight": [2.05, 2.06, 2.05, 2.07]})
    groups = pd.DataFrame({"layer": ["0.self_attn.q_proj"] * 2 + ["1.mlp.down_proj"], "group": [0, 1, 0],
                           "col_start": [0, 96, 0], "col_stop": [96, 128, 64], "bits": [3, 1, 2],
                           "salience": [1.0, 0.1, 0.5], "err_after": [0.1, 0.3, 0.2]})
    summary = figures.layer_summary(layers, groups)
    assert summary["code_bits"].iloc[0] == pytest.approx((96 * 3 + 32 * 1) / 128)
    heat = figures.block_summary(summary, "relative error")
    assert list(heat.data[0].x) == ["q_proj", "down_proj"] and list(heat.data[0].y) == ["0", "1"]
    assert np.allclose(np.array(heat.data[0].z, dtype=float), np.log10([[0.01, 0.1], [0.02, 0.2]]))
    bits = figures.block_summary(summary, "bits per weight (incl. overhead)")
    assert np.array(bits.data[0].z, dtype=float)[1, 1] == pytest.approx(2.07)
    drill = figures.layer_groups(groups, "0.self_attn.q_proj")
    assert list(drill.data[0].y) == [3, 1] and drill.data[1].yaxis == "y2"
    assert figures.layer_groups(groups, "nope").layout.annotations  # a message, not a crash


def test_bit_allocation_note_explains_a_flat_allocation():
    summary = pd.DataFrame({"layer": ["0.q"], "block": [0], "type": ["q"], "rel_error": [0.01],
                            "bits_per_weight": [2.052], "code_bits": [2.0]})
    flat = pd.DataFrame({"layer": ["0.q", "0.q"], "group": [0, 1], "bits": [2, 2]})
    note = bitalloc.allocation_note({"method": "glvq", "bit_allocation": False, "lattice": "E8P"}, summary, flat)
    assert "flat" in note and "bit allocation off" in note and "E8P" in note and "0.052 above" in note
    moved = bitalloc.allocation_note({"method": "glvq", "bit_allocation": True}, summary,
                                     flat.assign(bits=[1, 3]))
    assert "1, 3 bits" in moved
    assert "no per-group table" in bitalloc.allocation_note({"method": "gptq"}, summary, pd.DataFrame())


def test_chat_speed_and_compute_path():
    import lvq

    t = chat.Timing(start=10.0, first=10.5, end=12.5)
    assert chat.speed_text(41, t) == "**20.0 tokens/s** · 41 tokens · first token after 0.50 s (prompt prefill)"
    assert chat.speed_text(0, t) == "no tokens generated"
    model = torch.nn.Sequential(torch.nn.Linear(64, 16, bias=False))
    assert chat.compute_path(model) == "float32 dense weights on cpu"
    assert chat.resident_mb(model) == pytest.approx(64 * 16 * 4 / 1e6)
    qw = lvq.quantize_layer(torch.randn(16, 64), None, lvq.RTNConfig(bits=3, group_size=32))
    model[0] = lvq.QuantizedLinear(qw)
    lvq.set_inference_mode(model, "packed")
    assert chat.compute_path(model).startswith("packed: decode-free CPU kernels")


def test_a_preset_keeps_its_settings_that_have_no_widget():
    """The quality presets set fields no widget shows (the fine-tuning rate, chat windows, CRVQ's
    incoherence): after the preset button, the config that runs is the whole preset."""
    import lvq

    for cls, method in ((lvq.GLVQConfig, "glvq"), (lvq.CRVQConfig, "crvq")):
        preset = cls.preset("quality").to_dict()
        shown = {f for f, *_ in quantize.CONTROLS[method]}
        extras = quantize.preset_extras(method, preset, shown)
        widgets = {f: preset[f] for f in shown if f in preset}
        cfg = quantize.build_config(quantize.settings_dict(method, widgets, extras))
        assert cfg.to_dict() == preset
    glvq_extras = quantize.preset_extras("glvq", lvq.GLVQConfig.preset("quality").to_dict(), set())
    assert "e2e_chat" not in quantize.settings_dict("crvq", {}, glvq_extras)  # another method's: ignored
    cfg = quantize.build_config(quantize.settings_dict("glvq", {"e2e_steps": 16.0}, glvq_extras))
    assert cfg.e2e_steps == 16 and cfg.e2e_lr == 3e-4  # a widget overrides, the rest stays


def test_layer_widths_box_reaches_the_config_and_the_estimate(tiny_model_dir):
    """The "Layer widths" box of RTN, GPTQ and GLVQ becomes ``layer_bits``; the estimate counts
    it; a malformed entry is refused with the library's message."""
    from transformers import AutoConfig

    assert all(any(f == "layer_bits" for f, *_ in quantize.CONTROLS[m]) for m in ("rtn", "gptq", "glvq"))
    shape = AutoConfig.from_pretrained(str(tiny_model_dir))
    plain = quantize.build_config(quantize.settings_dict("gptq", {"bits": 2.0, "group_size": 32}))
    wider = quantize.build_config(quantize.settings_dict("gptq", {"bits": 2.0, "group_size": 32,
                                                                  "layer_bits": "self_attn.v_proj=4"}))
    assert wider.layer_bits == "self_attn.v_proj=4"
    assert lvq.estimate_size(shape, wider)["bits_per_weight"] > lvq.estimate_size(shape, plain)["bits_per_weight"]
    with pytest.raises(ValueError, match="REGEX=BITS"):
        quantize.build_config(quantize.settings_dict("glvq", {"layer_bits": "v_proj"}))


def test_opening_a_tab_draws_a_page_left_empty(monkeypatch):
    """A picker page whose note says nothing is drawn while its run stays selected is drawn again
    when its tab opens; a drawn page is left as it is (the visitor's layer and group stay)."""
    from pages import RunPicker, blank, shows_nothing

    run = "/runs/a"
    with gr.Blocks():
        client = sessions.client_state()
        picker = RunPicker(gr.Dropdown(), None, client)
        outs = [gr.Plot(), gr.Markdown()]
    monkeypatch.setattr(RunPicker, "choices", lambda self, who: [("a", run)])
    monkeypatch.setattr(runtable, "is_example", lambda r: False)
    drawn = []

    def draw(value, cid, req):
        drawn.append(value)
        return "figure", f"drawn {value}"

    page = picker.page(draw, outs)
    assert page.outputs == [picker.dropdown, *outs] and page.refresh_inputs[1] is outs[-1]
    note = blank(1, "nothing", "No run selected.")[-1]
    assert shows_nothing(note) and shows_nothing("") and shows_nothing("❌ cannot read this run")
    assert not shows_nothing("drawn /runs/a")

    update, *rest = page.refresh(run, note)
    assert update["value"] == run and rest == ["figure", f"drawn {run}"] and drawn == [run]
    update, *rest = page.refresh(run, "drawn /runs/a")
    assert update["value"] == run and all(r == gr.skip() for r in rest) and drawn == [run]
    # a run no longer listed: the dropdown moves, and its change event draws (not the refresh)
    update, *rest = page.refresh("/runs/gone", note)
    assert update["value"] == run and all(r == gr.skip() for r in rest) and drawn == [run]

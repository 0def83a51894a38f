import json

import pytest
import torch

import lvq
from lvq import runs


@pytest.fixture()
def saved_run(tiny_model_dir, tiny_corpus, tmp_path):
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    res = lvq.quantize_model(model, tok, lvq.GPTQConfig(bits=3, group_size=32),
                             calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=64))
    text = lvq.eval_text(str(tiny_corpus))
    runs.round_unquantized(model, "fp16")  # what save_run stores (it rounds too; a no-op now)
    ppl = lvq.perplexity(model, tok, text, seqlen=64)
    path = lvq.save_run(res, tmp_path / "runs" / "g3", metrics={"ppl": ppl})
    return path, ppl, text


def test_round_trip_reproduces_perplexity(saved_run):
    path, ppl, text = saved_run
    model, tok, report = lvq.load_run(path, device="cpu")
    qlins = [m for m in model.modules() if isinstance(m, lvq.QuantizedLinear)]
    assert qlins and all(m.mode == "packed" and m._kernel is not None for m in qlins)  # prepared at load
    assert model.get_input_embeddings().weight.dtype == torch.float32  # the faster head by default
    assert lvq.perplexity(model, tok, text, seqlen=64) == pytest.approx(ppl, rel=1e-4)
    lvq.set_inference_mode(model, "decode")  # the stored tensors, paged out after loading (lvq/memory.py)
    assert lvq.perplexity(model, tok, text, seqlen=64) == pytest.approx(ppl, rel=1e-4)
    assert len(report.layers) == 14
    model, tok, _ = lvq.load_run(path, device="cpu", fp16_embeddings=True)  # stored in fp16: held in fp16
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert emb.weight.dtype == torch.float16 and head.weight is emb.weight
    assert lvq.perplexity(model, tok, text, seqlen=64) == pytest.approx(ppl, rel=1e-4)
    info = lvq.read_run_info(path)
    assert {k: info["method"][k] for k in ("method", "bits", "group_size", "damp", "act_order",
                                           "block_size")} == {"method": "gptq", "bits": 3, "group_size": 32,
                                                              "damp": 0.01, "act_order": False, "block_size": 128}
    assert info["calib"]["n_windows"] == 2 and "torch" in info["versions"]
    assert lvq.config_from_dict(info["method"]) == lvq.GPTQConfig(bits=3, group_size=32)


def test_no_pickle_files(saved_run):
    path, _, _ = saved_run
    suffixes = {p.suffix for p in path.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors", ".csv", ".jinja", ".txt"}, suffixes


def test_load_layer_and_list_runs(saved_run):
    path, ppl, _ = saved_run
    qw = lvq.load_layer(path, "0.self_attn.q_proj")
    assert qw.shape == (64, 64) and qw.bits_per_weight() == pytest.approx(4.0)
    table = lvq.list_runs(path.parent)
    assert list(table["run"]) == ["g3"] and table["ppl"][0] == pytest.approx(ppl)


def test_not_a_run(tmp_path):
    with pytest.raises(lvq.LvqError, match="not an lvq run"):
        lvq.load_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(lvq.LvqError, match="corrupt"):
        lvq.load_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(lvq.LvqError, match="not an lvq run"):
        lvq.load_run(tmp_path)


def _edit_info(path, **changes):
    info = json.loads((path / "run.json").read_text())
    for k, v in changes.items():
        info[k] = v
    (path / "run.json").write_text(json.dumps(info))


def test_newer_format_and_unknown_method(saved_run):
    path, _, _ = saved_run
    _edit_info(path, version=runs.VERSION + 1)
    with pytest.raises(lvq.LvqError, match="newer lvq"):
        lvq.load_run(path)
    _edit_info(path, version=runs.VERSION, method={"method": "quip-sharp"})
    with pytest.raises(lvq.LvqError, match="unknown method"):
        lvq.load_run(path)


def test_truncated_weights(saved_run):
    path, _, _ = saved_run
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(lvq.LvqError, match="truncated"):
        lvq.load_run(path)


def test_corrupt_weights_same_size(saved_run):
    path, _, _ = saved_run
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(lvq.LvqError, match="checksum"):
        lvq.load_run(path)


def test_existing_folder_is_not_overwritten(saved_run, tiny_model_dir, tiny_corpus):
    path, _, _ = saved_run
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    res = lvq.quantize_model(model, tok, lvq.RTNConfig(bits=2, group_size=32),
                             calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=32))
    with pytest.raises(lvq.LvqError, match="already exists"):
        lvq.save_run(res, path)
    lvq.save_run(res, path, overwrite=True)
    assert lvq.read_run_info(path)["method"]["method"] == "rtn"


def test_cancelled_run_leaves_no_folder(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    res = lvq.quantize_model(model, tok, lvq.RTNConfig(bits=2, group_size=32),
                             calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=32))

    def crash(*a, **k):
        raise KeyboardInterrupt  # the user pressed Ctrl-C while the report was being written
    monkeypatch.setattr(res.report, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        lvq.save_run(res, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []

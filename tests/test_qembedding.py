"""Quantized input embedding and lm_head (lvq/qembedding.py): row gathers that equal the decoded
matrix, the tied head's kernel, and runs that save and reload exactly (lvq.load_run, both of its
paths, and transformers' from_pretrained after ``import lvq``)."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import lvq
from lvq import packing, qembedding as qe
from lvq.baselines import RTNWeight
from lvq.jobs import JobSpec
from tests.tiny_model import make_tiny_model

IDS = torch.tensor([[5, 17, 33, 60, 2, 91, 7, 140], [300, 1, 1, 250, 64, 3, 0, 99]])


def _matrix(rows=300, dim=64, seed=0):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [4, 8])
def test_forward_is_a_lookup_of_the_decoded_matrix(bits, monkeypatch):
    E = _matrix()
    monkeypatch.setattr(qe, "CHUNK_ROWS", 64)  # blocks of rows give the codes of the whole matrix
    qw = qe.quantize_embedding_matrix(E, bits, group_size=32)
    whole = lvq.quantize_layer(E, None, lvq.RTNConfig(bits=bits, group_size=32))
    assert all(torch.equal(getattr(qw, n), getattr(whole, n)) for n in ("codes", "scale", "zero"))
    decoded = whole.dequantize()  # the generic decoding (lvq/packing.py unpack)
    assert torch.equal(qw.dequantize(), decoded)
    emb = qe.QuantizedEmbedding(qw)
    ids = torch.randint(0, 300, (3, 7), generator=torch.Generator().manual_seed(1))

    def never(*a, **k):
        raise AssertionError("the forward decoded more than the requested rows")
    monkeypatch.setattr(qe.EmbeddingWeight, "dequantize", never)
    monkeypatch.setattr(RTNWeight, "dequantize", never)
    monkeypatch.setattr(packing, "unpack", never)
    monkeypatch.setattr(qe, "unpack", never)
    out = emb(ids)
    assert out.dtype == torch.float32 and out.shape == (3, 7, 64)
    assert torch.equal(out, F.embedding(ids, decoded))
    assert (out - F.embedding(ids, E)).abs().max() < (0.02 if bits == 8 else 0.3)


@pytest.mark.parametrize("bits", [4, 8])
def test_head_kernel_matches_decoded_linear(bits):
    qw = qe.quantize_embedding_matrix(_matrix(), bits, group_size=32)
    head = lvq.QuantizedLinear(qw, mode="packed")
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = head(x)
    assert head._kernel is not None  # 6 tokens on CPU: the scalar numba kernel ran
    assert torch.allclose(y, F.linear(x, qw.dequantize()), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("bits, group_size, match", [
    (3, 64, "must be 4 or 8"), (16, 64, "must be 4 or 8"), ("8", 64, "must be 4 or 8"),
    (True, 64, "must be 4 or 8"), (8, 0, "group_size"), (8, 1.5, "group_size")])
def test_bad_settings_are_refused(bits, group_size, match, tiny_model_dir):
    model, _ = lvq.load_model(str(tiny_model_dir), device="cpu")
    with pytest.raises(lvq.LvqError, match=match):
        lvq.quantize_embeddings(model, bits, group_size)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)  # nothing was replaced


def test_other_refusals(tiny_model_dir):
    with pytest.raises(lvq.LvqError, match="not whole bytes"):
        qe.quantize_embedding_matrix(_matrix(dim=63), 4)
    with pytest.raises(ValueError, match="embed_bits"):
        JobSpec(model="m", method=lvq.RTNConfig(), out_dir="x", embed_bits=2)
    model, _ = lvq.load_model(str(tiny_model_dir), device="cpu")
    lvq.quantize_embeddings(model, 8)
    with pytest.raises(lvq.LvqError, match="already quantized"):
        lvq.quantize_embeddings(model, 8)


def _quantized(model_dir, corpus, bits):
    model, tok = lvq.load_model(str(model_dir), device="cpu")
    res = lvq.quantize_model(model, tok, lvq.RTNConfig(bits=2, group_size=32),
                             calib=lvq.CalibConfig(corpus=str(corpus), n_windows=2, seqlen=64))
    did = lvq.quantize_embeddings(model, bits)
    return res, did


def _payload_mb(path):
    """MB of tensor data in a run's weight file (the file less its JSON header, which on a model
    this small is ~12% of the file)."""
    f = path / "model.safetensors"
    return (f.stat().st_size - 8 - int.from_bytes(f.read_bytes()[:8], "little")) / 1e6


def _logits(model, mode="dense"):
    lvq.set_inference_mode(model, mode)
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module", params=[8, 4])
def run(request, tiny_model_dir, tiny_corpus, tmp_path_factory):
    torch.manual_seed(0)
    res, did = _quantized(tiny_model_dir, tiny_corpus, request.param)
    path = lvq.save_run(res, tmp_path_factory.mktemp("qemb") / f"e{request.param}")
    return path, res, did, request.param


def test_tied_pair_is_one_copy_and_counted_once(run):
    path, res, did, bits = run
    model = res.model
    emb, head = model.get_input_embeddings(), model.lm_head
    assert did["tied"] and did["modules"]["lm_head"]["tied_to"] == "model.embed_tokens"
    assert isinstance(emb, lvq.QuantizedEmbedding) and head.codes.data_ptr() == emb.codes.data_ptr()
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"model.embed_tokens.codes", "model.embed_tokens.weight", "lm_head.weight"} <= keys
    assert "lm_head.codes" not in keys and "model.embed_tokens.scale" in keys
    info = lvq.read_run_info(path)
    assert "lm_head" not in info["layers"] and set(info["embeddings"]) == {"model.embed_tokens", "lm_head"}
    m = info["metrics"]
    assert m["bits_per_weight"] == pytest.approx(res.metrics["bits_per_weight"])  # the blocks' figure
    dec = sum(sum(mod.qweight().bit_breakdown().values()) for mod in model.modules()
              if isinstance(mod, lvq.QuantizedLinear) and not qe.is_head(mod))
    vocab, dim = emb.num_embeddings, emb.embedding_dim
    norms = sum(p.numel() for p in model.parameters())
    assert m["model_mb"] == pytest.approx((dec + vocab * dim * (bits + 32 / 64) + 16 * norms) / 8e6)
    assert _payload_mb(path) == pytest.approx(m["model_mb"], rel=0.01)


def test_load_run_gives_identical_logits(run):
    path, res, _, _ = run
    model, _, _ = lvq.load_run(path, device="cpu")
    assert isinstance(model.get_input_embeddings(), lvq.QuantizedEmbedding)
    assert model.lm_head.codes.data_ptr() == model.get_input_embeddings().codes.data_ptr()
    assert torch.equal(_logits(model), _logits(res.model))
    assert torch.allclose(_logits(model, "packed"), _logits(res.model, "dense"), atol=1e-4)
    model._apply(lambda t: t.clone())  # what a move to another device does: each buffer copied
    assert model.lm_head.codes.data_ptr() != model.get_input_embeddings().codes.data_ptr()
    assert qe.tie_heads(model) == 1
    assert model.lm_head.codes.data_ptr() == model.get_input_embeddings().codes.data_ptr()


def test_older_runs_path_gives_identical_logits(run, tmp_path):
    """A run whose config.json has no quantization_config goes through runs._load_by_hand."""
    path, res, _, _ = run
    old = tmp_path / "old"
    shutil.copytree(path, old)
    config = json.loads((old / "config.json").read_text())
    del config["quantization_config"]
    (old / "config.json").write_text(json.dumps(config))
    model, _, _ = lvq.load_run(old, device="cpu")
    assert model.lm_head.codes.data_ptr() == model.get_input_embeddings().codes.data_ptr()
    assert torch.equal(_logits(model), _logits(res.model))


def test_from_pretrained_gives_identical_logits(run):
    from transformers import AutoModelForCausalLM

    path, res, _, _ = run
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert isinstance(model.get_input_embeddings(), lvq.QuantizedEmbedding)
    assert model.lm_head.codes.data_ptr() == model.get_input_embeddings().codes.data_ptr()
    assert torch.equal(_logits(model), _logits(res.model))
    with torch.no_grad():
        a = res.model.generate(IDS[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
        b = model.generate(IDS[:1], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_transformers_without_lvq_refuses_the_run(run, monkeypatch):
    """As if lvq were not imported (tests/test_hf.py checks a real plain process): transformers
    skips the unknown method and stops on the one-byte guards (the embedding and head have theirs),
    never loading random embeddings."""
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import auto

    with safe_open(str(run[0] / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").numel() == f.get_tensor("lm_head.weight").numel() == 1
    monkeypatch.delitem(auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "lvq")
    monkeypatch.delitem(auto.AUTO_QUANTIZER_MAPPING, "lvq")
    with pytest.raises(RuntimeError, match="mismatched"):
        AutoModelForCausalLM.from_pretrained(str(run[0]))


def test_untied_model_quantizes_each_and_reloads(tiny_corpus, tmp_path):
    """Mistral is untied; hidden 256 makes the header small enough for the whole file to be
    within 5% of model_mb."""
    folder = make_tiny_model(tmp_path / "mistral", hidden=256, intermediate=384, arch="mistral")
    res, did = _quantized(folder, tiny_corpus, 8)
    model = res.model
    assert not did["tied"] and did["modules"]["lm_head"]["tied_to"] is None
    assert model.lm_head.codes.data_ptr() != model.get_input_embeddings().codes.data_ptr()
    path = lvq.save_run(res, tmp_path / "run")
    loaded, _, _ = lvq.load_run(path, device="cpu")
    assert torch.equal(_logits(loaded), _logits(model))
    m = lvq.read_run_info(path)["metrics"]
    assert (path / "model.safetensors").stat().st_size / 1e6 == pytest.approx(m["model_mb"], rel=0.05)


def test_scaled_embedding_keeps_its_scale(tiny_corpus, tmp_path):
    model, _ = lvq.load_model(str(make_tiny_model(tmp_path / "gemma3", arch="gemma3")), device="cpu")
    scale = float(model.get_input_embeddings().embed_scale)
    lvq.quantize_embeddings(model, 8)
    emb = model.get_input_embeddings()
    assert emb.embed_scale == scale != 1.0
    expected = F.embedding(IDS, emb.qweight().dequantize()) * torch.tensor(scale)
    assert torch.equal(emb(IDS), expected)


def test_cli_quantize_with_embed_bits(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    from lvq.cli import main

    out = tmp_path / "runs" / "e4"
    assert main(["quantize", "--model", str(tiny_model_dir), "--method", "rtn", "--bits", "2",
                 "--group-size", "32", "--corpus", str(tiny_corpus), "--calib-windows", "2",
                 "--calib-seqlen", "64", "--seqlen", "64", "--eval-windows", "2", "--embed-bits", "4",
                 "--out", str(out), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["embed_bits"] == 4 and m["ppl"] > 1
    assert _payload_mb(out) == pytest.approx(m["model_mb"], rel=0.01)
    info = lvq.read_run_info(out)
    assert info["metrics"]["embed_bits"] == 4
    assert info["embeddings"]["model.embed_tokens"]["meta"]["bits"] == 4
    with pytest.raises(SystemExit):
        main(["quantize", "--method", "rtn", "--embed-bits", "3", "--out", str(tmp_path / "x")])

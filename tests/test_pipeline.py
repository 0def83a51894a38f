import threading

import pytest
import torch
import torch.nn.functional as F

import lvq
from lvq.calibration import HessianAccumulator, capture_block_inputs, decoder_blocks, linear_stages
from lvq.data import calibration_windows, tokenize


def test_hessian_accumulation_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 7, 16, generator=g) for _ in range(4)]
    acc = HessianAccumulator(16, torch.device("cpu"))
    for b in batches:
        acc.add(b)
    X = torch.cat([b.reshape(-1, 16) for b in batches]).double()
    assert acc.n == X.shape[0]
    assert acc.H.dtype == torch.float64
    assert torch.allclose(acc.H, X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)


@pytest.fixture()
def tiny(tiny_model_dir):
    return lvq.load_model(str(tiny_model_dir), device="cpu")


def test_linear_stages_follow_the_data_flow(tiny, tiny_corpus):
    model, tok = tiny
    windows = calibration_windows(tok, lvq.calibration_text(str(tiny_corpus)), 2, 32)
    inputs = capture_block_inputs(model, windows, 2, torch.device("cpu"))
    stages = linear_stages(decoder_blocks(model)[0], inputs.hidden[0], inputs.kwargs[0])
    assert [sorted(s) for s in stages] == [
        ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def test_quantize_model_end_to_end_on_tiny_model(tiny, tiny_corpus):
    model, tok = tiny
    text = lvq.eval_text(str(tiny_corpus))
    ppl_fp = lvq.perplexity(model, tok, text, seqlen=64)
    calls = []
    res = lvq.quantize_model(model, tok, lvq.GPTQConfig(bits=4, group_size=32),
                             calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=4, seqlen=64),
                             progress=lambda s, t, m: calls.append((s, t, m)))
    n_linear = 7 * 2
    assert [c[0] for c in calls] == list(range(n_linear + 1))
    assert all(c[1] == n_linear for c in calls)
    assert sum(isinstance(m, lvq.QuantizedLinear) for m in model.modules()) == n_linear
    rep = res.report.layers
    assert len(rep) == n_linear and set(rep["method"]) == {"gptq"}
    assert (rep["rel_error"] < 0.05).all()  # 4 bits on a random layer: a few percent at most
    assert res.metrics["bits_per_weight"] == pytest.approx(4 + 32 / 32)
    ppl_q = lvq.perplexity(model, tok, text, seqlen=64)
    assert abs(ppl_q / ppl_fp - 1) < 0.05


def test_quantized_linear_forward_equals_dequantize(tiny):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(24, 40, generator=g)
    qw = lvq.quantize_layer(W, None, lvq.RTNConfig(bits=3, group_size=16))
    bias = torch.randn(24, generator=g)
    lin = lvq.QuantizedLinear(qw, bias=bias)
    x = torch.randn(5, 40, generator=g)
    ref = F.linear(x, qw.dequantize(), bias)
    assert torch.allclose(lin(x), ref, atol=1e-6)
    lin.set_mode("dense")
    assert torch.allclose(lin(x), ref, atol=1e-6)
    # Stored as packed buffers, not a dense weight.
    assert {n for n, _ in lin.named_buffers()} == {"codes", "scale", "zero", "bias"}
    assert lin.codes.dtype == torch.uint8


TINY_CONFIGS = [
    lvq.RTNConfig(bits=2, group_size=16), lvq.GPTQConfig(bits=3, group_size=32),
    lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=1),
    lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0, lattice="E8", decoder="nearest"),
    lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0, lattice="E8P", decoder="nearest",
                   bit_allocation=False, companding=False, incoherence=True),
    lvq.AQLMConfig(dim=4, codebook_bits=5, num_codebooks=2, epochs=1, adam_steps=2, kmeans_iters=2),
    lvq.CRVQConfig(dim=8, codebook_bits=4, num_extended=2, extended_bits=3, critical_ratio=0.1,
                   epochs=1, adam_steps=2, kmeans_iters=2),
]


@pytest.mark.parametrize("cfg", TINY_CONFIGS, ids=lambda c: c.method)
def test_packed_mode_equals_decode_then_matmul(cfg):
    """The decode-free kernels give F.linear(x, dequantize()) to float tolerance, for 1..16
    tokens, odd shapes and a bias; more tokens and gradients take the decoding path."""
    g = torch.Generator().manual_seed(5)
    W = torch.randn(37, 96, generator=g)
    H = (lambda X: X.T @ X / 256)(torch.randn(256, 96, generator=g)).double()
    qw = lvq.quantize_layer(W, H, cfg)
    bias = torch.randn(37, generator=g)
    lin = lvq.QuantizedLinear(qw, bias=bias, mode="packed")
    W_hat = qw.dequantize()
    with torch.no_grad():
        for shape in ((1, 96), (3, 96), (2, 4, 96), (40, 96)):
            x = torch.randn(*shape, generator=g)
            assert torch.allclose(lin(x), F.linear(x, W_hat, bias), atol=1e-4, rtol=1e-4), shape
    assert lin._kernel is not None  # the kernel was built and used for the few-token calls
    x = torch.randn(2, 96, generator=g, requires_grad=True)
    lin(x).sum().backward()  # with gradients the layer decodes (kernels have no autograd)
    assert torch.allclose(x.grad, W_hat.sum(0).expand(2, -1), atol=1e-4)


def test_cancel_stops_between_layers(tiny, tiny_corpus):
    model, tok = tiny
    stop = threading.Event()

    def progress(step, total, msg):
        if step == 3:
            stop.set()
    with pytest.raises(lvq.Cancelled):
        lvq.quantize_model(model, tok, lvq.RTNConfig(bits=4, group_size=32),
                           calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=32),
                           progress=progress, cancel=stop)
    assert sum(isinstance(m, lvq.QuantizedLinear) for m in model.modules()) == 3


def test_calibration_text_too_short(tiny, tiny_corpus):
    model, tok = tiny
    need = tokenize(tok, lvq.calibration_text(str(tiny_corpus))).numel()
    with pytest.raises(lvq.LvqError, match="too short.*need"):
        lvq.quantize_model(model, tok, lvq.RTNConfig(bits=4),
                           calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=need, seqlen=64))


def test_size_estimate_matches_the_real_size(tiny, tiny_corpus):
    model, tok = tiny
    cfg = lvq.GPTQConfig(bits=3, group_size=32)
    est = lvq.estimate_size(model.config, cfg)
    lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=32))
    real = lvq.model_size(model)
    assert est["bits_per_weight"] == pytest.approx(real["bits_per_weight"])
    assert est["model_mb"] == pytest.approx(real["model_mb"])


def test_crvq_block_finetuning_is_recorded_per_layer(tiny, tiny_corpus):
    """The pipeline runs the block fine-tuning after each block and reports its held-out losses
    on every layer of that block (the Channels page shows them)."""
    model, tok = tiny
    cfg = lvq.CRVQConfig(dim=4, codebook_bits=4, num_extended=1, extended_bits=4, critical_ratio=0.1,
                         epochs=1, adam_steps=3, kmeans_iters=3, finetune=True, finetune_steps=3,
                         finetune_lr=1e-3)
    res = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=4, seqlen=32))
    rep = res.report.layers
    assert rep["finetune_val_after"].notna().all()
    assert (rep["finetune_val_after"] <= rep["finetune_val_before"]).all()  # the best state is kept
    assert rep.groupby("block")["finetune_val_before"].nunique().eq(1).all()  # one figure per block
    assert set(rep["finetune_steps_run"]) <= {1, 2, 3}


@pytest.mark.parametrize("cfg", TINY_CONFIGS + [lvq.GLVQConfig(bits=2.0, group_size=32, steps=1, incoherence=True),
                                               lvq.GLVQConfig(bits=2.5, group_size=32, steps=0)],
                         ids=lambda c: c.method)
def test_train_mode_equals_decode_and_has_gradients(cfg):
    """Fine-tuning's path (codes decoded once, trainable tensors applied per call) computes the
    same product as the full decode, and its gradients reach every trainable tensor."""
    g = torch.Generator().manual_seed(6)
    W = torch.randn(24, 64, generator=g)
    qw = lvq.quantize_layer(W, None, cfg)
    lin = lvq.QuantizedLinear(qw, mode="train")
    x = torch.randn(3, 64, generator=g)
    assert torch.allclose(lin(x), F.linear(x, qw.dequantize()), atol=1e-4)
    from lvq.finetune import _is_trainable
    names = [n for n in lin.state_names if _is_trainable(n, lin.trainable)]
    assert names
    for n in names:
        setattr(lin, n, getattr(lin, n).float().requires_grad_(True))
    lin(x).square().sum().backward()
    assert any(getattr(lin, n).grad is not None and getattr(lin, n).grad.abs().sum() > 0 for n in names)


# the tiny model has two blocks: "-2." is block 0
@pytest.mark.parametrize("cfg", [lvq.GPTQConfig(bits=2, group_size=32, layer_bits=r"self_attn.v_proj=4; ^-2\.mlp=3"),
                                 lvq.GLVQConfig.preset("fast", bits=2.0, group_size=32,
                                                       layer_bits=r"self_attn.v_proj=3")])
def test_layer_bits_give_the_named_layers_their_width(tiny, tiny_corpus, tmp_path, cfg):
    """``layer_bits``: the matching layers get their own width (the first matching entry wins),
    the size estimate counts it, and the saved run reloads with the same logits."""
    model, tok = tiny
    est = lvq.estimate_size(model.config, cfg)
    res = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=32))
    layers = res.report.layers.set_index("layer")
    base = cfg.bits
    for name, row in layers.iterrows():
        want = cfg.layer_config(name, 2).bits
        assert want == (4 if "v_proj" in name and cfg.method == "gptq" else 3 if "v_proj" in name
                        or (cfg.method == "gptq" and name.startswith("0.mlp")) else base)
        assert want <= row["bits_per_weight"] < want + 1.1  # the width plus scales (and signs)
    real = lvq.model_size(model)
    assert est["bits_per_weight"] == pytest.approx(real["bits_per_weight"])
    lvq.save_run(res, tmp_path / "run")  # rounds the unquantized tensors to what it stores
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        before = model(ids).logits
    again, _, _ = lvq.load_run(tmp_path / "run", device="cpu")
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, before, atol=1e-4, rtol=1e-4)


def test_layer_bits_count_blocks_from_either_end():
    cfg = lvq.GLVQConfig(bits=2.0, layer_bits=r"^(0|-1)\.=3; v_proj=4")
    widths = {n: cfg.layer_config(n, 30).bits for n in ("0.mlp.up_proj", "29.mlp.up_proj", "28.mlp.up_proj",
                                                         "29.self_attn.v_proj", "5.self_attn.v_proj")}
    assert widths == {"0.mlp.up_proj": 3.0, "29.mlp.up_proj": 3.0, "28.mlp.up_proj": 2.0,
                      "29.self_attn.v_proj": 3.0, "5.self_attn.v_proj": 4.0}  # the first match wins
    assert cfg.layer_config("29.mlp.up_proj").bits == 2.0  # without the block count: from the start only
    assert lvq.GLVQConfig(bits=2.0).layer_config("0.mlp.up_proj", 30).bits == 2.0


@pytest.mark.parametrize("spec, message", [("v_proj", "REGEX=BITS"), ("v_proj=x", "not a number"),
                                           ("(=4", "not a regular expression"), ("v=9", "bits must be in")])
def test_layer_bits_reject_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        lvq.GLVQConfig(layer_bits=spec)
    with pytest.raises(ValueError, match="needs a bits setting"):
        lvq.CRVQConfig(layer_bits="v_proj=4")
    with pytest.raises(ValueError, match="integer"):
        lvq.RTNConfig(layer_bits="v_proj=4.5")

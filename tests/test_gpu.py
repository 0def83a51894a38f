"""The CUDA path agrees with the CPU path (``make test-gpu``; skipped without a CUDA device).

Imports only lvq, torch and transformers (no Gradio, no gguf), so it runs in a bare GPU job.

Tolerances, and why:

* bits per weight: exactly equal. The stored layout depends only on shapes and the config.
* decoded weights, per layer: ‖Ŵ_cuda − Ŵ_cpu‖ ≤ tol · ‖W − Ŵ_cpu‖, the device difference
  measured against the quantization error itself. Both devices start from the same weights and
  windows, but CUDA's float sums differ from the CPU's in the last bits (and so do the captured
  activations, H, and every later block's inputs). RTN and GPTQ (tol 0.05) keep the same grid:
  a code changes only where a value lands within rounding noise of a grid boundary (GPTQ's error
  feedback may carry such a flip a few columns on). GLVQ, CRVQ and AQLM (tol 0.5) also run Adam,
  k-means and beam-search argmins on those values and may pick a different, equally good code
  here and there; the codes of two unrelated runs of equal quality would differ by about
  √2 ≈ 1.4, and a device bug (a wrong permutation, scale, codebook or generator) by 1 or more.
* logits of the two quantized models: the same bound, against how far quantization moved them.
* the same model on CUDA and on CPU (a run saved on one, loaded on the other): relative 1e-4,
  fp32 matmuls on the two devices (TF32 is off by default in PyTorch).
"""
import pytest
import torch
from torch import nn

import lvq
from tests.tiny_model import ARCHS, make_tiny_model, method_configs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (run `make test-gpu` on a machine with one)"),
]

DEVICE = "cuda"
CONFIGS = method_configs()
TOL = {"rtn": 0.05, "gptq": 0.05, "glvq": 0.5, "crvq": 0.5, "aqlm": 0.5}
PROMPT = "A generator matrix maps integer coordinates to those points"


def calib(corpus) -> lvq.CalibConfig:
    return lvq.CalibConfig(corpus=str(corpus), n_windows=4, seqlen=32, batch_size=2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _qlinears(model: nn.Module) -> dict[str, lvq.QuantizedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, lvq.QuantizedLinear)}


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.to(next(model.parameters()).device)).logits.float().cpu()


def _quantize(folder, method: str, corpus, device: str):
    model, tok = lvq.load_model(str(folder), device=device)
    res = lvq.quantize_model(model, tok, CONFIGS[method], calib=calib(corpus), device=device)
    return model, tok, res


def _assert_agree(folder, method: str, model_cpu, model_dev, res_cpu, res_dev, tok) -> None:
    assert res_dev.metrics["bits_per_weight"] == res_cpu.metrics["bits_per_weight"]
    assert list(res_dev.report.layers["bits_per_weight"]) == list(res_cpu.report.layers["bits_per_weight"])
    original, _ = lvq.load_model(str(folder), device="cpu")
    q_cpu, q_dev = _qlinears(model_cpu), _qlinears(model_dev)
    assert q_cpu.keys() == q_dev.keys() and len(q_cpu) == res_cpu.metrics["n_quantized_layers"]
    for name, qc in q_cpu.items():
        W = original.get_submodule(name).weight.detach()
        W_cpu, W_dev = qc.weight, q_dev[name].weight.cpu()
        err = float((W - W_cpu).norm())
        assert float((W_dev - W_cpu).norm()) <= TOL[method] * err, (name, float((W_dev - W_cpu).norm()), err)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    z_fp, z_cpu, z_dev = _logits(original, ids), _logits(model_cpu, ids), _logits(model_dev, ids)
    assert float((z_dev - z_cpu).norm()) <= TOL[method] * float((z_fp - z_cpu).norm())


@pytest.mark.parametrize("method", list(CONFIGS))
def test_every_method_on_cuda_agrees_with_cpu(method, tiny_model_dir, tiny_corpus):
    model_cpu, tok, res_cpu = _quantize(tiny_model_dir, method, tiny_corpus, "cpu")
    model_dev, _, res_dev = _quantize(tiny_model_dir, method, tiny_corpus, DEVICE)
    # The model stays on the GPU, quantized tensors included.
    assert {t.device.type for t in model_dev.state_dict().values()} == {DEVICE}
    _assert_agree(tiny_model_dir, method, model_cpu, model_dev, res_cpu, res_dev, tok)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "llama"])
def test_architectures_on_cuda_agree_with_cpu(arch, tmp_path, tiny_corpus):
    """Per-block masks and RoPE (Gemma-3, Qwen2), fused linears (Phi-3) on the GPU."""
    folder = make_tiny_model(tmp_path / arch, arch=arch)
    model_cpu, tok, res_cpu = _quantize(folder, "gptq", tiny_corpus, "cpu")
    model_dev, _, res_dev = _quantize(folder, "gptq", tiny_corpus, DEVICE)
    _assert_agree(folder, "gptq", model_cpu, model_dev, res_cpu, res_dev, tok)


def test_cpu_model_quantized_on_cuda_stays_on_cpu(tiny_model_dir, tiny_corpus):
    """A model on the CPU is quantized block by block on the GPU and handed back on the CPU."""
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    res = lvq.quantize_model(model, tok, CONFIGS["gptq"], calib=calib(tiny_corpus), device=DEVICE)
    assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
    model_cpu, _, res_cpu = _quantize(tiny_model_dir, "gptq", tiny_corpus, "cpu")
    _assert_agree(tiny_model_dir, "gptq", model_cpu, model, res_cpu, res, tok)


@pytest.mark.parametrize("method", ["gptq", "crvq"])
def test_run_saved_from_cuda_loads_on_cpu(method, tiny_model_dir, tiny_corpus, tmp_path):
    model_dev, tok, res = _quantize(tiny_model_dir, method, tiny_corpus, DEVICE)
    path = lvq.save_run(res, tmp_path / "run")
    model_cpu, tok_cpu, _ = lvq.load_run(path, device="cpu")
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    z_dev = _logits(model_dev, ids)
    assert _rel(_logits(model_cpu, ids), z_dev) < 1e-4
    # The same weights on the same device: identical.
    model_dev.to("cpu")
    torch.testing.assert_close(_logits(model_cpu, ids), _logits(model_dev, ids), rtol=0, atol=1e-6)
    # And back: a CPU-saved run on the GPU.
    model_back, _, _ = lvq.load_run(lvq.save_run(res, tmp_path / "again"), device=DEVICE)
    assert _rel(_logits(model_back, ids), z_dev) < 1e-4


def test_chat_streams_on_cuda(tiny_model_dir, tiny_corpus, tmp_path):
    """Greedy chat on the GPU (a quantized run loaded there) gives the CPU's reply."""
    _, _, res = _quantize(tiny_model_dir, "rtn", tiny_corpus, "cpu")
    path = lvq.save_run(res, tmp_path / "run")
    messages = [{"role": "user", "content": "What is a lattice?"}]
    replies = {}
    for device in (DEVICE, "cpu"):
        model, tok, _ = lvq.load_run(path, device=device)
        assert next(model.parameters()).device.type == device
        replies[device] = list(lvq.chat_stream(model, tok, messages, max_new_tokens=6, temperature=0))
    assert all(isinstance(t, str) for t in replies[DEVICE])
    assert replies[DEVICE] == replies["cpu"]

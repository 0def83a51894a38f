"""Every method on every supported architecture, end to end on tiny random models.

Llama, Qwen2 (q/k/v biases, a sliding-window block), Qwen3 (q/k norms), Gemma-3 text (scaled
embeddings, q/k norms, four norms per block, sliding and full attention with their own RoPE),
Phi-3 (fused qkv_proj and gate_up_proj) and Mistral (sliding window); tied and untied embeddings.
Each is quantized with every registered method, saved, reloaded, and must give the same logits.
"""
import math

import pytest
import torch
from torch import nn

import lvq
from lvq.calibration import capture_block_inputs, decoder_blocks, linear_stages, run_block
from lvq.data import calibration_windows
from lvq.kernels.scalar import DENSE_MIN_TOKENS
from tests.tiny_model import ARCHS, make_tiny_model, make_tokenizer, method_configs, tiny_config

CONFIGS = method_configs()
TIED = {"llama": True, "qwen2": True, "qwen3": True, "gemma3": True, "phi3": False, "mistral": False}
SPLIT_STAGES = [["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
STAGES = {**{a: SPLIT_STAGES for a in ARCHS},
          "phi3": [["self_attn.qkv_proj"], ["self_attn.o_proj"], ["mlp.gate_up_proj"], ["mlp.down_proj"]]}


def calib(corpus) -> lvq.CalibConfig:
    return lvq.CalibConfig(corpus=str(corpus), n_windows=4, seqlen=32, batch_size=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices gain nothing from a second thread, and lose a lot when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {a: make_tiny_model(root / a, arch=a) for a in ARCHS}


def test_every_method_has_a_tiny_setting():
    assert set(CONFIGS) == set(lvq.method_names())


@pytest.mark.parametrize("arch", ARCHS)
def test_each_block_gets_its_own_mask_and_rope(arch, arch_dirs, tiny_corpus):
    """Replaying the blocks one by one on the captured inputs reproduces the model's own forward:
    Gemma-3's full-attention block and Qwen2's sliding block get their own kwargs, not block 0's."""
    model, tok = lvq.load_model(str(arch_dirs[arch]), device="cpu")
    windows = calibration_windows(tok, lvq.calibration_text(str(tiny_corpus)), 4, 32)
    inputs = capture_block_inputs(model, windows, 2, torch.device("cpu"))
    blocks = decoder_blocks(model)
    outputs: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks = [blk.register_forward_hook(
        lambda m, i, o, b=b: outputs[b].append(o[0] if isinstance(o, tuple) else o))
        for b, blk in enumerate(blocks)]
    with torch.no_grad():
        for i in range(0, 4, 2):
            model(windows[i:i + 2], use_cache=False)
    for h in hooks:
        h.remove()
    hidden = inputs.hidden
    for b, block in enumerate(blocks):
        assert len(inputs.block_kwargs[b]) == len(inputs.hidden) == 2
        with torch.no_grad():
            hidden = [run_block(block, hs, kw) for hs, kw in zip(hidden, inputs.block_kwargs[b])]
        torch.testing.assert_close(torch.cat(hidden), torch.cat(outputs[b]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_stages_follow_the_data_flow(arch, arch_dirs, tiny_corpus):
    """Linears sharing an input form a stage; Phi-3's fused qkv_proj and gate_up_proj are one
    linear each, in a stage of their own."""
    model, tok = lvq.load_model(str(arch_dirs[arch]), device="cpu")
    windows = calibration_windows(tok, lvq.calibration_text(str(tiny_corpus)), 2, 32)
    inputs = capture_block_inputs(model, windows, 2, torch.device("cpu"))
    for b, block in enumerate(decoder_blocks(model)):
        stages = linear_stages(block, inputs.hidden[0], inputs.block_kwargs[b][0])
        assert [sorted(s) for s in stages] == STAGES[arch]


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("arch", ARCHS)
def test_quantize_save_reload(arch, method, arch_dirs, tiny_corpus, tmp_path):
    model, tok = lvq.load_model(str(arch_dirs[arch]), device="cpu")
    cfg = CONFIGS[method]
    n_linear = sum(isinstance(m, nn.Linear) for blk in decoder_blocks(model) for m in blk.modules())
    estimate = lvq.estimate_size(model.config, cfg)
    text = lvq.eval_text(str(tiny_corpus))
    ppl_fp = lvq.perplexity(model, tok, text, seqlen=32, max_windows=2)

    res = lvq.quantize_model(model, tok, cfg, calib=calib(tiny_corpus))

    # Every linear of every block is quantized (fused ones whole), none left behind.
    assert res.metrics["n_quantized_layers"] == n_linear == len(res.report.layers)
    assert not any(isinstance(m, nn.Linear) for blk in decoder_blocks(model) for m in blk.modules())
    assert res.metrics["bits_per_weight"] == pytest.approx(estimate["bits_per_weight"])
    ppl = lvq.perplexity(model, tok, text, seqlen=32, max_windows=2)
    assert math.isfinite(ppl) and abs(ppl / ppl_fp - 1) < 0.1, (ppl_fp, ppl)

    path = lvq.save_run(res, tmp_path / f"{arch}-{method}")  # rounds the unquantized tensors to fp16
    ppl = lvq.perplexity(model, tok, text, seqlen=32, max_windows=2)
    model2, tok2, report = lvq.load_run(path, device="cpu")
    assert type(model2) is type(model) and len(report.layers) == n_linear
    tied = model2.lm_head.weight.data_ptr() == model2.get_input_embeddings().weight.data_ptr()
    assert tied == TIED[arch] == model.config.tie_word_embeddings
    long = tok("A generator matrix maps integer coordinates to those points", return_tensors="pt")["input_ids"]
    short = tok("Additive codebooks", return_tensors="pt")["input_ids"]  # CPU kernels (few tokens)
    assert long.shape[1] > DENSE_MIN_TOKENS >= short.shape[1]  # long: Ŵ decoded from the kernel layout
    with torch.no_grad():
        torch.testing.assert_close(model2(long).logits, model(long).logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model2(short).logits, model(short).logits, rtol=1e-4, atol=1e-5)
    assert lvq.perplexity(model2, tok2, text, seqlen=32, max_windows=2) == pytest.approx(ppl, rel=1e-6)


def test_gemma3_block_finetuning(arch_dirs, tiny_corpus):
    """Block fine-tuning trains Gemma-3's norms (q/k norms and the four block norms included) on
    each block's own mask and RoPE."""
    model, tok = lvq.load_model(str(arch_dirs["gemma3"]), device="cpu")
    cfg = CONFIGS["crvq"].replace(finetune=True, finetune_steps=2, finetune_lr=1e-3)
    res = lvq.quantize_model(model, tok, cfg, calib=calib(tiny_corpus))
    rep = res.report.layers
    assert (rep["finetune_val_after"] <= rep["finetune_val_before"]).all()
    assert rep["finetune_val_before"].map(math.isfinite).all()


def test_multimodal_gemma3_quantizes_its_language_model(tmp_path, tiny_corpus):
    """Gemma-3 4B and larger load as Gemma3ForConditionalGeneration (blocks under
    model.language_model); text-only calibration quantizes the language model's blocks."""
    import transformers

    tok = make_tokenizer()
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text_cfg = tiny_config("gemma3", len(tok), special=special)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text_cfg.to_dict(), vision_config=vision,
                                    mm_tokens_per_image=4, image_token_index=len(tok) - 1,
                                    boi_token_index=len(tok) - 2, eoi_token_index=len(tok) - 3)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "mm")
    tok.save_pretrained(tmp_path / "mm")
    model, tok = lvq.load_model(str(tmp_path / "mm"), device="cpu")
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    res = lvq.quantize_model(model, tok, CONFIGS["rtn"], calib=calib(tiny_corpus))
    assert res.metrics["n_quantized_layers"] == 14
    model2, _, _ = lvq.load_run(lvq.save_run(res, tmp_path / "run"), device="cpu")
    ids = torch.arange(20).view(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(model2(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


# --- what is not supported says so --------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, spare: bool = False, twice: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.spare = nn.Linear(8, 8) if spare else None
        self.twice = twice

    def forward(self, x):
        y = self.proj(x)
        return self.proj(torch.tanh(y)) if self.twice else y


def test_model_without_decoder_blocks_is_refused(tiny_corpus):
    from transformers import PretrainedConfig

    class OddLM(nn.Module):  # its blocks are where lvq does not look
        def __init__(self) -> None:
            super().__init__()
            self.config = PretrainedConfig()
            self.stack = nn.ModuleList([_Block()])

    with pytest.raises(lvq.LvqError, match="OddLM is not supported.*decoder blocks"):
        lvq.quantize_model(OddLM(), make_tokenizer(), CONFIGS["rtn"], calib=calib(tiny_corpus))


def test_weights_outside_linears_are_refused(tiny_corpus):
    """GPT-2 keeps its projections in Conv1D modules: refused by name, never quantized as nothing."""
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=320, n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0))
    with pytest.raises(lvq.LvqError, match=r"GPT2LMHeadModel is not supported.*attn\.c_attn\.weight \(Conv1D\)"):
        lvq.quantize_model(model, make_tokenizer(), CONFIGS["rtn"], calib=calib(tiny_corpus))
    with pytest.raises(lvq.LvqError, match="GPT2LMHeadModel is not supported"):
        lvq.estimate_size(model, CONFIGS["rtn"])


def test_linear_never_called_is_refused():
    x = torch.randn(1, 3, 8)
    assert linear_stages(_Block(), x, {}) == [["proj"]]
    with pytest.raises(lvq.LvqError, match="_Block is not supported.*never calls.*spare"):
        linear_stages(_Block(spare=True), x, {})


def test_linear_called_on_two_inputs_is_refused():
    with pytest.raises(lvq.LvqError, match="_Block is not supported.*proj is called on more than one input"):
        linear_stages(_Block(twice=True), torch.randn(1, 3, 8), {})

"""Block fine-tuning (lvq/finetune.py): codes frozen, continuous parameters trained on block outputs."""
import pytest
import torch
from torch import nn

from lvq.baselines import quantize_rtn
from lvq.config import CRVQConfig, RTNConfig
from lvq.crvq import quantize_crvq
from lvq.finetune import finetune_block
from lvq.qlinear import QuantizedLinear


class ToyNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class ToyBlock(nn.Module):
    def __init__(self, n=32, hidden=64):
        super().__init__()
        self.norm = ToyNorm(n)
        self.up = nn.Linear(n, hidden, bias=False)
        self.down = nn.Linear(hidden, n, bias=False)

    def forward(self, x, scale=1.0):
        return (x + scale * self.down(torch.relu(self.up(self.norm(x)))),)


def test_finetune_block_lowers_held_out_error_and_keeps_codes():
    torch.manual_seed(0)
    block = ToyBlock()
    inputs = [torch.randn(2, 16, 32) for _ in range(8)]
    kwargs = {"scale": 1.0}
    with torch.no_grad():
        targets = [block(x, **kwargs)[0] for x in inputs]
    cfg = CRVQConfig(dim=8, codebook_bits=3, extended_bits=3, num_extended=1, critical_ratio=0.25,
                     epochs=1, adam_steps=5, kmeans_iters=4, finetune=True, finetune_steps=15,
                     finetune_lr=3e-3)
    for name in ("up", "down"):
        lin = getattr(block, name)
        setattr(block, name, QuantizedLinear(quantize_crvq(lin.weight.detach(), None, cfg)))
    codes_before = {n: getattr(block.up, n).clone() for n in block.up.state_names if n.startswith("codes")}
    metrics = finetune_block(block, inputs, targets, kwargs, cfg.finetune_steps, cfg.finetune_lr)
    assert metrics["val_after"] < 0.95 * metrics["val_before"], metrics
    for n, t in codes_before.items():
        assert torch.equal(getattr(block.up, n), t)
    assert block.up.codebook_0.dtype == torch.float16 and not block.up.codebook_0.requires_grad
    assert block.norm.weight.requires_grad  # flags restored
    with torch.no_grad():  # the stored (fp16) result reproduces the reported held-out loss
        val = sum(float(((block(inputs[i], **kwargs)[0] - targets[i]) ** 2).sum() / (targets[i] ** 2).sum())
                  for i in (7,))
    assert val == pytest.approx(metrics["val_after"], rel=0.05)


def test_finetune_block_works_for_a_scalar_method_too():
    """Any method whose weight declares trainable tensors can be fine-tuned (RTN: scale, zero)."""
    torch.manual_seed(1)
    block = ToyBlock()
    inputs = [torch.randn(2, 16, 32) for _ in range(8)]
    with torch.no_grad():
        targets = [block(x)[0] for x in inputs]
    for name in ("up", "down"):
        lin = getattr(block, name)
        setattr(block, name, QuantizedLinear(quantize_rtn(lin.weight.detach(), None,
                                                          RTNConfig(bits=2, group_size=16))))
    codes = block.up.codes.clone()
    metrics = finetune_block(block, inputs, targets, {}, steps=10, lr=3e-3)
    assert metrics["val_after"] < metrics["val_before"], metrics
    assert torch.equal(block.up.codes, codes) and block.up.scale.dtype == torch.float16


def test_finetune_block_with_nothing_to_do():
    block = ToyBlock()
    assert finetune_block(block, [torch.randn(1, 4, 32)], [torch.randn(1, 4, 32)], {}, 5, 1e-3) == {"steps": 0}


def test_end_to_end_finetuning_lowers_the_kl_to_the_original(tiny_model_dir, tiny_corpus):
    """The pipeline's end-to-end step: teacher targets before quantizing, then Adam on every
    continuous parameter; the held-out KL falls and the curve is reported."""
    import lvq

    model, tok = lvq.load_model(str(tiny_model_dir))
    cfg = lvq.RTNConfig(bits=2, group_size=16, e2e_steps=32, e2e_lr=3e-3)
    res = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=8, seqlen=32))
    m = res.metrics
    assert m["e2e_kl_after"] < 0.99 * m["e2e_kl_before"] and m["e2e_best_step"] > 0, m
    curve = res.report.tables["e2e_curve"]
    assert curve["step"].iloc[0] == 0 and curve["heldout_kl"].min() == pytest.approx(m["e2e_kl_after"])
    # the model keeps its stored dtypes and its inference mode after training
    lin = model.model.layers[0].mlp.down_proj
    assert lin.scale.dtype == torch.float16 and not lin.scale.requires_grad and lin.mode == "decode"


def test_end_to_end_on_the_models_own_chat_replies(tiny_model_dir, tiny_corpus):
    """e2e_chat_replies="model": the original model writes the chat windows' replies before any
    layer is quantized (said in the progress), and fine-tuning runs on them."""
    import lvq

    model, tok = lvq.load_model(str(tiny_model_dir))
    cfg = lvq.RTNConfig(bits=2, group_size=16, e2e_steps=4, e2e_lr=3e-3, e2e_chat=2, e2e_chat_replies="model")
    said = []
    res = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=4, seqlen=32),
                             progress=lambda step, total, msg: said.append((step, msg)))
    writes = [i for i, (_, msg) in enumerate(said) if "writes its replies in 2 chat windows" in msg]
    first_layer = next(i for i, (step, _) in enumerate(said) if step > 0)
    assert writes and writes[-1] < first_layer and res.metrics["e2e_kl_before"] > 0
    with pytest.raises(ValueError, match="e2e_chat_replies must be one of"):
        lvq.RTNConfig(bits=2, e2e_chat_replies="wiki")


def test_block_checkpointing_gives_the_same_gradients_and_cleans_up(tiny_model_dir):
    """End-to-end training recomputes each block in the backward pass (memory of one block's
    activations): the gradients equal those without it, and nothing stays switched on after."""
    import lvq
    from lvq.finetune import _block_checkpointing, _kl_to_teacher, _trainable, teacher_targets

    torch.manual_seed(0)
    model, _ = lvq.load_model(str(tiny_model_dir))
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    targets = teacher_targets(model, ids, k=8)
    for layer in model.model.layers:
        for name in ("q_proj", "o_proj"):
            parent = layer.self_attn
            lin = getattr(parent, name)
            setattr(parent, name, QuantizedLinear(quantize_rtn(lin.weight.detach(), None, RTNConfig(bits=2, group_size=16))))
    grads = []
    for checkpointed in (False, True):
        with _trainable(model) as params:
            if checkpointed:
                with _block_checkpointing(model):
                    assert model.model.layers[0].gradient_checkpointing and model.model.layers[0].training
                    assert not model.model.layers[0].self_attn.training  # no dropout anywhere
                    _kl_to_teacher(model, ids, targets.idx, targets.prob).backward()
            else:
                _kl_to_teacher(model, ids, targets.idx, targets.prob).backward()
            grads.append([p.grad.clone() for p in params])
            for p in params:
                p.grad = None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not model.model.layers[0].gradient_checkpointing and not model.model.layers[0].training
    assert not hasattr(model, "_require_grads_hook")

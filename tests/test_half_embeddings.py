"""fp16 embeddings and lm_head for CPU decoding (lvq/half_embeddings.py): the same function as the
fp32 modules they replace, half the memory, and only where the values are exactly fp16."""
import pytest
import torch
import torch.nn.functional as F

import lvq
from lvq import half_embeddings as he


def _fp16_values(rows=300, dim=64, seed=0):
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)).half().float()


@pytest.mark.parametrize("shape", [(1, 64), (1, 1, 64), (2, 3, 64), (5, 64)])
def test_head_equals_fp32_linear_for_one_and_many_tokens(shape, monkeypatch):
    E = _fp16_values()
    monkeypatch.setattr(he, "CHUNK_ROWS", 128)  # several tokens: 3 chunks of rows, the last partial
    head = he.HalfHead(E, bias=torch.randn(300))
    assert head.weight.dtype == torch.float16 and head.weight.numel() == E.numel()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = head(x)
    assert y.dtype == torch.float32 and y.shape == (*shape[:-1], 300)
    assert torch.allclose(y, F.linear(x, E, head.bias), atol=1e-5, rtol=1e-5)


def test_embedding_rows_are_exact_and_scaled():
    E = _fp16_values()
    ids = torch.tensor([[0, 5, 299], [7, 7, 1]])
    assert torch.equal(he.HalfEmbedding(E)(ids), F.embedding(ids, E))
    assert torch.equal(he.HalfEmbedding(E, embed_scale=8.0)(ids), F.embedding(ids, E) * 8.0)


def _tiny(tiny_model_dir):
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # what a run stored in fp16 holds after loading
    return model, tok


@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # gemma3: a scaled embedding
def test_tied_model_computes_the_same_logits_with_one_fp16_tensor(arch, tiny_model_dir, tmp_path):
    from tests.tiny_model import make_tiny_model

    model, tok = _tiny(tiny_model_dir if arch == "llama" else make_tiny_model(tmp_path / arch, arch=arch))
    emb = model.get_input_embeddings().weight
    ids = torch.tensor([[3, 40, 7, 99, 12, 5]])
    with torch.no_grad():
        before = model(ids).logits
        saved = he.halve_embeddings(model)
        after_many = model(ids).logits
        step = model(ids[:, :1]).logits  # one token: the compiled kernel
    assert saved == emb.numel() * 2  # one tensor for the tied pair, fp32 -> fp16
    e, h = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(e, he.HalfEmbedding) and isinstance(h, he.HalfHead) and h.weight is e.weight
    assert torch.allclose(after_many, before, atol=1e-5, rtol=1e-5)
    assert torch.allclose(step[0, 0], before[0, 0], atol=1e-5, rtol=1e-5)
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 10)


def test_values_that_are_not_fp16_stay_as_they_are(tiny_model_dir):
    model, _ = lvq.load_model(str(tiny_model_dir), device="cpu")  # fp32 values, not fp16 numbers
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1e-7)
    assert he.halve_embeddings(model) == 0
    assert type(model.get_input_embeddings()) is torch.nn.Embedding


def test_untied_head_is_halved_on_its_own(tmp_path):
    from tests.tiny_model import make_tiny_model

    model, _ = _tiny(make_tiny_model(tmp_path / "phi3", arch="phi3"))
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert head.weight is not emb.weight
    ids = torch.tensor([[3, 40, 7, 99]])
    with torch.no_grad():
        before = model(ids).logits
        saved = he.halve_embeddings(model)
        after = model(ids).logits
    assert saved == 2 * (emb.weight.numel() + head.weight.numel())
    e, h = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(h, he.HalfHead) and h.weight is not e.weight
    assert torch.allclose(after, before, atol=1e-5, rtol=1e-5)

"""Saved runs load in plain transformers after ``import lvq`` (lvq/hf.py), and only then."""
import subprocess
import sys

import pytest
import torch

import lvq


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tiny_corpus, tmp_path_factory):
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    cfg = lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=0, lattice="E8", decoder="nearest",
                         incoherence=True)
    res = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=2, seqlen=32))
    return lvq.save_run(res, tmp_path_factory.mktemp("hf") / "run")


def test_from_pretrained_gives_the_quantized_model(run_dir):
    from transformers import AutoModelForCausalLM

    ours, tok, _ = lvq.load_run(run_dir, device="cpu")
    theirs = AutoModelForCausalLM.from_pretrained(str(run_dir))
    assert sum(isinstance(m, lvq.QuantizedLinear) for m in theirs.modules()) == 14
    assert theirs.config.quantization_config.quant_method == "lvq"
    ids = torch.tensor([[5, 17, 33, 60, 2, 91]])
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, ours(ids).logits, atol=1e-5)
        a = ours.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
        b = theirs.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_without_lvq_transformers_refuses_the_folder(run_dir):
    """A plain transformers process does not know "lvq": it must fail loudly, never build a model
    whose quantized linears are random."""
    code = ("from transformers import AutoModelForCausalLM\n"
            f"AutoModelForCausalLM.from_pretrained({str(run_dir)!r})\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "lvq" in p.stderr


def test_a_run_folder_without_run_json_is_refused_as_a_plain_model(run_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "run.json").unlink()
    with pytest.raises(lvq.LvqError, match="run.json is missing"):
        lvq.load_model(str(broken))
    with pytest.raises(lvq.LvqError, match="lvq.load_run"):
        lvq.load_model(str(run_dir))

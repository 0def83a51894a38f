"""Decode benchmark: how fast a quantized model talks on this CPU, beside the original.

    python -m lvq.bench --sections decode        # all targets, one fresh process each
    python -m lvq.bench.decode TARGET [--json]   # one target: a run folder or a model name

Per target, in its own process (so resident memory is that model's alone), with torch on 2
threads: greedy decoding of ``NEW_TOKENS`` tokens at batch 1 with the KV cache (tokens/s over
the decoding steps, timed from the first token to the last, so the prompt's prefill is excluded;
median of ``REPEATS``), prefill of one
``PREFILL`` -token window (tokens/s), and the process's resident memory: after the imports, after
loading (a saved run as ``lvq.load_run`` gives it: ``packed`` on CPU, kernels prepared), and
after generating (each reply followed by ``lvq.chat.after_reply``, as a chat does) and the
prefill.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch

from ..chat import after_reply
from ..config import CalibConfig
from ..data import eval_text, text_windows
from ..methods import config_from_dict
from ..models import load_model
from ..pipeline import QuantizeResult
from ..qembedding import quantize_embeddings, quantized_model_size
from ..runs import load_run, read_run_info, save_run

NEW_TOKENS = 128
PREFILL = 512
REPEATS = 3
THREADS = 2
PROMPT = "Explain in a few sentences what a lattice is."


def _step_times(model, ids: torch.Tensor, new: int, pad: int) -> list[float]:
    """Greedy generation of ``new`` tokens; the time at which each token was ready (the first
    one comes from the prompt's prefill, each later one from one decoding step)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class _Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                   do_sample=False, pad_token_id=pad, stopping_criteria=StoppingCriteriaList([_Stamp()]))
    return stamps


@torch.no_grad()
def measure(target: str, fp16_embeddings: bool = False) -> dict:
    """tokens/s of decoding and prefill, and resident memory, for one run folder or model
    (``fp16_embeddings``: a run's embedding and lm_head held in fp16, ``load_run``'s option)."""
    torch.set_num_threads(THREADS)
    rss0 = psutil.Process().memory_info().rss
    if (Path(target) / "run.json").is_file():
        model, tok, _ = load_run(target, device="cpu", fp16_embeddings=fp16_embeddings)
        mode = next((m.mode for m in model.modules() if hasattr(m, "mode")), "")
    else:
        model, tok = load_model(target, device="cpu")
        mode = "fp32"
    rss_loaded = psutil.Process().memory_info().rss
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    pad = tok.pad_token_id or tok.eos_token_id
    _step_times(model, ids, 8, pad)  # warm-up (kernel preparation and compilation, allocator)
    after_reply()
    rates = []
    for _ in range(REPEATS):
        stamps = _step_times(model, ids, NEW_TOKENS + 1, pad)
        rates.append(NEW_TOKENS / max(stamps[-1] - stamps[0], 1e-9))
        after_reply()  # as lvq chat and the Chat page do after each reply (untimed)
    chat_rss = psutil.Process().memory_info().rss  # while chatting: loaded, prompts and replies done
    window = text_windows(tok, eval_text("wiki-bundled"), PREFILL)[-1:]
    model(window, use_cache=False)  # warm-up of the long-input path
    t = time.perf_counter()
    model(window, use_cache=False)
    prefill = PREFILL / (time.perf_counter() - t)
    return {"target": target, "mode": mode, "decode_tok_s": statistics.median(rates),
            "decode_runs": rates, "prefill_tok_s": prefill,
            "rss_mb": chat_rss / 2**20, "model_rss_mb": (chat_rss - rss0) / 2**20,
            "prefill_rss_mb": psutil.Process().memory_info().rss / 2**20,
            "imports_rss_mb": rss0 / 2**20, "loaded_rss_mb": rss_loaded / 2**20,
            "threads": THREADS, "new_tokens": NEW_TOKENS}


def with_quantized_embeddings(src: Path, dst: Path, bits: int = 8) -> Path:
    """A copy of the saved run ``src`` at ``dst`` whose embedding and lm_head are also quantized
    (RTN, ``bits``; lvq/qembedding.py): the same codes for the blocks, so the decode table shows
    what quantizing the embeddings alone changes. Returns ``dst``."""
    model, tok, report = load_run(src, device="cpu", mode="decode")  # no kernels needed here
    info = read_run_info(src)
    quantize_embeddings(model, bits)
    metrics = {k: v for k, v in info["metrics"].items() if k not in ("model_mb", "file_mb", "fp16_mb")}
    metrics.update(embed_bits=bits, **quantized_model_size(model, other_bits=16))
    result = QuantizeResult(model, tok, config_from_dict(info["method"]), CalibConfig(**info["calib"]),
                            report, metrics, info["model"].get("source", ""))
    return save_run(result, dst, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvq.bench.decode")
    ap.add_argument("target")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fp16-embeddings", action="store_true", help="hold a run's embeddings in fp16")
    args = ap.parse_args(argv)
    r = measure(args.target, args.fp16_embeddings)
    print(json.dumps(r) if args.json else
          f"{r['target']} ({r['mode']}): decode {r['decode_tok_s']:.1f} tok/s, prefill "
          f"{r['prefill_tok_s']:.0f} tok/s, resident memory {r['rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

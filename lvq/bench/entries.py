"""Running the benchmark's model-level entries: each one a fresh ``python -m lvq`` process.

An entry is (label, method config); it runs once per calibration seed. Each run quantizes the
bundled model with ``python -m lvq quantize`` (its run folder is kept under ``runs/bench/`` for
the dashboard), then, when asked, ``python -m lvq talk`` scores its greedy replies with the
original model. One process per run keeps each run's peak memory its own.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from typing import Iterator

import torch

from ..calibration import capture_block_inputs, decoder_blocks, linear_stages, stage_hessian
from ..config import CalibConfig
from ..data import calibration_text, calibration_windows
from ..eval import model_size
from ..models import load_model
from .table import ROOT

MODEL = "smollm2-135m"


def run_lvq(cmd: list[str]) -> dict:
    """``python -m lvq <cmd> --json`` in a fresh process -> its JSON (RuntimeError on failure)."""
    p = subprocess.run([sys.executable, "-m", "lvq", *cmd, "--json"], capture_output=True,
                       text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


def _talk(target: str) -> dict:
    t = run_lvq(["talk", target, "--reference", MODEL])
    return {"talk_ppl": t["talk_ppl"], "talk_degenerate": t["talk_degenerate"]}


def fp_row(args) -> dict:
    """The original model: perplexity under the same protocol, size, and its own replies."""
    t = time.perf_counter()
    e = run_lvq(["eval", MODEL, "--seqlen", str(args.seqlen), "--windows", str(args.eval_windows)])
    model, _ = load_model(MODEL, device="cpu")
    size = model_size(model)
    row = {"label": "fp32 (reference)", "seed": 0, "method": "fp", "bits_per_weight": 16.0,
           "model_mb": size["fp16_mb"], "ppl": e["ppl"], "seqlen": e["seqlen"],
           "windows": e["windows"], "quant_time_s": 0.0, "peak_rss_mb": float("nan"),
           "config": "{}", "eval_s": time.perf_counter() - t}
    return {**row, **(_talk(MODEL) if args.talk else {})}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in label.lower()).strip("-")


def quant_row(label: str, cfg, seed: int, args) -> dict:
    """One run of an entry with calibration seed ``seed``."""
    out = ROOT / "runs" / "bench" / (slug(label) + (f"-s{seed}" if seed else ""))
    m = run_lvq(["quantize", "--model", MODEL, "--config-json", json.dumps(cfg.to_dict()),
                 "--calib-windows", str(args.calib_windows), "--calib-seqlen", str(args.calib_seqlen),
                 "--seed", str(seed), "--seqlen", str(args.seqlen), "--eval-windows",
                 str(args.eval_windows), "--out", str(out), "--overwrite"])
    row = {"label": label, "seed": seed, "method": cfg.method, "bits_per_weight": m["bits_per_weight"],
           "model_mb": m["model_mb"], "file_mb": m.get("file_mb"), "ppl": m["ppl"],
           "seqlen": m["eval_seqlen"], "windows": m["eval_windows"], "quant_time_s": m["quant_time_s"],
           "peak_rss_mb": m["process_peak_rss_mb"], "config": json.dumps(cfg.to_dict())}
    return {**row, **(_talk(str(out)) if args.talk else {})}


def runs_of(entries: list[tuple[str, object, tuple[int, ...]]]):
    """(label, config, seed) for every run of the entries, seed by seed (all entries with seed 0
    first, so an interrupted benchmark has one of each)."""
    most = max((len(seeds) for _, _, seeds in entries), default=0)
    for i in range(most):
        for label, cfg, seeds in entries:
            if i < len(seeds):
                yield label, cfg, seeds[i]


def measure(runs: list[tuple[str, object, int]], args, executor=None) -> Iterator[tuple[str, int, dict | None]]:
    """(label, seed, row) for each run as it finishes. executor None: one run after another, a
    failure stops the benchmark; else each run is a task of ``executor`` (lvq/sweep.py; the task
    still runs the subprocesses, so each run's peak memory is its own), and a failed one is
    printed and yields a None row."""
    if executor is None:
        for label, cfg, seed in runs:
            yield label, seed, quant_row(label, cfg, seed, args)
        return
    for ev in executor.map(functools.partial(_quant_task, args=args), runs):
        if ev.started:
            continue
        label, _, seed = runs[ev.index]
        if ev.error:
            print(f"[bench] FAILED {label} (seed {seed}): {ev.error}", file=sys.stderr, flush=True)
        yield label, seed, (None if ev.error else ev.value)


def _quant_task(run: tuple[str, object, int], args) -> dict:
    """quant_row in an executor's worker, its error cut to the subprocess's last line."""
    try:
        return quant_row(run[0], run[1], run[2], args)
    except RuntimeError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else str(e)) from None


def block_weights() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Block 0 of the bundled model: {name: W [out, in]} and {name: H [in, in]} (its calibration
    Hessian, shared by the linears that read the same input)."""
    model, tok = load_model(MODEL, device="cpu")
    calib = CalibConfig()
    win = calibration_windows(tok, calibration_text(calib.corpus), calib.n_windows, calib.seqlen, calib.seed)
    inputs = capture_block_inputs(model, win, calib.batch_size, torch.device("cpu"))
    block = decoder_blocks(model)[0]
    Ws, Hs = {}, {}
    for stage in linear_stages(block, inputs.hidden[0], inputs.kwargs[0]):
        H = stage_hessian(block, stage, inputs, torch.device("cpu"))
        for name in stage:
            Ws[name] = block.get_submodule(name).weight.detach().float()
            Hs[name] = H
    return Ws, Hs

"""Fingerprint what a quantizer produces, to check that a refactor changes no result.

    python scripts/fingerprint.py --out fp.json            # blocks 0-1 of the bundled model
    python scripts/fingerprint.py --check fp.json          # exit 1 if any layer differs

Quantizes the first ``--blocks`` decoder blocks of the bundled model (the rest are dropped) with
GLVQ (learned lattices, 10 steps) and the CRVQ fast preset on one thread, and records, per quantized linear, a sha256 of its
decoded weight and of its stored tensors. One thread: the float summation order, and so the
codes, do not depend on the machine's core count.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch

import lvq


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def fingerprint(blocks: int, windows: int) -> dict[str, dict[str, str]]:
    torch.set_num_threads(1)
    out: dict[str, dict[str, str]] = {}
    for cfg in (lvq.GLVQConfig(bits=2.0, steps=10), lvq.CRVQConfig.preset("fast")):
        model, tok = lvq.load_model("smollm2-135m", device="cpu")
        model.model.layers = model.model.layers[:blocks]
        model.config.num_hidden_layers = blocks
        calib = lvq.CalibConfig(n_windows=windows, seqlen=256)
        lvq.quantize_model(model, tok, cfg, calib=calib, device="cpu")
        for name, mod in model.named_modules():
            if isinstance(mod, lvq.QuantizedLinear):
                qw = mod.qweight()
                tensors, _ = qw.state()
                out[f"{cfg.method}:{name}"] = {
                    "weight": _digest(qw.dequantize()),
                    "state": hashlib.sha256("".join(_digest(t) for _, t in sorted(tensors.items()))
                                            .encode()).hexdigest()[:16],
                }
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--out")
    ap.add_argument("--check")
    args = ap.parse_args()
    fp = fingerprint(args.blocks, args.windows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(fp, f, indent=1, sort_keys=True)
    if args.check:
        with open(args.check) as f:
            ref = json.load(f)
        bad = [k for k in sorted(set(ref) | set(fp)) if ref.get(k) != fp.get(k)]
        print(f"{len(fp)} layers, {len(bad)} with a different decoded weight or stored tensors"
              + (f": {bad[:5]}" if bad else ""))
        return 1 if bad else 0
    print(json.dumps(fp, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

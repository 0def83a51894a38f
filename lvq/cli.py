"""Command line: ``python -m lvq {models,quantize,eval,sweep,runs,chat}``.

Every command prints human-readable output, or JSON with ``--json``. User errors (bad settings,
unknown model, short text, bad run folder) print one clear line and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
from pathlib import Path
from typing import Any

from .chat import chat_stream
from .config import CalibConfig
from .data import eval_text, read_text_file
from .errors import Cancelled, LvqError
from .eval import n_windows, perplexity
from .jobs import EvalConfig, JobSpec, run_job
from .methods import config_from_dict, get_method
from .models import list_models, load_model
from .runs import list_runs, load_run
from .sweep import make_executor, plan_sweep, run_sweep
from .talk import MAX_NEW_TOKENS, talk_metrics


def _emit(args, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


# ----------------------------------------------------------------------------------------------
# Config from command-line settings
# ----------------------------------------------------------------------------------------------
def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if "," in v:
        return tuple(_parse_value(x) for x in v.split(","))
    return v


def build_config(method: str, preset: str | None, bits: float | None, group_size: int | None,
                 settings: list[str]):
    """A method config from CLI flags: preset, then --bits/--group-size, then --set k=v pairs."""
    cls = get_method(method).config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    over: dict[str, Any] = {}
    if bits is not None:
        if "bits" not in fields:
            raise LvqError(f"{method} has no 'bits' setting; its size follows from "
                           f"{', '.join(sorted(fields & {'dim', 'codebook_bits', 'num_codebooks', 'num_extended'}))}")
        over["bits"] = int(bits) if method in ("rtn", "gptq") and float(bits).is_integer() else bits
    if group_size is not None:
        if "group_size" not in fields:
            raise LvqError(f"{method} has no 'group_size' setting")
        over["group_size"] = group_size
    for kv in settings:
        if "=" not in kv:
            raise LvqError(f"--set expects key=value, got {kv!r}")
        k, v = kv.split("=", 1)
        if k not in fields:
            raise LvqError(f"{method} has no setting {k!r}; settings: {', '.join(sorted(fields))}")
        over[k] = _parse_value(v)
    try:
        return cls.preset(preset, **over) if preset else cls(**over)
    except (TypeError, ValueError) as e:
        raise LvqError(f"invalid {method} settings: {e}") from None


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    rows = list_models(args.path)
    lines = [f"{'name':<20} {'source':<8} {'available':<9} note"]
    for r in rows:
        lines.append(f"{r['name']:<20} {r['source']:<8} {str(r['available']):<9} {r['note']}")
    lines.append("Hub ids (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) load where a network exists.")
    _emit(args, rows, "\n".join(lines))
    return 0


def _progress_bar(total_hint: int = 0):
    from tqdm import tqdm  # a third-party helper only the CLI needs

    bar = tqdm(total=total_hint or None, unit="layer", file=sys.stderr, dynamic_ncols=True)

    def cb(step: int, total: int, msg: str) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = step
        bar.set_description(msg[:48])
        bar.refresh()
    return bar, cb


def _run(args, cfg, out: Path, eval_fp: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Build the job spec from the flags and run it with a progress bar."""
    try:
        spec = JobSpec(model=args.model, method=cfg, out_dir=str(out), calib=_calib(args),
                       eval=EvalConfig(seqlen=args.seqlen, windows=args.eval_windows, reference=eval_fp),
                       overwrite=args.overwrite, embed_bits=getattr(args, "embed_bits", None))
    except ValueError as e:
        raise LvqError(str(e)) from None
    bar, cb = _progress_bar() if not quiet else (None, None)
    cancel = threading.Event()
    try:
        job = run_job(spec, progress=cb, cancel=cancel)
    except KeyboardInterrupt:
        raise Cancelled("interrupted; nothing was saved") from None
    finally:
        if bar is not None:
            bar.close()
    return {**job.metrics, "run": str(job.run_dir), "config": cfg.to_dict()}


def _summary(m: dict[str, Any]) -> str:
    ppl = f"{m['ppl']:.2f}" if "ppl" in m else "-"
    fp = f" (fp: {m['ppl_fp']:.2f})" if "ppl_fp" in m else ""
    emb = f", embeddings {m['embed_bits']}-bit" if m.get("embed_bits") else ""
    proto = (f"seqlen {m.get('eval_seqlen')}, {m.get('eval_windows')} windows of the evaluation part "
             f"of {m.get('eval_corpus')}")
    return (f"{m['config']['method']}: {m['bits_per_weight']:.3f} bits/weight{emb}, {m['model_mb']:.1f} MB "
            f"(fp16 {m['fp16_mb']:.1f} MB), perplexity {ppl}{fp} [{proto}], "
            f"{m['quant_time_s']:.0f} s, peak RAM {m['peak_rss_mb']:.0f} MB -> {m['run']}")


def _calib(args):
    """Calibration from the flags; --calib-windows defaults to what the method's --preset runs
    with (``preset_calib_windows``: more for some quality presets), else CalibConfig's 32."""
    windows = args.calib_windows
    if windows is None:
        method = getattr(args, "method", None)
        windows = (get_method(method).config_cls.preset_calib_windows(getattr(args, "preset", None))
                   if method else CalibConfig.n_windows)
    try:
        return CalibConfig(corpus=args.corpus, n_windows=windows, seqlen=args.calib_seqlen,
                           seed=args.seed)
    except ValueError as e:
        raise LvqError(str(e)) from None


def cmd_quantize(args) -> int:
    if args.config_json:
        try:
            cfg = config_from_dict(json.loads(args.config_json))
        except (json.JSONDecodeError, TypeError) as e:
            raise LvqError(f"--config-json is not a valid config: {e}") from None
    elif not args.method:
        raise LvqError("give --method (or --config-json)")
    else:
        cfg = build_config(args.method, args.preset, args.bits, args.group_size, args.set or [])
    m = _run(args, cfg, Path(args.out))
    _emit(args, m, _summary(m))
    return 0


def cmd_eval(args) -> int:
    target = Path(args.target)
    if (target / "run.json").is_file():
        model, tok, _ = load_run(target)
    else:
        model, tok = load_model(args.target)
    text = read_text_file(args.text) if args.text else eval_text(args.corpus)
    where = args.text or f"{args.corpus} (evaluation part)"
    ppl = perplexity(model, tok, text, args.seqlen, args.windows)
    n = n_windows(tok, text, args.seqlen, args.windows)
    data = {"target": args.target, "ppl": ppl, "seqlen": args.seqlen, "windows": n, "text": where}
    _emit(args, data, f"perplexity {ppl:.3f} on {n} windows of {args.seqlen} tokens of {where}")
    return 0


def cmd_sweep(args) -> int:
    """Cartesian product of --bits and --set k=v1,v2 lists -> one run each under --out, run by the
    chosen executor (lvq/sweep.py); finished runs are skipped. Exit 1 when a job failed."""
    if not args.method:
        raise LvqError("give --method")
    executor = make_executor(args.executor, args.address, args.cpus_per_job)
    grids: dict[str, list[Any]] = {}
    for kv in args.set or []:
        if "=" not in kv:
            raise LvqError(f"--set expects key=value[,value...], got {kv!r}")
        k, v = kv.split("=", 1)
        grids[k] = [_parse_value(x) for x in v.split(",")]

    def make_config(bits, point: dict[str, Any]):
        return build_config(args.method, args.preset, bits, args.group_size,
                            [f"{k}={v}" for k, v in point.items()])
    try:
        ev = EvalConfig(seqlen=args.seqlen, windows=args.eval_windows)
    except ValueError as e:
        raise LvqError(str(e)) from None
    jobs = plan_sweep(args.method, make_config, model=args.model, root=args.out,
                      bits=args.bits or [None], settings=grids, calib=_calib(args), eval=ev,
                      name=args.sweep_name, overwrite=args.overwrite)
    from tqdm import tqdm  # a third-party helper only the CLI needs

    bar = tqdm(total=len(jobs), unit="job", file=sys.stderr, dynamic_ncols=True, desc="sweep")
    last = [None]

    def on_update(tally, outcome) -> None:
        last[0] = tally
        bar.n = tally.finished
        bar.set_postfix_str(tally.text(), refresh=False)
        bar.refresh()
        if outcome is not None and outcome.status != "skipped":
            bar.write(_outcome_line(outcome), file=sys.stderr)
    try:
        outcomes = run_sweep(jobs, executor, on_update)
    except KeyboardInterrupt:
        done = last[0].finished if last[0] else 0
        raise Cancelled(f"interrupted: {done} of {len(jobs)} jobs finished and are kept; run the "
                        "same command again to finish the others") from None
    finally:
        bar.close()
    rows = [o.row() for o in outcomes]
    _emit(args, rows, _sweep_table(rows, args.out))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _outcome_line(o) -> str:
    if o.status == "failed":
        return f"FAILED {o.name}: {o.error}"
    ppl = o.metrics.get("ppl")
    return (f"done {o.name}: {o.metrics.get('bits_per_weight', float('nan')):.3f} bits/weight, "
            f"perplexity {'-' if ppl is None else f'{ppl:.2f}'}")


def _sweep_table(rows: list[dict[str, Any]], root: str) -> str:
    """The summary: one line per run, then every failure with its config."""
    cols = ["run", "method", "bits_per_weight", "ppl", "status", "error"]

    def cell(r, c) -> str:
        v = r.get(c)
        if isinstance(v, float):
            return f"{v:.3f}" if c == "bits_per_weight" else f"{v:.2f}"
        text = "" if v is None else str(v)
        return text if len(text) <= 60 else text[:57] + "..."
    table = [cols] + [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table]
    n = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    lines.append(f"{n['done']} done, {n['skipped']} skipped (already finished), {n['failed']} failed; "
                 f"run table: python -m lvq runs {root}")
    for r in rows:
        if r["status"] == "failed":
            lines.append(f"failed {r['run']}: {r['error']}\n  config: {json.dumps(r['config'])}")
    return "\n".join(lines)


def cmd_runs(args) -> int:
    df = list_runs(args.root)
    _emit(args, df.to_dict(orient="records"),
          df.drop(columns=["config", "path", "swept"]).to_string(index=False) if len(df)
          else f"no runs under {args.root}")
    return 0


def cmd_talk(args) -> int:
    """Greedy replies to the fixed prompts of lvq/talk.py, scored by the original model."""
    reference, tok = load_model(args.reference)
    if (Path(args.target) / "run.json").is_file():
        model = load_run(args.target)[0]
        metrics, replies = talk_metrics(model, reference, tok)
    else:
        metrics, replies = talk_metrics(reference, reference, tok)
    data = {"target": args.target, "reference": args.reference, **metrics,
            "replies": [{"prompt": r.prompt, "reply": r.text} for r in replies]}
    lines = [f"> {r.prompt}\n{r.text}\n" for r in replies] if args.show else []
    lines.append(f"{args.target}: perplexity of its replies under {args.reference} "
                 f"{metrics['talk_ppl']:.2f}, degenerate replies {metrics['talk_degenerate']:.0%} "
                 f"({len(replies)} prompts, greedy, up to {MAX_NEW_TOKENS} new tokens)")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_chat(args) -> int:
    target = Path(args.target)
    model, tok = (load_run(target)[:2] if (target / "run.json").is_file() else load_model(args.target))
    messages: list[dict[str, str]] = []
    prompts = [args.prompt] if args.prompt else None
    while True:
        if prompts is not None:
            if not prompts:
                return 0
            user = prompts.pop()
            print(f"> {user}")
        else:
            try:
                user = input("> ")
            except EOFError:
                return 0
            if user.strip() in ("/quit", "/exit"):
                return 0
        messages.append({"role": "user", "content": user})
        shown = ""
        for text in chat_stream(model, tok, messages, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
        print()
        messages.append({"role": "assistant", "content": shown})


# ----------------------------------------------------------------------------------------------
def _add_quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="bundled name, local HF folder or hub id")
    p.add_argument("--method", help="rtn, gptq, glvq, crvq or aqlm")
    p.add_argument("--preset", choices=["fast", "quality"], help="method preset")
    p.add_argument("--group-size", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config setting")
    p.add_argument("--corpus", default="wiki-bundled", help="corpus name or .txt path")
    p.add_argument("--calib-windows", type=int,
                   help="calibration windows of --calib-seqlen tokens (default: the preset's, else 32)")
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seqlen", type=int, default=512, help="evaluation window length")
    p.add_argument("--eval-windows", type=int, default=32, help="evaluation windows (0: skip)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lvq", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("models", help="what can be loaded here")
    p.add_argument("path", nargs="*", help="local folders to check")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("quantize", help="quantize a model and save a run folder")
    _add_quant_args(p)
    p.add_argument("--bits", type=float)
    p.add_argument("--config-json", help="a whole method config as JSON (as stored in run.json)")
    p.add_argument("--embed-bits", type=int, choices=[4, 8],
                   help="also quantize the input embedding and lm_head (RTN, 8 or 4 bits; default: kept in fp16)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_quantize)

    p = sub.add_parser("sweep", help="many settings -> many runs (the run table)")
    _add_quant_args(p)
    p.add_argument("--bits", type=float, nargs="+")
    p.add_argument("--out", default="runs", help="the sweep's folder (on a cluster: a path every node shares)")
    p.add_argument("--sweep-name", help="the name runs carry (default: model, method, swept settings)")
    p.add_argument("--executor", choices=["inprocess", "ray"], default="inprocess",
                   help="inprocess: one job after another here; ray: one Ray task per job")
    p.add_argument("--address", help="Ray cluster to join (host:port or ray://host:10001; "
                                     "default: a local Ray instance on this machine)")
    p.add_argument("--cpus-per-job", type=float, default=1.0, help="CPUs each Ray task declares")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("eval", help="perplexity of a run or a model on any text")
    p.add_argument("target", help="run folder, bundled name, local folder or hub id")
    p.add_argument("--text", help="a UTF-8 text file (default: the corpus's evaluation part)")
    p.add_argument("--corpus", default="wiki-bundled")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=None, help="last N windows (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("runs", help="list saved runs")
    p.add_argument("root", nargs="?", default="runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_runs)

    p = sub.add_parser("talk", help="does it talk? greedy replies to fixed prompts, scored by the original")
    p.add_argument("target", help="run folder (or a model name to score the model itself)")
    p.add_argument("--reference", default="smollm2-135m", help="the original model that scores the replies")
    p.add_argument("--show", action="store_true", help="print every prompt and reply")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_talk)

    p = sub.add_parser("chat", help="chat with a run or a model (streams tokens)")
    p.add_argument("target")
    p.add_argument("--prompt", help="one prompt, then exit (default: interactive)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7)
    p.set_defaults(fn=cmd_chat)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (LvqError, Cancelled, ValueError) as e:  # ValueError: a config refused a setting
        print(f"error: {e}", file=sys.stderr)
        return 2

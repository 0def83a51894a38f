"""Quantize page: pick a model, a method and its settings, calibrate, run, save.

Every method's settings widgets come from ``CONTROLS`` (one row per config field); the exact
config that will run is shown as JSON and is what the ``quantize`` API endpoint takes. A saved run
belongs to the visitor who made it (pages/sessions.py), shared only when they tick "share"; the
run table (pages/myruns.py) lets them share, unshare or delete their own. After each save the runs
folder's budget is enforced (pages/retention.py). One run at a time: a second visitor's run waits
in Gradio's queue, its position shown in the status area.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

import lvq
from lvq.config import ADDITIVE_DIMS, CHAT_REPLIES, GLVQ_DECODERS, GLVQ_DIMS, GLVQ_LATTICES
from lvq.jobs import EvalConfig, JobSpec, run_job

from . import Page, cache, client_or_new, myruns, retention, runtable, sessions, texts, viewer

log = logging.getLogger(__name__)

UPLOAD = "upload a .txt file"
GROUPS = [32, 64, 128, 256, 512]
EMBED_CHOICES = [("fp16 (not quantized)", 0), ("8-bit", 8), ("4-bit", 4)]

# (field, widget, options, one-line help) per method; defaults come from the config class.
# the per-layer widths box of every method with a bits setting (ConfigBase.layer_bits)
LAYER_WIDTHS = ("layer_bits", "textbox", dict(placeholder=r"e.g. ^(0|1|-2|-1)\.=3;self_attn.v_proj=4"),
                "other widths for some layers: REGEX=BITS;… searched in names like 0.self_attn.v_proj "
                "(-1. is the last block; the first match wins)")
CONTROLS: dict[str, list[tuple[str, str, dict, str]]] = {
    "rtn": [
        ("bits", "slider", dict(minimum=1, maximum=8, step=1), "bits per weight (integer codes)"),
        ("group_size", "dropdown", dict(choices=GROUPS), "input columns sharing one scale and zero"),
        LAYER_WIDTHS,
    ],
    "gptq": [
        ("bits", "slider", dict(minimum=1, maximum=8, step=1), "bits per weight (integer codes)"),
        ("group_size", "dropdown", dict(choices=GROUPS), "input columns sharing one scale and zero"),
        ("damp", "slider", dict(minimum=0.0, maximum=0.2, step=0.005),
         "damping added to H, as a fraction of its mean diagonal"),
        ("act_order", "checkbox", {}, "quantize columns in order of decreasing H diagonal"),
        LAYER_WIDTHS,
    ],
    "glvq": [
        ("bits", "slider", dict(minimum=1.0, maximum=4.0, step=0.25),
         "average bits per weight; fractional targets mix integer widths across groups"),
        ("group_size", "dropdown", dict(choices=GROUPS), "input columns per group (one lattice each)"),
        LAYER_WIDTHS,
        ("dim", "dropdown", dict(choices=list(GLVQ_DIMS)), "lattice dimension d (must divide the group size)"),
        ("steps", "slider", dict(minimum=0, maximum=500, step=10), "optimisation steps on G and μ per group"),
        ("companding", "checkbox", {}, "μ-law companding per group"),
        ("bit_allocation", "checkbox", {}, "salience-driven bits: N−1 / N / N+1 per group"),
        ("shared_lattice", "checkbox", {}, "one lattice for the whole layer (ablation)"),
        ("error_feedback", "checkbox", {}, "push each group's error onto later columns through H"),
        ("lattice", "dropdown", dict(choices=list(GLVQ_LATTICES)),
         "learned: a trained G per group; Z, D, E8: a fixed standard lattice, scaled per group (E8 needs d = 8)"),
        ("decoder", "dropdown", dict(choices=list(GLVQ_DECODERS)),
         "babai: z = round(G⁻¹x); nearest: the exact closest lattice point (standard lattices only)"),
        ("incoherence", "checkbox", {},
         "quantize U W Vᵀ with random Hadamard rotations U, V (outliers spread out; the presets use it)"),
        ("finetune", "checkbox", {},
         "after each block: codes frozen, scales and lattice parameters trained on the block's outputs"),
        ("finetune_steps", "slider", dict(minimum=1, maximum=100, step=1), "fine-tuning passes per block"),
        ("e2e_steps", "slider", dict(minimum=0, maximum=500, step=8),
         "end-to-end fine-tuning steps after the last block (0 = none)"),
        ("e2e_chat", "slider", dict(minimum=0, maximum=64, step=1),
         "chat-template conversations added to end-to-end fine-tuning's windows"),
        ("e2e_chat_replies", "dropdown", dict(choices=list(CHAT_REPLIES)),
         "whose replies those conversations hold: text = the calibration paragraph's rest, "
         "model = the original model's own (greedy, written before quantizing)"),
    ],
    "crvq": [
        ("dim", "dropdown", dict(choices=list(ADDITIVE_DIMS)), "vector length d (consecutive input columns)"),
        ("codebook_bits", "slider", dict(minimum=1, maximum=12, step=1),
         "basic codebook: 2^e entries (e bits per vector)"),
        ("num_extended", "slider", dict(minimum=0, maximum=4, step=1),
         "extra additive codebooks, on critical channels only"),
        ("extended_bits", "slider", dict(minimum=1, maximum=12, step=1), "entries 2^e of each extended codebook"),
        ("critical_ratio", "slider", dict(minimum=0.0, maximum=0.25, step=0.005),
         "λ: fraction of input channels treated as critical (1–5 % typical)"),
        ("beam_width", "slider", dict(minimum=1, maximum=8, step=1), "beam width of the code search"),
        ("epochs", "slider", dict(minimum=0, maximum=20, step=1), "code search / codebook update rounds"),
        ("adam_steps", "slider", dict(minimum=0, maximum=200, step=5), "Adam steps on the codebooks per round"),
        ("kmeans_iters", "slider", dict(minimum=0, maximum=50, step=1), "k-means iterations starting each codebook"),
        ("finetune", "checkbox", {},
         "after each block: codes frozen, codebooks and scales trained to match the original block's outputs"),
        ("finetune_steps", "slider", dict(minimum=1, maximum=100, step=1),
         "fine-tuning passes over the calibration windows per block (stops early after 3 passes without "
         "held-out gain); each pass runs the block forward and backward on every window"),
    ],
    "aqlm": [
        ("dim", "dropdown", dict(choices=list(ADDITIVE_DIMS)), "vector length d"),
        ("codebook_bits", "slider", dict(minimum=1, maximum=12, step=1), "2^e entries per codebook"),
        ("num_codebooks", "slider", dict(minimum=1, maximum=4, step=1), "additive codebooks M"),
        ("beam_width", "slider", dict(minimum=1, maximum=8, step=1), "beam width of the code search"),
        ("epochs", "slider", dict(minimum=0, maximum=20, step=1), "code search / codebook update rounds"),
        ("adam_steps", "slider", dict(minimum=0, maximum=200, step=5), "Adam steps on the codebooks per round"),
        ("kmeans_iters", "slider", dict(minimum=0, maximum=50, step=1), "k-means iterations starting each codebook"),
    ],
}
LABELS = {"bits": "Bits per weight", "group_size": "Group size (columns)", "damp": "Damping",
          "act_order": "Activation order", "dim": "Dimension d", "steps": "Steps",
          "companding": "Companding", "bit_allocation": "Bit allocation",
          "shared_lattice": "Shared lattice", "error_feedback": "Error feedback", "lattice": "Lattice",
          "decoder": "Decoder", "codebook_bits": "Codebook bits", "num_extended": "Extended codebooks",
          "extended_bits": "Extended codebook bits", "critical_ratio": "Critical ratio λ",
          "beam_width": "Beam width", "epochs": "Epochs", "num_codebooks": "Codebooks",
          "finetune": "Block fine-tuning", "finetune_steps": "Fine-tuning passes",
          "incoherence": "Incoherence processing (RHT)", "adam_steps": "Adam steps",
          "kmeans_iters": "k-means iterations", "e2e_steps": "End-to-end fine-tuning steps",
          "e2e_chat": "Chat windows", "e2e_chat_replies": "Chat replies from",
          "layer_bits": "Layer widths"}



# ----------------------------------------------------------------------------------------------
# Config handling (pure; tested)
# ----------------------------------------------------------------------------------------------
def _methods() -> list[str]:
    return [m for m in lvq.method_names() if m in CONTROLS]


def _config_cls(method: str):
    return lvq.get_method(method).config_cls


def _coerce(cls, field: str, value: Any) -> Any:
    """Widget value -> the config field's type (sliders give floats)."""
    default = {f.name: f.default for f in dataclasses.fields(cls)}[field]
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int) and value is not None:
        return int(round(float(value)))
    if isinstance(default, float) and value is not None:
        return float(value)
    return value


def settings_dict(method: str, values: dict[str, Any], extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"method": m, field: value, ...} from method m's widget values, on top of the last preset's
    settings that have no widget (``extras``, from ``preset_extras``; used only if it is m's)."""
    cls, extras = _config_cls(method), extras or {}
    base = {k: v for k, v in extras.items() if k != "method"} if extras.get("method") == method else {}
    return {"method": method, **base, **{k: _coerce(cls, k, v) for k, v in values.items()}}


def preset_extras(method: str, preset: dict[str, Any], widget_fields: set[str]) -> dict[str, Any]:
    """The preset's settings no widget shows (e.g. the fine-tuning rate), tagged with the method."""
    return {"method": method, **{k: v for k, v in preset.items() if k != "method" and k not in widget_fields}}


def build_config(settings: dict[str, Any] | str):
    """A validated config from settings (dict or JSON); ValueError with the library's message."""
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except json.JSONDecodeError as e:
            raise ValueError(f"the config is not valid JSON ({e})") from None
    if not isinstance(settings, dict) or "method" not in settings:
        raise ValueError("the config needs a 'method' field")
    return lvq.config_from_dict(settings)


def estimate_markdown(model: str, cfg) -> str:
    """The size estimate, plus the runs folder's budget warning when saving may delete runs."""
    try:
        est = cache.estimate_size(model, cfg)
    except Exception as e:  # unknown model, offline hub id, method without an estimate
        return f"Size estimate unavailable: {e}\n\n{retention.warning()}".strip()
    text = (f"**Estimate:** {est['bits_per_weight']:.3f} bits/weight in the quantized linears · "
            f"model {est['model_mb']:.1f} MB (fp16: {est['fp_mb']:.1f} MB)")
    warn = retention.warning(est["model_mb"])
    return f"{text}\n\n{warn}" if warn else text


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def presets_markdown(rows: pd.DataFrame) -> str:
    """The presets note plus, for each preset the benchmark measured, its size, perplexity and
    quantization time on the bundled model (read from the bench table, never typed in)."""
    lines = []
    for r in rows.itertuples(index=False):
        seeds = f" (median of {r.n_seeds} seeds)" if r.n_seeds > 1 else ""
        fastest = " (fastest run)" if r.n_seeds > 1 else ""
        lines.append(f"{r.method.upper()} **{r.preset}**: {r.bits_per_weight:.2f} bpw, perplexity "
                     f"{r.ppl:.4g}{seeds}, quantization {_fmt_s(float(r.quant_time_s))}{fastest}")
    measured = ("<small>Measured on the bundled model (`make bench`): " + " · ".join(lines)
                + ".</small>\n") if lines else ""
    return texts.PRESETS_NOTE + measured


def summary_markdown(run_dir: str, metrics: dict[str, Any], protocol: str) -> str:
    def num(k, fmt):
        v = metrics.get(k)
        return format(v, fmt) if isinstance(v, (int, float)) else "—"

    return (f"### ✅ Run saved: `{run_dir}`\n\n"
            f"| bits/weight | model MB | ppl original | ppl quantized | time | peak RSS |\n"
            f"|---|---|---|---|---|---|\n"
            f"| {num('bits_per_weight', '.3f')} | {num('model_mb', '.1f')} | {num('ppl_fp', '.2f')} "
            f"| {num('ppl', '.2f')} | {num('quant_time_s', '.1f')} s | {num('peak_rss_mb', '.0f')} MB |\n\n"
            f"Perplexity protocol: {protocol}.")


# ----------------------------------------------------------------------------------------------
# The run (a worker thread; the event handler streams its progress)
# ----------------------------------------------------------------------------------------------
def _resolve_corpus(corpus: str, upload: Any) -> str:
    if corpus == UPLOAD:
        path = upload if isinstance(upload, str) or upload is None else getattr(upload, "name", None)
        runtable.read_upload(path)
        return str(path)
    if not corpus:
        raise ValueError("choose a calibration corpus")
    return corpus


def retention_note(deleted: list[str]) -> str:
    if not deleted:
        return ""
    return (f"\n\nTo keep the runs folder within {retention.budget_bytes() / 1e9:g} GB, the oldest "
            f"runs not in use were deleted: {', '.join(f'`{n}`' for n in deleted)}.")


def _work(spec: JobSpec, cancel, events: queue.Queue, who: sessions.Viewer, share: bool) -> None:
    """Run the job, record its owner, enforce the budget; reports ("progress", text, frac) /
    ("done", md) / ("error", msg)."""
    t0 = time.perf_counter()

    def progress(step: int, total: int, message: str) -> None:
        if not total:
            events.put(("progress", message, None))
            return
        el = time.perf_counter() - t0
        eta = f" · ETA {_fmt_s(el / step * (total - step))}" if step else ""
        events.put(("progress", f"{message} · layer {step} of {total} · {_fmt_s(el)} elapsed{eta}",
                    step / max(total, 1)))

    try:
        job = run_job(spec, progress=progress, cancel=cancel, loaded=cache.fresh_model(spec.model),
                      fp_perplexity=cache.fp_perplexity(spec.model))
        sessions.write_owner(job.run_dir, who, share)
        cache.RUN_MODELS.put(str(job.run_dir), (job.result.model, job.result.tokenizer, job.result.report))
        deleted = retention.enforce(keep={str(job.run_dir)})
        events.put(("done", summary_markdown(str(job.run_dir), job.metrics, _protocol(spec))
                    + retention_note(deleted)))
    except lvq.Cancelled:
        events.put(("error", "⏹ Run cancelled; nothing was saved."))
    except (ValueError, MemoryError, OSError) as e:  # LvqError is a ValueError
        events.put(("error", f"❌ {e}"))
    except Exception as e:  # keep the app alive; the message goes to the user, the trace to the log
        log.exception("quantization failed")
        events.put(("error", f"❌ The run failed: {type(e).__name__}: {e}"))


def _protocol(spec: JobSpec) -> str:
    ev = spec.eval
    if not ev.windows:
        return "not measured (evaluation windows = 0)"
    corpus = spec.calib.corpus
    name = corpus if corpus in lvq.list_corpora() else f"uploaded {Path(corpus).name}"
    return (f"last {ev.windows} non-overlapping windows of {ev.seqlen} tokens of the evaluation "
            f"part of `{name}`")


def run_quantization(model_name: str, config: str, corpus: str, upload: Any, n_windows: float,
                     seqlen: float, eval_windows: float, share: bool = False, embed_bits: Any = 0,
                     client_id: Any = None, request: gr.Request = None, progress=gr.Progress()):
    """Stream (status, run table) while a run goes on in a worker thread. The run belongs to the
    visitor ``client_id`` (else the request's session); ``share`` shows it to other visitors;
    ``embed_bits`` 8 or 4 quantizes the embedding and lm_head too (0: kept in fp16)."""
    table = gr.update()
    who = viewer(client_id, request)
    try:
        if not model_name or not str(model_name).strip():
            raise ValueError("choose a model")
        cfg = build_config(config)
        calib = lvq.CalibConfig(corpus=_resolve_corpus(corpus, upload), n_windows=int(n_windows),
                                seqlen=int(seqlen))
        name = str(model_name).strip()
        spec = JobSpec(model=name, method=cfg, calib=calib,
                       eval=EvalConfig(seqlen=int(seqlen), windows=int(eval_windows)),
                       out_dir=str(runtable.new_run_dir(name, cfg.method, getattr(cfg, "bits", None))),
                       embed_bits=int(embed_bits) if embed_bits else None)
    except ValueError as e:
        gr.Warning(str(e))
        yield f"❌ {e}", table
        return
    cancel = cache.SIGNALS.fresh(cache.session_id(request), "quantize")
    events: queue.Queue = queue.Queue()
    worker = threading.Thread(target=_work, daemon=True, name="lvq-quantize",
                              args=(spec, cancel, events, who, bool(share)))
    worker.start()
    try:
        while True:
            try:
                ev = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if ev[0] == "progress":
                _, text, frac = ev
                progress(frac if frac is not None else 0.0, desc=text)
                yield f"⏳ {text}", table
            elif ev[0] == "done":
                yield ev[1], myruns.run_table(who)
                return
            else:
                gr.Warning(ev[1].lstrip("❌⏹ "))
                yield ev[1], table
                return
    finally:
        cancel.set()  # the page was closed or the run ended: stop the worker if it still runs


def cancel_run(request: gr.Request) -> str:
    """Cancel this session's run (the signal is keyed by the Gradio session: never another's)."""
    if cache.SIGNALS.set(cache.session_id(request), "quantize"):
        return "⏹ Cancelling after the current layer…"
    return "Nothing to cancel."


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------
def _widget(cls, method: str, field: str, kind: str, opts: dict, help_: str):
    default = {f.name: f.default for f in dataclasses.fields(cls)}[field]
    label, eid = LABELS.get(field, field), f"{method}-{field}"
    if kind == "checkbox":
        return gr.Checkbox(value=bool(default), label=label, info=help_, elem_id=eid)
    if kind == "textbox":
        return gr.Textbox(value=default, label=label, info=help_, elem_id=eid, **opts)
    if kind == "dropdown":  # every preset's value must be a choice (the preset buttons set them)
        presets = [cls.preset(p).to_dict().get(field) for p in getattr(cls, "presets", {})]
        extra = {v for v in [default, *presets] if v is not None}
        choices = list(opts["choices"])
        if not extra <= set(choices):
            choices = sorted(set(choices) | extra, key=lambda v: (isinstance(v, str), v))
        return gr.Dropdown(choices=choices, value=default, label=label, info=help_, elem_id=eid)
    value = min(max(default, opts["minimum"]), opts["maximum"])
    return gr.Slider(value=value, label=label, info=help_, elem_id=eid, **opts)


def build(client: gr.BrowserState | None = None) -> Page:
    client = client_or_new(client)
    methods = _methods()
    models = runtable.model_choices()
    gr.Markdown(texts.Q4_NOTE)
    with gr.Row():
        with gr.Column(scale=3):
            model = gr.Dropdown(models, value=models[0] if models else None, allow_custom_value=True,
                                label="Model",
                                info="a bundled model, a local Hugging Face folder, or a hub id (needs a network)")
            method = gr.Radio(methods, value="glvq" if "glvq" in methods else methods[0], label="Method",
                              info="GLVQ: learned lattices · CRVQ: additive codebooks + critical channels · "
                                   "RTN/GPTQ: scalar baselines · AQLM: CRVQ without critical channels")
            with gr.Row():
                fast = gr.Button("Fast preset", size="sm")
                quality = gr.Button("Quality preset", size="sm")
            gr.Markdown(presets_markdown(runtable.preset_rows()), elem_id="preset-costs")
            widgets: dict[str, dict[str, Any]] = {}
            groups = {}
            for m in methods:
                cls = _config_cls(m)
                with gr.Group(visible=(m == method.value)) as grp:
                    widgets[m] = {f: _widget(cls, m, f, kind, opts, h) for f, kind, opts, h in CONTROLS[m]}
                groups[m] = grp
        with gr.Column(scale=2):
            corpora = lvq.list_corpora()
            corpus = gr.Dropdown(corpora + [UPLOAD], value=corpora[0], label="Calibration text",
                                 info="hub corpora (wikitext2, c4) need a network")
            upload = gr.File(label="Your text (.txt, UTF-8, ≤ 20 MB)", file_types=[".txt"],
                             visible=False, elem_id="calib-upload")
            n_windows = gr.Slider(1, 256, value=32, step=1, label="Calibration windows", elem_id="calib-windows",
                                  info="windows of seqlen tokens used to collect H = XᵀX")
            seqlen = gr.Dropdown([64, 128, 256, 512, 1024, 2048], value=512, label="Sequence length (tokens)",
                                 info="for calibration and evaluation windows")
            eval_windows = gr.Slider(0, 64, value=8, step=1, label="Evaluation windows", elem_id="eval-windows",
                                     info="perplexity before/after on the disjoint evaluation text (0 = skip)")
            embed = gr.Dropdown(EMBED_CHOICES, value=0, label="Embedding and lm_head", elem_id="embed-bits",
                                info="kept in fp16, or quantized too (RTN per row; counted in the model size)")
            gr.Markdown(texts.CALIB_HELP)
    estimate = gr.Markdown(elem_id="estimate")
    with gr.Accordion("Config that will run (JSON; the `quantize` API takes this)", open=False):
        config = gr.Code(language="json", interactive=False, elem_id="config-json")
    share_info = ("every visitor of this dashboard sees every run anyway (LVQ_SHARED_RUNS=1)"
                  if sessions.shared_runs() else "otherwise only you (this browser) see it")
    share = gr.Checkbox(False, label="Share this run with other visitors", info=share_info,
                        elem_id="share-run")
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id="run-button")
        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
    # tall enough for Gradio's queue position ("queue: 1/2") while a run waits for another's
    status = gr.Markdown("Ready.", elem_id="run-status", min_height=72)
    gr.Markdown("### Saved runs")
    runs = myruns.build(client)
    with gr.Accordion("How a run works", open=False):
        gr.Markdown(texts.QUANTIZE_HELP)

    flat = [(m, f, w) for m in methods for f, w in widgets[m].items()]
    flat_widgets = [w for _, _, w in flat]

    extras = gr.State({})  # the last preset's settings without a widget (preset_extras)

    def describe(model_name, method_name, extra, *values):
        vals = {f: v for (m, f, _), v in zip(flat, values) if m == method_name}
        settings = settings_dict(method_name, vals, extra)
        text = json.dumps(settings, indent=2)
        try:
            cfg = build_config(settings)
        except ValueError as e:
            return text, f"⚠️ **Setting not possible:** {e}"
        return json.dumps(cfg.to_dict(), indent=2), estimate_markdown(str(model_name or ""), cfg)

    def show_method(method_name):
        return [gr.update(visible=(m == method_name)) for m in methods]

    def apply_preset(name):
        def fn(method_name):
            cls = _config_cls(method_name)
            try:
                preset = cls.preset(name).to_dict()
            except ValueError as e:
                gr.Warning(str(e))
                preset = {}
            shown = {f for m, f, _ in flat if m == method_name}
            windows = gr.update(value=cls.preset_calib_windows(name)) if preset else gr.update()
            return [gr.update(value=preset[f]) if m == method_name and f in preset else gr.update()
                    for m, f, _ in flat] + [preset_extras(method_name, preset, shown) if preset else {}, windows]
        return fn

    def show_upload(c):
        return gr.update(visible=(c == UPLOAD))

    method.change(show_method, method, list(groups.values()), queue=False, api_name=False)
    fast.click(apply_preset("fast"), method, [*flat_widgets, extras, n_windows], queue=False, api_name=False)
    quality.click(apply_preset("quality"), method, [*flat_widgets, extras, n_windows], queue=False,
                  api_name=False)
    corpus.change(show_upload, corpus, upload, queue=False, api_name=False)
    gr.on([model.change, method.change, extras.change] + [w.change for w in flat_widgets], describe,
          [model, method, extras, *flat_widgets], [config, estimate], trigger_mode="always_last",
          show_progress="hidden", api_name=False)
    run.click(describe, [model, method, extras, *flat_widgets], [config, estimate], queue=False,
              api_name=False).then(
        cache.gpu(run_quantization, cache.quantize_seconds),
        [model, config, corpus, upload, n_windows, seqlen, eval_windows, share, embed, client],
        [status, runs.table], api_name="quantize", concurrency_limit=1, concurrency_id="heavy").then(
        runs.after_run, [runs.mine, client], [runs.mine, runs.shared], api_name=False)
    cancel.click(cancel_run, None, status, queue=False, api_name="cancel")

    def refresh(client_id: Any = None, request: gr.Request = None):
        return (gr.update(choices=runtable.model_choices()), *runs.fill(client_id, request))

    def initial(client_id: Any = None, request: gr.Request = None):
        return (*describe(model.value, method.value, extras.value, *[w.value for w in flat_widgets]),
                *runs.fill(client_id, request))

    return Page(refresh=refresh, outputs=[model, *runs.outputs], refresh_inputs=[client], load=initial,
                load_inputs=[client], load_outputs=[config, estimate, *runs.outputs])

"""Chat page: one prompt, two streamed replies — the original model and a quantized run.

Under each reply: its speed (tokens per second after the first token, and the time to the first
token, i.e. the prompt's prefill), the compute path of the model's linears and its size.
Examples are report-only and not listed here (``runtable.REPORT_ONLY`` if one is asked for).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

import lvq

from . import Page, cache, client_or_new, run_picker, runtable, texts, viewer

log = logging.getLogger(__name__)


def message_text(content: Any) -> str:
    """Chatbot message content (a string, or Gradio 6's list of typed parts) -> plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(message_text(c) for c in content)
    return "" if content is None else str(content)


def plain_history(history: list | None) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": message_text(m.get("content"))} for m in history or []]


def base_model_of(run_dir: str, who) -> str:
    return str(lvq.read_run_info(runtable.run_path(run_dir, who))["model"].get("source") or "")


# How a model's linears compute (lvq/qlinear.py, QuantizedLinear.mode), in words.
MODE_TEXT = {
    "packed": "packed: decode-free CPU kernels (the prompt's prefill decodes each layer for that call)",
    "dense": "dense: weights decoded once and kept in fp32",
    "decode": "decode: weights decoded at every call",
    "train": "train: fine-tuning's path",
}


@dataclass
class Timing:
    """Wall-clock marks of one generation (time.perf_counter)."""

    start: float
    first: float | None = None   # the first text arrived (prefill + one decoding step)
    end: float | None = None


def compute_path(model) -> str:
    """The compute path of a model's linears: the QuantizedLinear modes, or plain torch."""
    modes = sorted({m.mode for m in model.modules() if isinstance(m, lvq.QuantizedLinear)})
    first = next(iter([*model.parameters(), *model.buffers()]), None)
    device = first.device.type if first is not None else "cpu"
    if not modes:
        dtype = str(first.dtype).replace("torch.", "") if first is not None else "no"
        return f"{dtype} dense weights on {device}"
    return " + ".join(MODE_TEXT.get(m, m) for m in modes) + f" on {device}"


def resident_mb(model) -> float:
    """MB of the model's tensors in memory (parameters and buffers, each storage once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total / 1e6


def speed_text(n_tokens: int, timing: Timing | None) -> str:
    """"12.3 tokens/s · 57 tokens · first token after 0.41 s" (pure; tested)."""
    if timing is None or timing.first is None or timing.end is None or n_tokens == 0:
        return "no tokens generated"
    ttft = timing.first - timing.start
    after = timing.end - timing.first
    rate = f"{(n_tokens - 1) / after:.1f} tokens/s" if n_tokens > 1 and after > 0 else "— tokens/s"
    return f"**{rate}** · {n_tokens} tokens · first token after {ttft:.2f} s (prompt prefill)"


def stats_text(model, tok, text: str, timing: Timing | None, stored_mb: float | None = None) -> str:
    """The line under a reply: speed, compute path, size."""
    n = len(tok(text, add_special_tokens=False)["input_ids"]) if text.strip() else 0
    size = f"{resident_mb(model):.0f} MB of tensors in memory"
    if stored_mb:
        size += f" (stored: {stored_mb:.1f} MB)"
    return f"{speed_text(n, timing)} · {compute_path(model)} · {size}"


def _stream_into(events: queue.Queue, key: str, model, tok, messages, settings, stop) -> None:
    """Run one generation, putting (key, text so far, None) after every token and
    (key, None, Timing) at the end."""
    text = ""
    timing = Timing(time.perf_counter())
    try:
        for text in lvq.chat_stream(model, tok, messages, stop=stop, **settings):
            if timing.first is None:
                timing.first = time.perf_counter()
            events.put((key, text, None))
    except Exception as e:  # shown in that panel; the other panel keeps going
        log.exception("chat generation failed")
        events.put((key, text + f"\n\n❌ generation failed: {type(e).__name__}: {e}", None))
    finally:
        timing.end = time.perf_counter()
        events.put((key, None, timing))


def _stored_mb(run_dir: str, who) -> float | None:
    try:
        mb = lvq.read_run_info(runtable.run_path(run_dir, who))["metrics"].get("model_mb")
        return float(mb) if mb else None
    except (ValueError, OSError, TypeError):
        return None


def chat(prompt: str, run_dir: str | None, hist_o: list | None, hist_q: list | None,
         max_new_tokens: float, temperature: float, top_p: float, client_id: Any = None,
         request: gr.Request = None):
    """Stream (original history, quantized history, prompt box, original's stats, quantized's
    stats) token by token."""
    hist_o, hist_q = plain_history(hist_o), plain_history(hist_q)
    stats = {"o": "", "q": ""}
    prompt = (prompt or "").strip()
    if not prompt:
        gr.Warning("Type a message first.")
        yield hist_o, hist_q, "", stats["o"], stats["q"]
        return
    if not run_dir:
        gr.Warning("Pick a quantized run (quantize one on the Quantize page).")
        yield hist_o, hist_q, prompt, stats["o"], stats["q"]
        return
    who = viewer(client_id, request)
    settings = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
    stop = cache.SIGNALS.fresh(cache.session_id(request), "chat")
    user = {"role": "user", "content": prompt}
    new_o = hist_o + [user, {"role": "assistant", "content": "…"}]
    new_q = hist_q + [user, {"role": "assistant", "content": "…"}]
    stats = {"o": "⏳ generating…", "q": "⏳ generating…"}
    yield new_o, new_q, "", stats["o"], stats["q"]
    models: dict[str, tuple] = {}
    try:
        q_model, q_tok, _ = cache.RUN_MODELS.get(runtable.run_path(run_dir, who, weights=True))
        models["q"] = (q_model, q_tok, hist_q)
    except (ValueError, OSError) as e:
        new_q[-1]["content"] = f"❌ cannot load the run: {e}"
        stats["q"] = ""
    try:
        base = base_model_of(run_dir, who)
        o_model, o_tok = cache.BASE_MODELS.get(base)
        models["o"] = (o_model, o_tok, hist_o)
    except (ValueError, OSError) as e:
        new_o[-1]["content"] = f"❌ cannot load the original model: {e}"
        stats["o"] = ""
    events: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_stream_into, daemon=True,
                                args=(events, k, m, t, h + [user], settings, stop))
               for k, (m, t, h) in models.items()]
    for t in threads:
        t.start()
    panels, latest, timings, running = {"o": new_o, "q": new_q}, {}, {}, set(models)
    try:
        while running:  # one update per token, from whichever side produced it
            key, text, timing = events.get()
            if text is None:
                running.discard(key)
                timings[key] = timing
                continue
            latest[key] = text
            panels[key][-1]["content"] = text
            yield new_o, new_q, "", stats["o"], stats["q"]
    finally:
        stop.set()  # also ends generation when the browser goes away
    for k, (model, tok, _h) in models.items():
        if not latest.get(k, "").strip():
            panels[k][-1]["content"] = "(no reply: the model produced only whitespace or an end token)"
        stats[k] = stats_text(model, tok, latest.get(k, ""), timings.get(k),
                              _stored_mb(run_dir, who) if k == "q" else None)
    yield new_o, new_q, "", stats["o"], stats["q"]


def stop_chat(request: gr.Request) -> None:
    cache.SIGNALS.set(cache.session_id(request), "chat")


def describe_run(run_dir: str | None, client_id: Any = None, request: gr.Request = None) -> str:
    if not run_dir:
        return "No quantized run yet: quantize one on the Quantize page (the examples are report-only)."
    try:
        who = viewer(client_id, request)
        runtable.run_path(run_dir, who, weights=True)
        return f"Left: the original **{base_model_of(run_dir, who)}** · right: run `{run_dir}`."
    except (ValueError, OSError) as e:
        return f"❌ {e}"


def build(client: gr.BrowserState | None = None) -> Page:
    client = client_or_new(client)
    gr.Markdown(texts.CHAT_HELP)
    picker = run_picker("Quantized run", None, "chat-run", client, examples=False)
    run = picker.dropdown
    info = gr.Markdown()
    with gr.Row():
        with gr.Column():
            left = gr.Chatbot(label="Original", height=380, elem_id="chat-original")
            stats_o = gr.Markdown(elem_id="chat-stats-original")
        with gr.Column():
            right = gr.Chatbot(label="Quantized", height=380, elem_id="chat-quantized")
            stats_q = gr.Markdown(elem_id="chat-stats-quantized")
    prompt = gr.Textbox(placeholder="Ask both models something…", label="Message", lines=2,
                        elem_id="chat-prompt")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
        clear = gr.Button("Clear")
    with gr.Accordion("Generation settings", open=False):
        max_new = gr.Slider(8, 512, value=96, step=8, label="Max new tokens")
        temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature (0 = greedy)")
        top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")

    inputs = [prompt, run, left, right, max_new, temperature, top_p, client]
    gr.on([send.click, prompt.submit], cache.gpu(chat, cache.chat_seconds), inputs, [left, right, prompt, stats_o, stats_q],
          api_name="chat", concurrency_limit=2, concurrency_id="chat")
    stop.click(stop_chat, None, None, queue=False, api_name=False)
    clear.click(lambda: ([], [], "", ""), None, [left, right, stats_o, stats_q], queue=False, api_name=False)
    run.change(describe_run, [run, client], info, api_name=False)
    return picker.page(lambda value, cid, req: (describe_run(value, cid, req),), [info])

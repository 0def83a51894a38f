"""Chat page: one prompt, two streamed replies — the original model and a quantized run."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import gradio as gr

import lvq

from . import Page, cache, run_picker, runtable, texts

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


def base_model_of(run_dir: str) -> str:
    return str(lvq.read_run_info(runtable.run_path(run_dir))["model"].get("source") or "")


def _stream_into(events: queue.Queue, key: str, model, tok, messages, settings, stop) -> None:
    """Run one generation, putting (key, text so far) after every token and (key, None) at the end."""
    text = ""
    try:
        for text in lvq.chat_stream(model, tok, messages, stop=stop, **settings):
            events.put((key, text))
    except Exception as e:  # shown in that panel; the other panel keeps going
        log.exception("chat generation failed")
        events.put((key, text + f"\n\n❌ generation failed: {type(e).__name__}: {e}"))
    finally:
        events.put((key, None))


def chat(prompt: str, run_dir: str | None, hist_o: list | None, hist_q: list | None,
         max_new_tokens: float, temperature: float, top_p: float, request: gr.Request):
    """Stream (original history, quantized history, prompt box) token by token."""
    hist_o, hist_q = plain_history(hist_o), plain_history(hist_q)
    prompt = (prompt or "").strip()
    if not prompt:
        gr.Warning("Type a message first.")
        yield hist_o, hist_q, ""
        return
    if not run_dir:
        gr.Warning("Pick a quantized run (quantize one on the Quantize page).")
        yield hist_o, hist_q, prompt
        return
    settings = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
    stop = cache.SIGNALS.fresh(cache.session_id(request), "chat")
    user = {"role": "user", "content": prompt}
    new_o = hist_o + [user, {"role": "assistant", "content": "…"}]
    new_q = hist_q + [user, {"role": "assistant", "content": "…"}]
    yield new_o, new_q, ""
    models: dict[str, tuple] = {}
    try:
        q_model, q_tok, _ = cache.RUN_MODELS.get(runtable.run_path(run_dir))
        models["q"] = (q_model, q_tok, hist_q)
    except (ValueError, OSError) as e:
        new_q[-1]["content"] = f"❌ cannot load the run: {e}"
    try:
        base = base_model_of(run_dir)
        o_model, o_tok = cache.BASE_MODELS.get(base)
        models["o"] = (o_model, o_tok, hist_o)
    except (ValueError, OSError) as e:
        new_o[-1]["content"] = f"❌ cannot load the original model: {e}"
    events: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=_stream_into, daemon=True,
                                args=(events, k, m, t, h + [user], settings, stop))
               for k, (m, t, h) in models.items()]
    for t in threads:
        t.start()
    panels, latest, running = {"o": new_o, "q": new_q}, {}, set(models)
    try:
        while running:  # one update per token, from whichever side produced it
            key, text = events.get()
            if text is None:
                running.discard(key)
                continue
            latest[key] = text
            panels[key][-1]["content"] = text
            yield new_o, new_q, ""
    finally:
        stop.set()  # also ends generation when the browser goes away
    for k in models:
        if not latest.get(k, "").strip():
            panels[k][-1]["content"] = "(no reply: the model produced only whitespace or an end token)"
    yield new_o, new_q, ""


def stop_chat(request: gr.Request) -> None:
    cache.SIGNALS.set(cache.session_id(request), "chat")


def describe_run(run_dir: str | None) -> str:
    if not run_dir:
        return "No quantized run yet: quantize one on the Quantize page."
    try:
        return f"Left: the original **{base_model_of(run_dir)}** · right: run `{run_dir}`."
    except (ValueError, OSError) as e:
        return f"❌ {e}"


def build() -> Page:
    gr.Markdown(texts.CHAT_HELP)
    picker = run_picker("Quantized run", None, "chat-run")
    run = picker.dropdown
    info = gr.Markdown()
    with gr.Row():
        left = gr.Chatbot(label="Original", height=380, elem_id="chat-original")
        right = gr.Chatbot(label="Quantized", height=380, elem_id="chat-quantized")
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

    inputs = [prompt, run, left, right, max_new, temperature, top_p]
    gr.on([send.click, prompt.submit], cache.gpu(chat), inputs, [left, right, prompt],
          api_name="chat", concurrency_limit=2, concurrency_id="chat")
    stop.click(stop_chat, None, None, queue=False, api_name=False)
    clear.click(lambda: ([], []), None, [left, right], queue=False, api_name=False)
    run.change(describe_run, run, info, api_name=False)
    return picker.page(lambda value: (describe_run(value),), [info])

"""The lvq dashboard: quantize, look inside, compare, and chat (Gradio).

Run ``python app.py`` (or ``make run``) and open http://127.0.0.1:7860. On a Hugging Face Space the
same file is the ``app_file``. Nothing heavy happens at import: models load on first use and are
shared by all sessions.

Environment:
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT  where to listen (default 127.0.0.1:7860; a Space sets
                                           0.0.0.0:7860)
  LVQ_RUNS_DIR       folder of saved runs (default: runs/ in the repository)
  LVQ_EXAMPLES_DIR   folder of report-only example runs shown on first visit (default:
                     assets/examples; written by the benchmark, lvq/bench/examples.py)
  LVQ_SHARED_RUNS    1: every visitor sees every run; 0: a visitor sees the examples, their own
                     runs and runs marked shared (default: 1, or 0 on a Hugging Face Space, i.e.
                     when SPACE_ID is set). See pages/sessions.py.
  LVQ_RUNS_MAX_GB    size budget of the runs folder (default 5; 0 = none): after each saved run
                     the oldest runs not open are deleted until it fits (pages/retention.py)
  LVQ_OPEN_MINUTES   a run opened by any page within this many minutes, or loaded for chat,
                     is "open" and never deleted by the budget (default 30)
  LVQ_EXTRA_MODELS   local Hugging Face model folders added to the model picker, separated by
                     os.pathsep (":" on Linux)
  LVQ_CACHE          lvq's cache of converted bundled models (default ~/.cache/lvq)
  LVQ_MAX_QUEUE      most requests waiting in the queue (default 16)

Heavy jobs go through Gradio's queue: one quantization at a time (others see their queue
position in the status area), two chat generations at a time. Each browser keeps a random
visitor id (localStorage), made on its first visit: its runs are its own across reloads. On a ZeroGPU Space the quantize and chat entry points
are wrapped with ``spaces.GPU`` (``pages.cache.gpu``); elsewhere they run plain, on CUDA when
available.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from pages import bitalloc, channels, chat, compare, lattice, learn, quantize, sessions, texts

ASSETS = Path(__file__).resolve().parent / "assets"
CSS_PATH = ASSETS / "style.css"

PAGES = [
    ("Quantize", quantize),
    ("Bit allocation", bitalloc),
    ("Lattice", lattice),
    ("Channels", channels),
    ("Compare", compare),
    ("Chat", chat),
    ("Learn", learn),
]


def build_app() -> gr.Blocks:
    """The whole dashboard as one Blocks (not launched)."""
    with gr.Blocks(title="lvq — vector quantization lab") as demo:
        client = sessions.client_state()  # the visitor id, kept in the browser
        gr.Markdown(texts.INTRO, elem_id="intro")
        # the id first (a new one on a first visit), then every page's load, which lists runs
        ready = demo.load(sessions.ensure_client_id, client, client, api_name=False, queue=False)
        with gr.Tabs():
            for title, module in PAGES:
                key = title.lower().replace(" ", "-")
                with gr.Tab(title, id=key, elem_id=f"tab-{key}") as tab:
                    page = module.build(client)
                if page.refresh is not None:
                    tab.select(page.refresh, page.refresh_inputs, page.outputs, api_name=False,
                               show_progress="hidden")
                if page.load is not None:
                    ready.then(page.load, page.load_inputs, page.load_outputs, api_name=False)
    return demo


def main() -> None:
    demo = build_app()
    demo.queue(default_concurrency_limit=2, max_size=int(os.environ.get("LVQ_MAX_QUEUE", "16")))
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                css_paths=[CSS_PATH] if CSS_PATH.is_file() else None, show_error=False)


if __name__ == "__main__":
    main()

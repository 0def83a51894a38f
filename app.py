"""The lvq dashboard: quantize, look inside, compare, and chat (Gradio).

Run ``python app.py`` (or ``make run``) and open http://127.0.0.1:7860. On a Hugging Face Space the
same file is the ``app_file``. Nothing heavy happens at import: models load on first use and are
shared by all sessions.

Environment:
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT  where to listen (default 127.0.0.1:7860; a Space sets
                                           0.0.0.0:7860)
  LVQ_RUNS_DIR       folder of saved runs (default: runs/ in the repository)
  LVQ_EXTRA_MODELS   local Hugging Face model folders added to the model picker, separated by
                     os.pathsep (":" on Linux)
  LVQ_CACHE          lvq's cache of converted bundled models (default ~/.cache/lvq)
  LVQ_MAX_QUEUE      most requests waiting in the queue (default 16)

Heavy jobs go through Gradio's queue: one quantization at a time (others see their queue
position), two chat generations at a time. On a ZeroGPU Space the quantize and chat entry points
are wrapped with ``spaces.GPU`` (``pages.cache.gpu``); elsewhere they run plain, on CUDA when
available.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from pages import bitalloc, channels, chat, compare, lattice, learn, quantize, texts

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
        gr.Markdown(texts.INTRO, elem_id="intro")
        with gr.Tabs():
            for title, module in PAGES:
                key = title.lower().replace(" ", "-")
                with gr.Tab(title, id=key, elem_id=f"tab-{key}") as tab:
                    page = module.build()
                if page.refresh is not None:
                    tab.select(page.refresh, page.refresh_inputs, page.outputs, api_name=False,
                               show_progress="hidden")
                if page.load is not None:
                    demo.load(page.load, None, page.load_outputs, api_name=False)
    return demo


def main() -> None:
    demo = build_app()
    demo.queue(default_concurrency_limit=2, max_size=int(os.environ.get("LVQ_MAX_QUEUE", "16")))
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                css_paths=[CSS_PATH] if CSS_PATH.is_file() else None, show_error=False)


if __name__ == "__main__":
    main()

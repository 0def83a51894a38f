"""Streamed chat generation with a model's chat template (used by the CLI and the dashboard)."""
from __future__ import annotations

import threading
from typing import Iterator

import torch

from .memory import release_free_memory


def after_reply() -> None:
    """What a chat does once a reply is complete: Python's garbage and the C heap's free pages
    back to the OS (lvq/memory.py). A reply's prefill (a prompt longer than a few tokens decodes
    each quantized layer for the call) leaves tens of MB of freed temporaries in glibc's heap,
    which would otherwise stay resident between replies."""
    release_free_memory()


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> torch.Tensor:
    """Token ids [1, P] of ``messages`` through the chat template (plain text for base models)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        return ids
    text = "\n".join(m["content"] for m in messages) + "\n"  # base models: plain continuation
    return tokenizer(text, return_tensors="pt")["input_ids"]


def greedy_replies(model, tokenizer, conversations: list[list[dict[str, str]]],
                   max_new_tokens: int = 96, batch_size: int = 16) -> list[str]:
    """The model's greedy next turn for each conversation (through the chat template), generated
    ``batch_size`` conversations at a time with the prompts left-padded; special tokens dropped
    from the text. Used to build fine-tuning data from the original model's own replies
    (lvq/data.py ``model_chat_windows``)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for a in range(0, len(conversations), batch_size):
        prompts = [prompt_ids(tokenizer, c)[0] for c in conversations[a:a + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=pad)
        out += [tokenizer.decode(g[width:], skip_special_tokens=True).strip() for g in gen.cpu()]
    return out


def chat_stream(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 128,
                temperature: float = 0.7, top_p: float = 0.9, stop: threading.Event | None = None,
                seed: int | None = 0) -> Iterator[str]:
    """Yield the growing reply text, one token at a time. ``stop`` ends generation early; once the
    reply is complete the process hands its free heap back (``after_reply``)."""
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return bool(stop is not None and stop.is_set())

    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, messages).to(device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    sample = temperature > 0
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                  do_sample=sample, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop()]),
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    errors: list[BaseException] = []

    def work():
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as e:  # surfaced in the consumer thread below
            errors.append(e)
            streamer.end()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    text = ""
    for piece in streamer:
        if piece:
            text += piece
            yield text
    t.join()
    after_reply()
    if errors:
        raise errors[0]

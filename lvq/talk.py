"""Does it talk? Greedy replies to fixed prompts, scored by the original model.

A perplexity on Wikipedia windows says little about whether a quantized chat model still answers
a question. This measure asks 16 fixed prompts through the chat template, decodes greedily
(``MAX_NEW_TOKENS`` new tokens, stopping at the end-of-turn token), and reports

* ``talk_ppl``: the *original* model's perplexity of those replies, given their prompts (fluent,
  on-topic replies score low; gibberish scores high), and
* ``talk_degenerate``: the share of degenerate replies — empty, or one token making up more than
  half of the reply (the newline loops of a collapsed model).

The same figures for the original model's own replies are the reference.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from .chat import prompt_ids

PROMPTS = (
    "Explain in a few sentences what a lattice is.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Give me three tips for learning a new language.",
    "How does photosynthesis work?",
    "What is the difference between a virus and a bacterium?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "List five fruits that are rich in vitamin C.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a neural network is to a ten-year-old.",
    "How do I make a cup of tea?",
    "What are the main causes of climate change?",
    "Translate 'good morning' into Spanish and French.",
    "Write a friendly email inviting a colleague to lunch.",
    "What is 12 multiplied by 7?",
)
MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Reply:
    prompt: str
    prompt_ids: torch.Tensor  # [P]
    reply_ids: torch.Tensor   # [R], without the end-of-turn token
    text: str


@torch.no_grad()
def greedy_replies(model, tokenizer, prompts=PROMPTS, max_new_tokens: int = MAX_NEW_TOKENS) -> list[Reply]:
    """One greedy reply per prompt (KV cache on; batch 1, as in a chat)."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    out = []
    for p in prompts:
        ids = prompt_ids(tokenizer, [{"role": "user", "content": p}]).to(device)
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or eos)
        reply = gen[0, ids.shape[1]:].cpu()
        if eos is not None and (reply == eos).any():
            reply = reply[: int((reply == eos).nonzero()[0])]
        out.append(Reply(p, ids[0].cpu(), reply, tokenizer.decode(reply, skip_special_tokens=True)))
    return out


def is_degenerate(reply_ids: torch.Tensor) -> bool:
    """Empty, or one token is more than half of the reply."""
    if reply_ids.numel() == 0:
        return True
    return Counter(reply_ids.tolist()).most_common(1)[0][1] > reply_ids.numel() / 2


@torch.no_grad()
def reply_perplexity(model, replies: list[Reply]) -> float:
    """exp(mean NLL) of every reply token under ``model``, each reply given its prompt."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for r in replies:
        if r.reply_ids.numel() == 0:
            continue
        ids = torch.cat([r.prompt_ids, r.reply_ids]).to(device)[None]
        logp = torch.log_softmax(model(ids, use_cache=False).logits.float()[0, :-1], dim=-1)
        P = r.prompt_ids.numel()
        targets = ids[0, P:]
        nll -= float(logp[P - 1:].gather(-1, targets[:, None]).sum())
        count += targets.numel()
    return float(torch.exp(torch.tensor(nll / max(count, 1))))


def talk_metrics(model, reference, tokenizer) -> tuple[dict[str, float], list[Reply]]:
    """({talk_ppl, talk_degenerate, talk_reply_tokens}, replies) of ``model``, scored by
    ``reference`` (the original model; pass the original itself for the reference row)."""
    replies = greedy_replies(model, tokenizer)
    return ({"talk_ppl": reply_perplexity(reference, replies),
             "talk_degenerate": sum(is_degenerate(r.reply_ids) for r in replies) / len(replies),
             "talk_reply_tokens": sum(r.reply_ids.numel() for r in replies) / len(replies)},
            replies)

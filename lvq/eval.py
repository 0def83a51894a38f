"""Perplexity on non-overlapping windows.

Protocol: tokenize the whole text (no special tokens), cut it into consecutive non-overlapping
windows of ``seqlen`` tokens (the incomplete tail is dropped), keep the *last* ``max_windows`` of
them (all if None), and report exp(mean token negative log-likelihood) over every predicted token
(seqlen − 1 per window), computed in the model's dtype (fp32 here). Always quote seqlen, the
number of windows and the text next to the number.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .data import tokenize
from .errors import LvqError


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 512, max_windows: int | None = None,
               batch_size: int = 4, progress: Callable[[int, int, str], None] | None = None) -> float:
    """exp(mean NLL) over non-overlapping windows of ``seqlen`` tokens of ``text``."""
    ids = tokenize(tokenizer, text)
    n = ids.numel() // seqlen
    if n == 0:
        raise LvqError(f"evaluation text too short: {ids.numel()} tokens, one window needs {seqlen}")
    windows = ids[: n * seqlen].view(n, seqlen)
    if max_windows is not None:
        windows = windows[-max_windows:]
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    for i in range(0, windows.shape[0], batch_size):
        batch = windows[i:i + batch_size].to(device)
        logits = model(batch, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               batch[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += batch[:, 1:].numel()
        if progress:
            progress(min(i + batch_size, windows.shape[0]), windows.shape[0], "evaluating perplexity")
    return math.exp(nll / count)


def n_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> int:
    """How many windows :func:`perplexity` would use."""
    n = tokenize(tokenizer, text).numel() // seqlen
    return n if max_windows is None else min(n, max_windows)

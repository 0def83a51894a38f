"""Corpora: the bundled Wikipedia text, local text files, and hub datasets where online.

Every corpus has two disjoint parts, ``calibration`` and ``evaluation``:

* ``wiki-bundled`` — the 106 English Wikipedia articles (redirects dropped) shipped inside the
  ``gensim==4.4.0`` wheel (``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``),
  cleaned with ``gensim.corpora.wikicorpus.filter_wiki`` plus the small markup pass below. Articles
  are kept in file order; article i goes to *evaluation* when ``i % 5 == 4`` (every fifth article,
  21 of 106), the rest to *calibration*. The cleaned text is cached in ``~/.cache/lvq/corpora``.
* a local ``.txt`` file — calibration is the first 80 % of its paragraphs, evaluation the rest.
* ``wikitext2`` — WikiText-2 raw: calibration from train, evaluation = test split joined with "\\n\\n".
* ``c4`` — allenai/c4 English: calibration from the first train shard, evaluation from the first
  validation shard (first 1100 documents).

Calibration windows: ``n`` non-overlapping windows of ``seqlen`` tokens drawn (seeded) from the
tokenized calibration part.
"""
from __future__ import annotations

import bz2
import importlib.util
import re
from pathlib import Path
from typing import Callable

import torch

from .errors import LvqError
from .models import cache_dir

BUNDLED_CORPORA = ("wiki-bundled",)
HUB_CORPORA = ("wikitext2", "c4")
MAX_TEXT_BYTES = 50 * 2**20
_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def list_corpora() -> list[str]:
    return list(BUNDLED_CORPORA) + list(HUB_CORPORA)


# ----------------------------------------------------------------------------------------------
# Text cleaning and reading
# ----------------------------------------------------------------------------------------------
def clean_wiki(markup: str) -> str:
    """Wiki markup -> plain paragraphs (after gensim's filter_wiki has removed links/templates)."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup)
    text = re.sub(r"'{2,}", "", text)                                 # bold / italics
    text = re.sub(r"^\s*(=+)\s*(.*?)\s*\1\s*$", r"\2", text, flags=re.M)  # == Heading ==
    text = re.sub(r"^[\s|!{}\-*#:;]*$", "", text, flags=re.M)           # table / list debris
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def read_text_file(path: str | Path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Read a user's text file as UTF-8 text; refuse binary, empty or oversized files clearly."""
    p = Path(path)
    if not p.is_file():
        raise LvqError(f"text file not found: {path}")
    size = p.stat().st_size
    if size == 0:
        raise LvqError(f"{p.name} is empty")
    if size > max_bytes:
        raise LvqError(f"{p.name} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    raw = p.read_bytes()
    if b"\x00" in raw[:65536]:
        raise LvqError(f"{p.name} looks like a binary file; upload plain UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LvqError(f"{p.name} is not UTF-8 text (byte {e.start}); upload plain UTF-8 text") from None
    if not text.strip():
        raise LvqError(f"{p.name} contains only whitespace")
    return text


def _bundled_wiki_articles() -> list[str]:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise LvqError("the bundled corpus needs the gensim package (pip install gensim==4.4.0)")
    src = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / _WIKI_FILE
    if not src.is_file():
        raise LvqError(f"the gensim wheel does not contain {_WIKI_FILE}; install gensim==4.4.0")
    from gensim.corpora.wikicorpus import extract_pages

    articles = []
    with bz2.open(src, "rb") as fh:
        for title, markup, _pageid in extract_pages(fh):
            if markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            body = clean_wiki(markup)
            if body:
                articles.append(f"{title}\n\n{body}")
    return articles


def _bundled_wiki_split() -> tuple[str, str]:
    cdir = cache_dir() / "corpora" / "wiki-bundled"
    cal_f, ev_f = cdir / "calibration.txt", cdir / "evaluation.txt"
    if not (cal_f.is_file() and ev_f.is_file()):
        arts = _bundled_wiki_articles()
        cal = "\n\n".join(a for i, a in enumerate(arts) if i % 5 != 4)
        ev = "\n\n".join(a for i, a in enumerate(arts) if i % 5 == 4)
        cdir.mkdir(parents=True, exist_ok=True)
        for f, t in ((cal_f, cal), (ev_f, ev)):
            tmp = f.with_suffix(".tmp")
            tmp.write_text(t, encoding="utf-8")
            tmp.replace(f)
    return cal_f.read_text(encoding="utf-8"), ev_f.read_text(encoding="utf-8")


def _file_split(path: str) -> tuple[str, str]:
    text = read_text_file(path)
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paras) < 2:
        cut = int(len(text) * 0.8)
        return text[:cut], text[cut:]
    cut = max(1, int(len(paras) * 0.8))
    return "\n\n".join(paras[:cut]), "\n\n".join(paras[cut:])


def _hub_split(name: str) -> tuple[str, str]:
    try:
        import datasets
    except ImportError:
        raise LvqError("hub corpora need the `datasets` package") from None
    try:
        if name == "wikitext2":
            tr = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
            te = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
            return "\n\n".join(tr["text"]), "\n\n".join(te["text"])
        files = {"train": "en/c4-train.00000-of-01024.json.gz",
                 "validation": "en/c4-validation.00000-of-00008.json.gz"}
        tr = datasets.load_dataset("allenai/c4", data_files=files, split="train")
        va = datasets.load_dataset("allenai/c4", data_files=files, split="validation")
        return "\n\n".join(tr["text"][:20000]), "\n\n".join(va["text"][:1100])
    except Exception as e:  # offline, hub errors: one clear message
        raise LvqError(f"cannot load the hub corpus {name!r} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}); offline, use 'wiki-bundled' or a text file") from None


def corpus_split(corpus: str) -> tuple[str, str]:
    """(calibration text, evaluation text) of a corpus name or a text-file path."""
    if corpus == "wiki-bundled":
        return _bundled_wiki_split()
    if corpus in HUB_CORPORA:
        return _hub_split(corpus)
    if Path(corpus).expanduser().is_file():
        return _file_split(str(Path(corpus).expanduser()))
    raise LvqError(f"unknown corpus {corpus!r}: use one of {', '.join(list_corpora())} or a path to a .txt file")


def calibration_text(corpus: str) -> str:
    return corpus_split(corpus)[0]


def eval_text(corpus: str) -> str:
    return corpus_split(corpus)[1]


# ----------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------
def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids [T] of the whole text (no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def bos_id(tokenizer) -> int | None:
    """The start token a model expects before every sequence (Gemma's tokenizer adds one), or
    None (SmolLM2 and most chat models: windows are plain text)."""
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    return None


def text_windows(tokenizer, text: str, seqlen: int) -> torch.Tensor:
    """Every non-overlapping window of ``text`` -> [n, seqlen] token ids; with a start token
    (``bos_id``) each window is that token followed by seqlen − 1 text tokens."""
    ids = tokenize(tokenizer, text)
    bos = bos_id(tokenizer)
    span = seqlen - (bos is not None)
    n = ids.numel() // span
    windows = ids[: n * span].view(n, span)
    if bos is not None:
        windows = torch.cat([torch.full((n, 1), bos, dtype=windows.dtype), windows], 1)
    return windows


def calibration_windows(tokenizer, text: str, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``n`` non-overlapping windows of ``seqlen`` tokens, chosen with ``seed`` -> [n, seqlen]."""
    windows = text_windows(tokenizer, text, seqlen)
    slots = windows.shape[0]
    if slots < n:
        raise LvqError(
            f"calibration text too short: {n} windows of {seqlen} tokens need {n * seqlen:,} tokens, "
            f"the text has room for {slots} windows; use fewer windows, shorter windows or more text"
        )
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(slots, generator=g)[:n].sort().values
    return windows[pick].clone()


# Requests that turn a paragraph of calibration text into one chat exchange (chat_windows).
CHAT_REQUESTS = ("Continue this text: {head}", "Tell me more about this: {head}",
                 "What comes next? {head}", "Go on from here: {head}")
CHAT_HEAD_WORDS = 24  # words of a paragraph in the request; the rest is the assistant's reply


def chat_windows(tokenizer, text: str, n: int, seqlen: int, seed: int = 0) -> torch.Tensor | None:
    """``n`` windows [n, seqlen] of multi-turn conversations through the tokenizer's chat
    template, built from ``text``'s paragraphs (seeded order): the user asks to continue a
    paragraph's first words (``CHAT_REQUESTS``), the assistant's turn is the rest of it; turns
    are added until the window is full, then it is cut at ``seqlen``. Used by end-to-end
    fine-tuning so that the quantized model also matches the original where a chat reply starts.
    None when the tokenizer has no chat template."""
    if n <= 0 or not getattr(tokenizer, "chat_template", None):
        return None
    paras, order = _chat_paragraphs(text, seed)
    out, k = [], 0
    for _ in range(n):
        messages: list[dict[str, str]] = []
        ids: list[int] = []
        while len(ids) < seqlen:
            words = paras[order[k % len(order)]]
            messages += [_chat_request(words, k),
                         {"role": "assistant", "content": " ".join(words[CHAT_HEAD_WORDS:])}]
            ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
            k += 1
        out.append(torch.tensor(ids[:seqlen], dtype=torch.long))
    return torch.stack(out)


def _chat_paragraphs(text: str, seed: int) -> tuple[list[list[str]], list[int]]:
    """The paragraphs of ``text`` long enough for a chat exchange (as word lists) and their
    seeded order."""
    paras = [p.split() for p in re.split(r"\n\s*\n|\n", text)]
    paras = [w for w in paras if len(w) >= 2 * CHAT_HEAD_WORDS]
    if not paras:
        raise LvqError("the calibration text has no paragraph long enough for chat windows "
                       f"({2 * CHAT_HEAD_WORDS} words or more)")
    return paras, torch.randperm(len(paras), generator=torch.Generator().manual_seed(seed)).tolist()


def _chat_request(words: list[str], k: int) -> dict[str, str]:
    """The user's turn k: request k (of ``CHAT_REQUESTS``, in turn) quoting a paragraph's first
    ``CHAT_HEAD_WORDS`` words."""
    return {"role": "user",
            "content": CHAT_REQUESTS[k % len(CHAT_REQUESTS)].format(head=" ".join(words[:CHAT_HEAD_WORDS]))}


def model_chat_windows(tokenizer, text: str, n: int, seqlen: int,
                       reply: Callable[[list[list[dict[str, str]]]], list[str]],
                       seed: int = 0) -> torch.Tensor | None:
    """Like ``chat_windows``, but the assistant's turns are the model's own: the user's requests
    are the same (a paragraph's first words, ``CHAT_REQUESTS``), and ``reply(conversations)``
    gives the next assistant turn of each unfinished conversation (the original model's greedy
    reply, ``lvq.chat.greedy_replies``), all ``n`` conversations advancing one turn per call.
    Fine-tuned against the original's distribution on these windows, the quantized model learns
    the replies the original actually gives (a data-free distillation in the manner of LLM-QAT's
    self-generated data) rather than Wikipedia's next paragraph. [n, seqlen], or None when the
    tokenizer has no chat template."""
    if n <= 0 or not getattr(tokenizer, "chat_template", None):
        return None
    paras, order = _chat_paragraphs(text, seed)
    convs: list[list[dict[str, str]]] = [[] for _ in range(n)]
    ids: list[list[int]] = [[] for _ in range(n)]
    open_, k = list(range(n)), 0
    while open_:
        for i in open_:
            convs[i].append(_chat_request(paras[order[k % len(order)]], k))
            k += 1
        for i, text_i in zip(open_, reply([convs[i] for i in open_])):
            convs[i].append({"role": "assistant", "content": text_i})
            ids[i] = list(tokenizer.apply_chat_template(convs[i], tokenize=True, return_dict=True)["input_ids"])
        open_ = [i for i in open_ if len(ids[i]) < seqlen]
    return torch.stack([torch.tensor(x[:seqlen], dtype=torch.long) for x in ids])

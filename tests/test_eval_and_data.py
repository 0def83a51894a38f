import math

import pytest
import torch
import torch.nn.functional as F

import lvq
from lvq.data import calibration_windows, read_text_file, tokenize


def test_perplexity_matches_a_direct_computation(tiny_model_dir, tiny_corpus):
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    text = lvq.eval_text(str(tiny_corpus))
    ids = tokenize(tok, text)
    n = ids.numel() // 32
    windows = ids[: n * 32].view(n, 32)[-3:]
    with torch.no_grad():
        logits = model(windows).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert lvq.perplexity(model, tok, text, seqlen=32, max_windows=3, batch_size=2) == pytest.approx(
        math.exp(float(nll)), rel=1e-5)


def test_eval_text_too_short(tiny_model_dir):
    model, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    with pytest.raises(lvq.LvqError, match="too short"):
        lvq.perplexity(model, tok, "a few words", seqlen=64)


def test_calibration_windows_are_disjoint_and_seeded(tiny_model_dir, tiny_corpus):
    _, tok = lvq.load_model(str(tiny_model_dir), device="cpu")
    text = lvq.calibration_text(str(tiny_corpus))
    a = calibration_windows(tok, text, 4, 16, seed=1)
    b = calibration_windows(tok, text, 4, 16, seed=1)
    assert a.shape == (4, 16) and torch.equal(a, b)
    ids = tokenize(tok, text)
    starts = [next(s for s in range(0, ids.numel() - 15, 16) if torch.equal(ids[s:s + 16], w)) for w in a]
    assert len(set(starts)) == 4


def test_file_corpus_split_is_disjoint(tiny_corpus, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(f"paragraph {i} " * 5 for i in range(10)))
    cal, ev = lvq.corpus_split(str(f))
    assert "paragraph 7" in cal and "paragraph 8" in ev
    assert "paragraph 8" not in cal


@pytest.mark.parametrize("content, match", [
    (b"", "empty"), (b"   \n ", "whitespace"), (b"\x00\x01\x02binary", "binary"), (b"\xff\xfe\xfa", "UTF-8"),
])
def test_bad_text_files(tmp_path, content, match):
    f = tmp_path / "upload.txt"
    f.write_bytes(content)
    with pytest.raises(lvq.LvqError, match=match):
        read_text_file(f)


def test_oversized_text_file(tmp_path):
    f = tmp_path / "big.txt"
    f.write_text("x" * 2048)
    with pytest.raises(lvq.LvqError, match="limit"):
        read_text_file(f, max_bytes=1024)


def test_unknown_corpus():
    with pytest.raises(lvq.LvqError, match="unknown corpus"):
        lvq.corpus_split("no-such-corpus")


def test_bundled_corpus_split_is_disjoint():
    cal, ev = lvq.corpus_split("wiki-bundled")
    assert len(cal) > 1_000_000 and len(ev) > 200_000
    cal_titles = {p.split("\n", 1)[0] for p in cal.split("\n\n") if p}
    assert ev.startswith("Alabama") and "Alabama" not in cal_titles
    assert "'''" not in cal and "[[" not in cal  # wiki markup removed


def test_chat_windows_are_conversations_cut_to_length(tiny_model_dir):
    """Chat windows follow the tokenizer's chat template; none without a template; seeded."""
    from transformers import AutoTokenizer

    from lvq.data import chat_windows
    from lvq.pipeline import _with_chat

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = "\n\n".join(" ".join(f"w{i}_{j}" for j in range(60)) for i in range(10))
    if not getattr(tok, "chat_template", None):
        assert chat_windows(tok, text, 2, 64) is None
        tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                             "{% if add_generation_prompt %}<assistant>{% endif %}")
    W = chat_windows(tok, text, 3, 64, seed=1)
    assert W.shape == (3, 64) and torch.equal(W, chat_windows(tok, text, 3, 64, seed=1))
    assert chat_windows(tok, text, 0, 64) is None
    with pytest.raises(lvq.LvqError, match="paragraph long enough"):
        chat_windows(tok, "too short", 1, 64)
    plain = torch.zeros(4, 64, dtype=torch.long)
    mixed = _with_chat(plain, W)
    assert mixed.shape == (7, 64) and torch.equal(mixed[-2:], torch.stack([W[2], plain[3]]))


def test_greedy_replies_in_a_batch_are_the_replies_one_at_a_time(tiny_model_dir):
    """Left-padded batch generation gives each conversation the reply it gets alone."""
    from lvq.chat import greedy_replies

    model, tok = lvq.load_model(str(tiny_model_dir))
    convs = [[{"role": "user", "content": "The lattice is"}],
             [{"role": "user", "content": "A generator matrix maps integer coordinates to"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "points"},
              {"role": "user", "content": "rounding a vector"}]]
    together = greedy_replies(model, tok, convs, max_new_tokens=6)
    alone = [greedy_replies(model, tok, [c], max_new_tokens=6)[0] for c in convs]
    assert together == alone and all(isinstance(r, str) for r in together)


def test_model_chat_windows_hold_the_models_own_replies(tiny_model_dir):
    """model_chat_windows asks the same requests as chat_windows, one turn of every open
    conversation per reply call, and the windows hold the replies it was given, cut to length."""
    from lvq.data import CHAT_HEAD_WORDS, model_chat_windows

    tok = lvq.load_model(str(tiny_model_dir))[1]
    text = "\n\n".join(" ".join(f"w{i}_{j}" for j in range(60)) for i in range(10))
    calls = []

    def reply(convs):
        calls.append(len(convs))
        assert all(c[-1]["role"] == "user" and f"_{CHAT_HEAD_WORDS - 1} " in c[-1]["content"] + " " for c in convs)
        return [f"reply {len(calls)} to {len(c) // 2}" for c in convs]

    W = model_chat_windows(tok, text, 3, 240, reply, seed=1)  # one exchange: ~180 tokens here
    assert W.shape == (3, 240)
    assert calls == [3, 3] and all("assistant\nreply 1 to 0<|im_end|>" in tok.decode(w) for w in W)
    assert model_chat_windows(tok, text, 0, 240, reply) is None


def test_a_chat_reply_hands_the_free_heap_back(tiny_model_dir, monkeypatch):
    """lvq.chat_stream streams a reply, then calls after_reply once (memory back to the OS), also
    when the reply is stopped early."""
    import threading

    import lvq.chat

    calls = []
    monkeypatch.setattr(lvq.chat, "release_free_memory", lambda: calls.append(1))
    model, tok = lvq.load_model(str(tiny_model_dir))
    messages = [{"role": "user", "content": "hello"}]
    texts = list(lvq.chat_stream(model, tok, messages, max_new_tokens=4, temperature=0))
    assert texts and calls == [1]
    stop = threading.Event()
    stop.set()
    list(lvq.chat_stream(model, tok, messages, max_new_tokens=4, temperature=0, stop=stop))
    assert calls == [1, 1]

"""End to end through gradio_client against a launched dashboard (tiny random Llama model)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.dashboard_server import dashboard

UPLOAD = "upload a .txt file"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir, tiny_corpus):
    root = tmp_path_factory.mktemp("e2e")
    runs = root / "runs"
    with dashboard(runs, [tiny_model_dir]) as url:
        yield Client(url, verbose=False), runs, tiny_model_dir, tiny_corpus


def quantize(client, model, corpus, config, upload=None, corpus_choice=UPLOAD):
    return client.predict(model_name=str(model), config=json.dumps(config), corpus=corpus_choice,
                          upload=handle_file(str(upload or corpus)) if (upload or corpus) else None,
                          n_windows=4, seqlen=64, eval_windows=2, api_name="/quantize")


def test_quantize_appears_in_run_table_and_chat_streams(app):
    client, runs, model, corpus = app
    status, table = quantize(client, model, corpus, {"method": "rtn", "bits": 3, "group_size": 32})
    assert "Run saved" in status, status
    assert "ppl quantized" in status
    rows = table["data"]
    assert len(rows) == 1 and rows[0][2] == "rtn"
    run_dir = runs / rows[0][0]
    assert (run_dir / "run.json").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["metrics"]["ppl"] > 1 and info["metrics"]["ppl_fp"] > 1

    # the run is listed on the Compare page's table too
    _fig, cmp_table, _csv = client.predict(sources=["my runs"], x="bits_per_weight", log_y=True,
                                           api_name="/compare")
    assert [r[1] for r in cmp_table["data"]] == [run_dir.name]

    job = client.submit(prompt="Tell me about lattices", run_dir=str(run_dir), hist_o=[], hist_q=[],
                        max_new_tokens=32, temperature=1.0, top_p=1.0, api_name="/chat")
    # (a random model's greedy reply is blank lines: sample, seeded, instead)
    final_o, final_q, _, stats_o, stats_q = job.result()
    replies = [_text(q[-1]["content"]) for _o, q, *_ in job.outputs() if q and q[-1]["role"] == "assistant"]
    assert "tokens/s" in stats_q and "packed: decode-free CPU kernels" in stats_q and "MB" in stats_q
    assert "tokens/s" in stats_o and "float32 dense weights" in stats_o
    assert _text(final_q[-2]["content"]) == "Tell me about lattices"
    assert _text(final_q[-1]["content"]).strip() not in ("", "…", "(no reply)")
    assert _text(final_o[-1]["content"]).strip() not in ("", "…", "(no reply)")
    growing = [r for r in replies if r not in ("…",)]
    distinct = list(dict.fromkeys(growing))
    assert len(distinct) >= 2, f"expected a streamed reply, got {replies}"
    assert all(b.startswith(a) for a, b in zip(distinct, distinct[1:])), distinct


def test_bad_inputs_give_messages_and_the_app_keeps_working(app, tmp_path):
    client, runs, model, corpus = app
    bad_bits, _ = quantize(client, model, corpus, {"method": "rtn", "bits": 12, "group_size": 32})
    assert bad_bits.startswith("❌") and "bits" in bad_bits
    unknown, _ = quantize(client, "no-such-model", corpus, {"method": "rtn", "bits": 3, "group_size": 32})
    assert unknown.startswith("❌") and "unknown model" in unknown
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"\x00\x01\x02binary" * 100)
    msg, _ = quantize(client, model, corpus, {"method": "rtn", "bits": 3, "group_size": 32}, upload=binary)
    assert msg.startswith("❌") and "binary" in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    msg, _ = quantize(client, model, corpus, {"method": "rtn", "bits": 3, "group_size": 32}, upload=empty)
    assert msg.startswith("❌") and "empty" in msg
    msg, _ = client.predict(model_name=str(model), config="{not json", corpus=UPLOAD,
                            upload=handle_file(str(corpus)), n_windows=4, seqlen=64, eval_windows=0,
                            api_name="/quantize")
    assert msg.startswith("❌") and "JSON" in msg
    # still alive: a page endpoint answers, and nothing half-written was left behind
    fig, table, _ = client.predict(sources=["my runs"], x="model_mb", log_y=False, api_name="/compare")
    assert all(not p.name.startswith(".") or p.name == ".exports" for p in runs.iterdir())
    outside = client.predict(run_dir=str(Path(model)), api_name="/bitalloc")
    assert "not a saved run" in outside[-1]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(c) for c in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


@pytest.fixture(scope="module")
def private_app(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """A dashboard as on a Space: every visitor sees only their own runs (LVQ_SHARED_RUNS=0)."""
    root = tmp_path_factory.mktemp("e2e-private")
    with dashboard(root / "runs", [tiny_model_dir], env={"LVQ_SHARED_RUNS": "0"}) as url:
        yield url, root / "runs", tiny_model_dir, tiny_corpus


def test_api_sessions_queue_and_keep_their_runs_apart(private_app):
    """Two API clients (two sessions): the second's run waits in the queue with a position; each
    sees only its own run; the other's cannot be opened, chatted with or deleted."""
    from gradio_client.utils import Status

    url, runs, model, corpus = private_app
    one, two = Client(url, verbose=False), Client(url, verbose=False)
    args = dict(model_name=str(model), corpus=UPLOAD, upload=handle_file(str(corpus)), seqlen=64,
                eval_windows=2, api_name="/quantize")
    slow = {"method": "glvq", "bits": 2.0, "group_size": 32, "dim": 8, "steps": 30}
    job1 = one.submit(config=json.dumps(slow), n_windows=16, **args)
    while job1.status().code not in (Status.PROCESSING, Status.PROGRESS, Status.ITERATING) and not job1.done():
        time.sleep(0.05)
    job2 = two.submit(config=json.dumps({"method": "rtn", "bits": 3, "group_size": 32}), n_windows=4, **args)
    ranks, seen = set(), []
    while not job1.done():
        st = job2.status()
        seen.append((st.code, st.rank))
        if st.code == Status.IN_QUEUE and st.rank is not None:
            ranks.add(st.rank)
    assert ranks, f"the second run never waited in the queue: {seen[:3]} … {seen[-3:]}"
    (status1, table1), (status2, table2) = job1.result(), job2.result()
    assert "Run saved" in status1 and "Run saved" in status2
    run1, run2 = (t["data"][0][0] for t in (table1, table2))
    assert [r[0] for r in table1["data"]] == [run1] and [r[0] for r in table2["data"]] == [run2]
    assert table1["data"][0][-1] == "yours"
    other = str(runs / run1)
    assert "not a saved run" in two.predict(run_dir=other, api_name="/bitalloc")[-1]
    _o, q, *_ = two.predict(prompt="hi", run_dir=other, hist_o=[], hist_q=[], max_new_tokens=8,
                            temperature=0.0, top_p=1.0, api_name="/chat")
    assert "not a saved run" in _text(q[-1]["content"])
    msg, *_ = two.predict(run_dir=other, api_name="/delete_run")
    assert msg.startswith("❌") and (runs / run1).is_dir()
    msg, *_ = one.predict(run_dir=other, api_name="/delete_run")
    assert run1 in msg and not (runs / run1).exists()


def test_quantize_with_8bit_embeddings_from_the_dashboard(app):
    client, runs, model, corpus = app
    status, table = client.predict(model_name=str(model), config=json.dumps({"method": "rtn", "bits": 3, "group_size": 32}),
                                   corpus=UPLOAD, upload=handle_file(str(corpus)), n_windows=4, seqlen=64,
                                   eval_windows=2, embed_bits=8, api_name="/quantize")
    assert "Run saved" in status, status
    name = status.split("Run saved:")[1].split()[0].strip("`").rsplit("/", 1)[-1]
    info = json.loads((runs / name / "run.json").read_text())
    assert info["metrics"]["embed_bits"] == 8

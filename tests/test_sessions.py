"""Runs on a shared dashboard: who sees which run, ownership, delete, the size budget, and the
report-only examples (writer, and the pages drawing from one)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pages import bitalloc, cache, channels, chat, lattice, retention, runtable, sessions

A, B = "a" * 32, "b" * 32  # two visitors' browser ids


class Request:  # what the pages read of a gr.Request
    def __init__(self, session_hash: str):
        self.session_hash = session_hash


@pytest.fixture(autouse=True)
def _folders(tmp_path, monkeypatch):
    monkeypatch.setenv("LVQ_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LVQ_EXAMPLES_DIR", str(tmp_path / "examples"))
    monkeypatch.setenv("LVQ_SHARED_RUNS", "0")
    monkeypatch.delenv("LVQ_RUNS_MAX_GB", raising=False)


def fake_run(root: Path, name: str, created: str = "2026-01-01T00:00:00", owner: str | None = None,
             shared: bool = False, size: int = 1000, example: bool = False, method: str = "rtn") -> Path:
    """A folder that lists as a run: run.json and a weight file of ``size`` bytes."""
    d = root / name
    (d / "report").mkdir(parents=True)
    info = {"format": "lvq-run", "version": 1, "created": created, "model": {"source": "m"},
            "method": {"method": method}, "metrics": {}, "layers": {}}
    if example:
        info["example"] = True
    (d / "run.json").write_text(json.dumps(info))
    (d / "report" / "layers.csv").write_text("layer,block,rel_error\n0.self_attn.q_proj,0,0.1\n")
    if not example:
        (d / "model.safetensors").write_bytes(b"\0" * size)
    if owner is not None:
        sessions.write_owner(d, sessions.viewer(owner), shared)
    return d


@pytest.fixture
def runs():
    root, ex = runtable.runs_root(), runtable.examples_root()
    return {"a": fake_run(root, "a-private", "2026-01-01T00:00:01", A),
            "a_shared": fake_run(root, "a-shared", "2026-01-01T00:00:02", A, shared=True),
            "b": fake_run(root, "b-private", "2026-01-01T00:00:03", B),
            "local": fake_run(root, "local-cli", "2026-01-01T00:00:04"),
            "example": fake_run(ex, "example-glvq", example=True)}


def names(df: pd.DataFrame) -> set[str]:
    return set(df["run"])


def test_a_visitor_sees_examples_own_and_shared_runs_only(runs, monkeypatch):
    a, b, anon = sessions.viewer(A), sessions.viewer(B), sessions.viewer()
    assert names(runtable.list_runs(a, examples=True)) == {"a-private", "a-shared", "example-glvq"}
    assert names(runtable.list_runs(b, examples=True)) == {"b-private", "a-shared", "example-glvq"}
    assert names(runtable.list_runs(anon)) == {"a-shared"}
    labels = [label for label, _ in runtable.run_choices(b)]
    assert labels[0].startswith("b-private") and "shared" in labels[1] and runtable.EXAMPLE_TAG in labels[2]
    # enforced where paths are resolved, not only in the lists: same message as a missing run
    for who, path in ((b, runs["a"]), (a, runs["b"]), (a, runs["local"]), (anon, runs["a"])):
        with pytest.raises(ValueError, match="not a saved run"):
            runtable.run_path(str(path), who)
        with pytest.raises(ValueError, match="not a saved run"):
            runtable.load_report(str(path), who)
    assert runtable.run_path(str(runs["a_shared"]), b) == str(runs["a_shared"].resolve())
    assert runtable.run_path(str(runs["example"]), anon)
    with pytest.raises(ValueError, match="report-only example: quantize to chat with it"):
        runtable.run_path(str(runs["example"]), a, weights=True)
    # the chat page refuses another visitor's run and an example
    assert "not a saved run" in chat.describe_run(str(runs["a"]), B)
    assert "report-only example" in chat.describe_run(str(runs["example"]), A)
    monkeypatch.setenv("LVQ_SHARED_RUNS", "1")
    assert len(runtable.list_runs(sessions.viewer(B))) == 4


def test_examples_of_the_preferred_method_come_first():
    ex = runtable.examples_root()
    rtn, glvq = fake_run(ex, "a-rtn", example=True), fake_run(ex, "b-glvq", example=True, method="glvq")
    who = sessions.viewer(A)
    assert [v for _, v in runtable.run_choices(who, prefer=("glvq",))] == [str(glvq), str(rtn)]
    assert [v for _, v in runtable.run_choices(who)][0] == str(rtn)  # else by name
    mine = fake_run(runtable.runs_root(), "mine", owner=A)
    assert [v for _, v in runtable.run_choices(who, prefer=("glvq",))][0] == str(mine)  # own runs first


def test_shared_mode_default_and_visitor_ids(monkeypatch):
    monkeypatch.delenv("LVQ_SHARED_RUNS")
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert sessions.shared_runs()                      # a local `make run`: one person
    monkeypatch.setenv("SPACE_ID", "user/lvq")
    assert not sessions.shared_runs()                  # a Space: strangers
    monkeypatch.setenv("LVQ_SHARED_RUNS", "1")
    assert sessions.shared_runs()
    new = sessions.ensure_client_id(None)
    assert sessions.valid_id(new) and sessions.ensure_client_id(new) == new
    assert sessions.ensure_client_id("session:x") != "session:x"
    # an id that is not ours falls back to the request's session; no request: anonymous
    assert sessions.viewer("session:x", Request("s1")) == sessions.viewer(None, Request("s1"))
    assert sessions.viewer(A, Request("s1")) == sessions.viewer(A, Request("s2"))  # a reload
    assert sessions.viewer(A).owner != sessions.viewer(B).owner
    assert sessions.viewer(None, None).owner is None


def test_owner_file_holds_a_hash_not_the_id(runs):
    text = (runs["a"] / sessions.OWNER_FILE).read_text()
    assert A not in text and json.loads(text)["owner"] == sessions.viewer(A).owner
    with pytest.raises(ValueError, match="only the visitor"):
        sessions.set_shared(runs["a"], sessions.viewer(B), True)
    sessions.set_shared(runs["a"], sessions.viewer(A), True)
    assert "a-private" in names(runtable.list_runs(sessions.viewer(B)))


def test_delete_own_runs_only(runs, monkeypatch):
    a, b = sessions.viewer(A), sessions.viewer(B)
    with pytest.raises(ValueError, match="not a saved run"):
        runtable.delete_run(str(runs["a"]), b)          # unseen
    with pytest.raises(ValueError, match="only the visitor"):
        runtable.delete_run(str(runs["a_shared"]), b)   # seen, not owned
    with pytest.raises(ValueError, match="examples cannot be deleted"):
        runtable.delete_run(str(runs["example"]), a)
    assert runtable.delete_run(str(runs["a"]), a) == "a-private"
    assert not runs["a"].exists() and not any(p.name.startswith(".a-private") for p in runs["a"].parent.iterdir())
    monkeypatch.setenv("LVQ_SHARED_RUNS", "1")  # one's own machine: the CLI's runs too, not others'
    everyone = sessions.viewer(A)
    assert runtable.delete_run(str(runs["local"]), everyone) == "local-cli"
    with pytest.raises(ValueError, match="only the visitor"):
        runtable.delete_run(str(runs["b"]), everyone)


def test_retention_deletes_oldest_first_never_open_runs_or_examples(monkeypatch):
    root = runtable.runs_root()
    made = [fake_run(root, f"r{i}", f"2026-01-0{i + 1}T00:00:00", A) for i in range(5)]
    example = fake_run(runtable.examples_root(), "ex", example=True)
    size = retention.folder_bytes(made[0])
    monkeypatch.setenv("LVQ_RUNS_MAX_GB", str(2.5 * size / 1e9))  # room for two runs
    cache.OPENED.touch(str(made[0]))                  # opened by a page a moment ago
    cache.RUN_MODELS.put(str(made[1]), object())      # loaded for chat
    try:
        assert retention.warning(0.0)                 # over budget already: the Quantize page says so
        deleted = retention.enforce(keep={str(made[4])})
        assert deleted == ["r2", "r3"]                # oldest first, skipping the open ones and the new one
        assert [p.exists() for p in made] == [True, True, False, False, True] and example.exists()
        monkeypatch.setenv("LVQ_OPEN_MINUTES", "0")   # r0 no longer counts as open
        assert retention.enforce(keep={str(made[4])}) == ["r0"]
        monkeypatch.setenv("LVQ_RUNS_MAX_GB", "5")
        assert retention.enforce() == [] and retention.warning(1.0) == ""
    finally:
        cache.RUN_MODELS.drop(str(made[1]))
        cache.OPENED.forget(str(made[0]))


def test_cancel_and_stop_signals_are_per_session():
    mine = cache.SIGNALS.fresh("session-a", "quantize")
    assert not cache.SIGNALS.set("session-b", "quantize") and not mine.is_set()
    assert cache.SIGNALS.set("session-a", "quantize") and mine.is_set()


# ----------------------------------------------------------------------------------------------
# Examples: written from a tiny saved run, drawn by the pages without weights
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_glvq_run(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """A rotated GLVQ (E8P) run of the tiny model, and the tiny original model."""
    import lvq

    model, tok = lvq.load_model(str(tiny_model_dir))
    original, _ = lvq.load_model(str(tiny_model_dir))
    cfg = lvq.GLVQConfig.preset("fast").replace(group_size=32)
    result = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=4,
                                                                       seqlen=64))
    run = tmp_path_factory.mktemp("tiny-runs") / "tiny-glvq"
    lvq.save_run(result, run, metrics={"ppl": 300.0, "ppl_fp": 290.0})
    return run, original


def test_write_example_keeps_the_report_without_weights(tiny_glvq_run, tmp_path):
    import lvq
    from lvq.bench import examples

    run, original = tiny_glvq_run
    dest = examples.write_example(run, runtable.examples_root() / "glvq-2bit", original_model=original)
    info = json.loads((dest / "run.json").read_text())
    src = json.loads((run / "run.json").read_text())
    assert info["example"] is True and "files" not in info
    assert {k: v for k, v in info.items() if not k.startswith("example")} == {k: v for k, v in src.items() if k != "files"}
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == \
        ["groups.csv", "lattice_view.csv", "layers.csv", "run.json"]
    assert examples.folder_bytes(dest) < 1_000_000
    assert info["example_layers"] == ["0.self_attn.q_proj", "1.mlp.down_proj", "1.self_attn.o_proj"]
    view = pd.read_csv(dest / "report" / "lattice_view.csv")
    assert set(view["part"]) == {"G", "Z", "Y", "before"}
    # the table reads back as what the page computes from the weights (4 digits)
    qw = lvq.load_layer(run, "1.mlp.down_proj")
    W = original.get_submodule("model.layers.1.mlp.down_proj").weight
    for g in examples.view_groups(view, "1.mlp.down_proj"):
        direct, stored = examples.group_data(qw, g, W), examples.view_group(view, "1.mlp.down_proj", g)
        assert (direct["Z"] == stored["Z"]).all() and abs(direct["Y"] - stored["Y"]).max() < 1e-3
        assert stored["rotated"] and stored["lattice"] == "E8P" and stored["n_groups"] == direct["n_groups"]
    with pytest.raises(lvq.LvqError):
        examples.write_example(dest, tmp_path / "again")  # an example is no source
    # lvq reads it as a run (report only)
    assert lvq.read_run_info(dest)["example"] and len(lvq.load_report(dest).layers)
    assert lvq.list_runs(dest.parent)["file_mb"].isna().all()


def test_pages_draw_an_example(tiny_glvq_run):
    from lvq.bench import examples

    run, original = tiny_glvq_run
    dest = examples.write_example(run, runtable.examples_root() / "glvq-2bit", original_model=original)
    path = str(dest)
    assert [v for _, v in runtable.run_choices(sessions.viewer(A), ("glvq",))] == [path]
    assert [v for _, v in runtable.run_choices(sessions.viewer(A), examples=False)] == []
    layers = lattice.layers_of(path, sessions.viewer(A))
    assert layers == ["0.self_attn.q_proj", "1.mlp.down_proj", "1.self_attn.o_proj"]
    out = lattice.group_figures(path, layers[1], 1, 0, 1, A)
    assert "Example — report only: quantize to chat with it" in out[-1] and "Rotated layer" in out[-1]
    assert [t.name for t in out[4].data] == ["before rotation", "after rotation"]
    assert "decoded points" in [t.name for t in out[0].data]
    assert "keeps groups" in out[-1]
    update, heat, _drill, *_rest, note = bitalloc.figures_for_run(path, bitalloc.METRICS[0], A)
    assert "Example — report only" in note and "flat" in note and heat.data[0].type == "heatmap"
    assert update["value"] in layers or update["value"] is not None
    assert "report-only example" in chat.describe_run(path, A)
    assert channels.select_run(None, A)[-1].startswith("No CRVQ")


def test_zerogpu_durations_follow_the_job(monkeypatch, tiny_model_dir):
    """On a Space, spaces.GPU gets a duration function of the entry point's own arguments."""
    import json
    import sys
    import types

    import lvq

    fast = json.dumps(lvq.GLVQConfig.preset("fast").to_dict())
    quality = json.dumps(lvq.GLVQConfig.preset("quality").to_dict())
    model = str(tiny_model_dir)
    small = cache.quantize_seconds(model, fast, "wiki-bundled", None, 4, 64, 2)
    assert cache.GPU_MIN_S <= small <= cache.GPU_MAX_S
    assert cache.quantize_seconds(model, "{not json", "wiki-bundled", None, 4, 64, 2) == cache.GPU_MAX_S
    assert cache.quantize_seconds(model, quality, "wiki-bundled", None, 4, 64, 2) >= small
    assert cache.chat_seconds("hi", None, [], [], 512) > cache.chat_seconds("hi", None, [], [], 8)

    asked = {}

    def fake_gpu(duration):
        def wrap(fn):
            def call(*args, **kwargs):
                asked["s"] = duration(*args, **kwargs) if callable(duration) else duration
                return fn(*args, **kwargs)
            return call
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=fake_gpu))
    wrapped = cache.gpu(lambda *a, **k: "ran", cache.chat_seconds)
    assert wrapped("hi", None, [], [], 10_000) == "ran"
    assert asked["s"] == cache.GPU_MAX_S  # capped

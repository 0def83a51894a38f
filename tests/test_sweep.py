"""Sweeps (lvq/sweep.py): grid planning, resume, the in-process executor, the CLI, the Compare
page's sweep lines, and (marker ``ray``) the same sweep as Ray tasks on a local 2-CPU instance
with a failing job and a dying worker."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import pandas as pd
import pytest

from lvq import CalibConfig, RTNConfig, list_runs
from lvq.cli import main
from lvq.errors import LvqError
from lvq.jobs import EvalConfig
from lvq.sweep import InProcessExecutor, RayExecutor, existing_run, plan_sweep, run_sweep

HAS_RAY = importlib.util.find_spec("ray") is not None
NAMES = ["rtn-b2-group_size32", "rtn-b2-group_size64", "rtn-b3-group_size32", "rtn-b3-group_size64"]


def _rtn(bits, point):
    return RTNConfig(bits=int(bits), **point)


def _plan(root, model="m", corpus="wiki-bundled", bits=(2, 3), group_sizes=(32, 64), name="tiny"):
    """The 4-point grid the CLI flags below also give (tiny calibration and evaluation)."""
    return plan_sweep("rtn", _rtn, model=str(model), root=root, bits=bits,
                      settings={"group_size": list(group_sizes)},
                      calib=CalibConfig(corpus=str(corpus), n_windows=2, seqlen=64),
                      eval=EvalConfig(seqlen=64, windows=2), name=name)


def _cli_args(model, corpus, out, *extra):
    return ["sweep", "--model", str(model), "--method", "rtn", "--bits", "2", "3",
            "--set", "group_size=32,64", "--corpus", str(corpus), "--calib-windows", "2",
            "--calib-seqlen", "64", "--seqlen", "64", "--eval-windows", "2", "--out", str(out),
            "--sweep-name", "tiny", "--json", *extra]


def _break_corpus(job, tmp_path):
    """The same job reading a corpus file that does not exist: it fails when it runs."""
    spec = job.spec
    calib = dataclasses.replace(spec.calib, corpus=str(tmp_path / "missing.txt"))
    return dataclasses.replace(job, spec=dataclasses.replace(spec, calib=calib))


# ----------------------------------------------------------------------------------------------
# Planning (no model)
# ----------------------------------------------------------------------------------------------
def test_plan_expands_the_grid_with_the_cli_names_and_sweep_tags(tmp_path):
    jobs = _plan(tmp_path)
    assert [j.name for j in jobs] == NAMES
    assert [j.spec.out_dir for j in jobs] == [str(tmp_path / n) for n in NAMES]
    assert jobs[1].swept == (("bits", 2), ("group_size", 64))
    assert jobs[1].spec.method == RTNConfig(bits=2, group_size=64)
    assert jobs[3].spec.sweep == {"name": "tiny", "swept": {"bits": 3, "group_size": 64}}
    assert [j.spec.eval.reference for j in jobs] == [True, False, False, False]  # fp ppl once
    only_settings = plan_sweep("rtn", lambda b, p: RTNConfig(**p), model="x/my-model", root=tmp_path,
                               settings={"bits": [2, 3]})
    assert [j.name for j in only_settings] == ["rtn-bits2", "rtn-bits3"]
    assert only_settings[0].spec.sweep["name"] == "my-model-rtn-by-bits"


def test_plan_refuses_bad_points_and_duplicate_names(tmp_path):
    with pytest.raises(LvqError, match="grid point rtn-b9-group_size32: bits must be in"):
        _plan(tmp_path, bits=(2, 9))
    with pytest.raises(LvqError, match="share the run name 'rtn-b2-group_size32'"):
        _plan(tmp_path, bits=(2, 2.0))


def test_in_process_executor_reports_a_failure_and_goes_on():
    events = list(InProcessExecutor().map(lambda x: 10 // x, [5, 0, 2]))
    assert [(e.index, e.started) for e in events] == [(0, True), (0, False), (1, True), (1, False),
                                                      (2, True), (2, False)]
    assert [e.value for e in events if not e.started] == [2, None, 5]
    assert events[3].error == "ZeroDivisionError: integer division or modulo by zero"


# ----------------------------------------------------------------------------------------------
# In-process sweeps on the tiny model: failure, resume, what is already there, the CLI
# ----------------------------------------------------------------------------------------------
def test_in_process_sweep_fails_one_job_then_resumes_only_that_one(tiny_model_dir, tiny_corpus, tmp_path):
    root = tmp_path / "sweep"
    jobs = _plan(root, tiny_model_dir, tiny_corpus, bits=(2,))
    updates = []
    first = run_sweep([jobs[0], _break_corpus(jobs[1], tmp_path)], InProcessExecutor(),
                      lambda t, o: updates.append((t, o)))
    assert [o.status for o in first] == ["done", "failed"]
    assert "text file not found" in first[1].error or "unknown corpus" in first[1].error
    assert first[1].config == RTNConfig(bits=2, group_size=64).to_dict()
    assert first[0].metrics["bits_per_weight"] == pytest.approx(3.0) and first[0].metrics["ppl"] > 1
    last = updates[-1][0]
    assert (last.done, last.failed, last.running, last.total) == (1, 1, 0, 2)
    assert max(t.running for t, _ in updates) == 1
    assert existing_run(jobs[0]) == ("same", "") and existing_run(jobs[1]) == ("none", "")

    again = run_sweep(jobs, InProcessExecutor())
    assert [o.status for o in again] == ["skipped", "done"]
    assert again[0].metrics["ppl"] == pytest.approx(first[0].metrics["ppl"])
    table = list_runs(root)
    assert list(table["run"]) == NAMES[:2] and set(table["sweep"]) == {"tiny"}
    assert json.loads(table["swept"].iloc[1]) == {"bits": 2, "group_size": 64}

    other = plan_sweep("rtn", lambda b, p: RTNConfig(bits=4, group_size=32), model=str(tiny_model_dir),
                       root=root, bits=(2,), settings={"group_size": [32]})[0]
    assert existing_run(other) == ("different", "another method config")
    clash = run_sweep([other], InProcessExecutor())[0]  # another job's finished run is left alone
    assert clash.status == "failed" and "already holds something else" in clash.error


def test_cli_sweep_json_summary_resume_and_exit_status(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "runs"
    (out / NAMES[3]).mkdir(parents=True)  # a folder that is not a run: that job fails
    assert main(_cli_args(tiny_model_dir, tiny_corpus, out)) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["status"]) for r in rows] == [(n, "done") for n in NAMES[:3]] + [(NAMES[3], "failed")]
    assert rows[3]["config"] == RTNConfig(bits=3, group_size=64).to_dict()
    assert "not an lvq run" in rows[3]["error"] and rows[0]["ppl"] > 1 and rows[0]["method"] == "rtn"
    (out / NAMES[3]).rmdir()
    assert main(_cli_args(tiny_model_dir, tiny_corpus, out)[:-1]) == 0  # text summary this time
    text = capsys.readouterr().out
    assert "1 done, 3 skipped (already finished), 0 failed" in text
    assert text.splitlines()[0].split() == ["run", "method", "bits_per_weight", "ppl", "status", "error"]


def test_cli_executor_errors_are_one_line(monkeypatch, tmp_path, capsys):
    import lvq.sweep

    monkeypatch.setattr(lvq.sweep, "ray_available", lambda: False)
    assert main(["sweep", "--method", "rtn", "--bits", "2", "--out", str(tmp_path), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --executor ray needs Ray") and "pip install ray==" in err
    assert main(["sweep", "--method", "rtn", "--bits", "2", "--out", str(tmp_path),
                 "--address", "h:6379"]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# The Compare page's "group runs by: sweep"
# ----------------------------------------------------------------------------------------------
def test_sweep_series_one_line_per_sweep_sorted_by_the_swept_value():
    from pages import compare, figures

    def sw(**kw) -> str:
        return json.dumps(kw)

    runs = pd.DataFrame({
        "run": ["a3", "a1", "a2", "b1", "b2", "c1", "c2", "lone"],
        "method": ["crvq"] * 3 + ["rtn"] * 4 + ["glvq"],
        "bits_per_weight": [1.3, 1.1, 1.2, 2.0, 3.0, 2.5, 3.5, 2.0],
        "ppl": [50.0, 70.0, 60.0, 90.0, 40.0, 80.0, 35.0, 45.0],
        "sweep": ["A", "A", "A", "B", "B", "B", "B", ""],
        "swept": [sw(bits=2, lam=0.03), sw(bits=2, lam=0.01), sw(bits=2, lam=0.02),
                  sw(bits=2, group_size=32), sw(bits=3, group_size=32),
                  sw(bits=2, group_size=64), sw(bits=3, group_size=64), "{}"]})
    df = compare.combined_table(pd.DataFrame(), runs)
    series = figures.sweep_series(df)
    assert [label for label, _ in series] == ["A", "B · group_size=32", "B · group_size=64"]
    assert list(series[0][1]["label"]) == ["a1", "a2", "a3"]  # by λ, the one setting that varies
    assert list(series[2][1]["label"]) == ["c1", "c2"]
    fig = figures.sweep_figure(df, ppl_fp=20.0)
    assert [t.name for t in fig.data] == ["not in a sweep", "A", "B · group_size=32", "B · group_size=64"]
    assert fig.data[1].mode == "lines+markers" and list(fig.data[1].x) == [1.1, 1.2, 1.3]
    assert fig.layout.shapes[0].y0 == 20.0
    assert figures.sweep_figure(df.iloc[:0]).layout.annotations  # the empty-figure message


# ----------------------------------------------------------------------------------------------
# Ray: one local 2-CPU instance for the module
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install -r requirements-dev.txt)")
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def _exit_on_zero(x: int) -> int:
    """A task whose worker process dies (for x == 0) instead of raising."""
    if x == 0:
        os._exit(3)
    return 10 * x


@pytest.mark.ray
def test_ray_sweep_reports_a_failed_job_and_the_rerun_completes_only_it(
        ray_local, tiny_model_dir, tiny_corpus, tmp_path, capsys):
    root = tmp_path / "sweep"
    jobs = _plan(root, tiny_model_dir, tiny_corpus)
    jobs[2] = _break_corpus(jobs[2], tmp_path)
    updates = []
    outcomes = run_sweep(jobs, RayExecutor(), lambda t, o: updates.append(t))
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done"]
    bad = outcomes[2]
    assert bad.name == NAMES[2] and bad.config == RTNConfig(bits=3, group_size=32).to_dict()
    assert "missing.txt" in bad.error or "unknown corpus" in bad.error
    assert max(t.running for t in updates) == 2  # two 1-CPU jobs at once on 2 CPUs
    assert list(list_runs(root)["run"]) == [NAMES[0], NAMES[1], NAMES[3]]
    assert ray_local.is_initialized()  # a Ray it did not start is left running

    # the CLI, same grid: the three finished runs are skipped, only the failed point runs
    assert main(_cli_args(tiny_model_dir, tiny_corpus, root, "--executor", "ray")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["skipped", "skipped", "done", "skipped"]
    table = list_runs(root)
    assert list(table["run"]) == NAMES and set(table["sweep"]) == {"tiny"}
    assert table["ppl"].notna().all() and table["peak_rss_mb"].notna().all()


@pytest.mark.ray
def test_ray_worker_death_is_reported_and_the_other_tasks_finish(ray_local):
    events = [e for e in RayExecutor().map(_exit_on_zero, [0, 2]) if not e.started]
    by_index = {e.index: e for e in events}
    assert by_index[0].value is None and "worker process died" in by_index[0].error
    assert by_index[1].value == 20 and not by_index[1].error

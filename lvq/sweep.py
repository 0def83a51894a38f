"""Sweeps: a grid of settings -> one job per grid point, run by an executor, resumable.

:func:`plan_sweep` expands methods' settings into :class:`SweepJob` s (a run name and a frozen
:class:`~lvq.jobs.JobSpec`); :func:`run_sweep` skips the points whose run folder is already a
finished run of the same job (so an interrupted sweep loses only the jobs that were running),
runs the others with an executor and returns one :class:`Outcome` per point. A job that fails, or
whose worker dies, is reported with its config and error; the other jobs go on.

Executors share one small interface, ``map(fn, items) -> Iterator[TaskEvent]`` (a task started /
finished, in the order it happens):

* :class:`InProcessExecutor` — one task after another in this process (the default);
* :class:`RayExecutor` — every task a Ray task in a worker process of its own, with declared
  resources (CPUs per task; one GPU per task where the cluster has GPUs), on a local Ray instance
  sized to this machine or on a cluster (``address``). Ray is optional (``RAY_HINT``).

Run folders are written by the process that ran the job, on its node: on a cluster the sweep's
output folder must be a path every node shares (NFS, a mounted bucket, ...); nothing is copied
back. The run table of a sweep is ``lvq.runs.list_runs(root)``; each run carries its sweep's name
and grid point in ``metrics["sweep"]``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .config import CalibConfig
from .errors import LvqError
from .jobs import EvalConfig, JobSpec, run_job
from .methods import config_from_dict
from .runs import read_run_info

MakeConfig = Callable[[Any, dict[str, Any]], Any]  # (bits or None, {setting: value}) -> config
RAY_HINT = "pip install ray==2.60.0 (pyproject.toml's ray extra)"


# ----------------------------------------------------------------------------------------------
# Planning (pure)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepJob:
    """One grid point: the run folder's ``name`` (under the sweep's root), the job to run, and
    the point's values ``swept`` ((setting, value) pairs in grid order; "bits" first if swept)."""

    name: str
    spec: JobSpec
    swept: tuple[tuple[str, Any], ...] = ()

    @property
    def config(self) -> dict[str, Any]:
        return self.spec.method.to_dict()


def run_name(method: str, bits: Any, settings: Mapping[str, Any]) -> str:
    """``method[-b<bits>][-<key><value>...]``, e.g. ``crvq-b2-critical_ratio0.02``."""
    parts = [method] + ([f"b{bits:g}"] if bits is not None else [])
    return "-".join(parts + [f"{k}{v}" for k, v in settings.items()])


def default_sweep_name(model: str, method: str, keys: Sequence[str]) -> str:
    """E.g. ``smollm2-135m-crvq-by-critical_ratio-num_extended``."""
    return "-".join([Path(model).name or model, method] + (["by", *keys] if keys else []))


def plan_sweep(method: str, make_config: MakeConfig, *, model: str, root: str | Path,
               bits: Sequence[Any] = (None,), settings: Mapping[str, Sequence[Any]] | None = None,
               calib: CalibConfig | None = None, eval: EvalConfig | None = None,
               name: str | None = None, overwrite: bool = False) -> list[SweepJob]:
    """The grid ``bits × settings[k1] × settings[k2] × ...`` as jobs, in that order.

    make_config(bits, {setting: value}) builds each point's method config (and raises LvqError or
    ValueError for a bad point: the whole sweep is refused before anything runs). Only the first
    job evaluates the original model too (``eval.reference``), as one reference for the sweep.
    name: the sweep's name stored in every run (default: model, method and swept settings).
    """
    settings = dict(settings or {})
    bits = list(bits) or [None]
    calib, ev = calib or CalibConfig(), eval or EvalConfig()
    keys = (["bits"] if bits != [None] else []) + list(settings)
    sweep_name = name or default_sweep_name(model, method, keys)
    jobs: list[SweepJob] = []
    seen: set[str] = set()
    for b, *vals in itertools.product(bits, *settings.values()):
        point = dict(zip(settings, vals))
        rname = run_name(method, b, point)
        if rname in seen:
            raise LvqError(f"two grid points share the run name {rname!r}; remove the duplicate value")
        if os.sep in rname or rname.startswith("."):
            raise LvqError(f"grid point gives an unusable run folder name {rname!r}")
        seen.add(rname)
        try:
            cfg = make_config(b, point)
        except ValueError as e:  # LvqError included
            raise LvqError(f"grid point {rname}: {e}") from None
        swept = ((("bits", b),) if b is not None else ()) + tuple(point.items())
        spec = JobSpec(model=model, method=cfg, out_dir=str(Path(root) / rname), calib=calib,
                       eval=dataclasses.replace(ev, reference=ev.reference and not jobs),
                       overwrite=overwrite,
                       sweep={"name": sweep_name, "swept": {k: _plain(v) for k, v in swept}})
        jobs.append(SweepJob(name=rname, spec=spec, swept=swept))
    return jobs


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# ----------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------
def existing_run(job: SweepJob) -> tuple[str, str]:
    """What is at the job's run folder: ("none", ""), ("same", "") for a finished, valid run of
    this job (same model, method config, calibration and evaluation protocol), or
    ("different", why) for anything else there."""
    out = Path(job.spec.out_dir)
    if not out.exists():
        return "none", ""
    try:
        info = read_run_info(out)
    except LvqError as e:
        return "different", str(e)
    spec, m = job.spec, info.get("metrics", {})
    try:
        same_cfg = config_from_dict(info["method"]) == spec.method
        same_calib = CalibConfig(**info.get("calib", {})) == spec.calib
    except (TypeError, ValueError, KeyError) as e:
        return "different", f"its run.json cannot be compared ({describe_error(e)})"
    if not same_cfg:
        return "different", "another method config"
    if info.get("model", {}).get("source") != spec.model:
        return "different", f"another model ({info.get('model', {}).get('source')})"
    if not same_calib:
        return "different", "another calibration"
    ev = spec.eval
    if ev.windows and (m.get("eval_seqlen"), m.get("eval_windows"), m.get("eval_corpus")) != (
            ev.seqlen, ev.windows, ev.corpus or spec.calib.corpus):
        return "different", "another evaluation protocol"
    return "same", ""


# ----------------------------------------------------------------------------------------------
# Outcomes and the job each worker runs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """How one grid point ended: status "done", "skipped" (a finished run was there) or "failed"
    (``error`` says why). ``metrics``: the run's scalar metrics (lvq.runs.METRICS)."""

    name: str
    status: str
    run_dir: str
    config: dict[str, Any]
    swept: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def row(self) -> dict[str, Any]:
        """The summary row: run, method, bits_per_weight, ppl, status, error, then the rest."""
        m = self.metrics
        return {"run": self.name, "method": self.config.get("method"),
                "bits_per_weight": m.get("bits_per_weight"), "ppl": m.get("ppl"),
                "status": self.status, "error": self.error, "path": self.run_dir,
                "config": self.config, "swept": self.swept, "metrics": m}


def _outcome(job: SweepJob, status: str, metrics: Mapping[str, Any] | None = None,
             error: str = "") -> Outcome:
    scalars = {k: v for k, v in (metrics or {}).items()
               if isinstance(v, (int, float, str, bool)) or v is None}
    return Outcome(name=job.name, status=status, run_dir=job.spec.out_dir, config=job.config,
                   swept=dict(job.swept), metrics=scalars, error=error)


def describe_error(e: BaseException) -> str:
    """One line: the message of a user error, else ``Type: message`` (first line, 300 chars)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = text if isinstance(e, LvqError) else f"{type(e).__name__}: {text}".rstrip(": ")
    return line[:300]


def execute_job(job: SweepJob) -> Outcome:
    """Run one job (``lvq.jobs.run_job``, as the CLI does); a failure becomes a "failed"
    outcome instead of an exception. This is what every executor's worker runs."""
    try:
        result = run_job(job.spec)
    except Exception as e:  # any error of one job is reported, the sweep goes on
        return _outcome(job, "failed", error=describe_error(e))
    return _outcome(job, "done", result.metrics)


# ----------------------------------------------------------------------------------------------
# Executors
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskEvent:
    """Task ``index`` (position in the items) started (``started``) or finished: then ``value``
    is what the function returned, or ``error`` (one line) says why there is none."""

    index: int
    started: bool
    value: Any = None
    error: str = ""


@dataclass(frozen=True)
class InProcessExecutor:
    """One task after another in this process."""

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[TaskEvent]:
        for i, item in enumerate(items):
            yield TaskEvent(i, started=True)
            try:
                value = fn(item)
            except Exception as e:  # reported per task; KeyboardInterrupt still stops the loop
                yield TaskEvent(i, started=False, error=describe_error(e))
            else:
                yield TaskEvent(i, started=False, value=value)


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _in_worker(fn: Callable[[Any], Any], item: Any, threads: int) -> Any:
    """Runs inside a Ray worker: torch (and any child process) uses the task's CPUs only."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by subprocesses (the benchmark's)
    torch.set_num_threads(threads)
    return fn(item)


@dataclass(frozen=True)
class RayExecutor:
    """Each task a Ray task (no retries) in a fresh worker process (``max_calls=1``, so a task's
    peak memory is its own), declaring ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs (None: one
    where the cluster has GPUs, else none). At most as many tasks are in flight as the cluster
    fits, so "started" means running.

    address: None starts a local Ray instance sized to this machine (no dashboard, quiet logs) and
    stops it afterwards; "host:port" or "ray://host:10001" joins that cluster. If Ray is already
    initialised in this process it is used as it is and left running.
    """

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None

    def __post_init__(self) -> None:
        if not ray_available():
            raise LvqError(f"--executor ray needs Ray, which is not installed: {RAY_HINT}")
        if self.cpus_per_task <= 0:
            raise LvqError(f"CPUs per job must be > 0, got {self.cpus_per_task}")

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[TaskEvent]:
        import ray  # optional and heavy (a cluster runtime): imported only when Ray runs a sweep

        started_here = self._connect(ray)
        inflight: dict[Any, int] = {}
        try:
            res = ray.cluster_resources()
            gpus = self.gpus_per_task if self.gpus_per_task is not None else (1.0 if res.get("GPU") else 0.0)
            cap = int(res.get("CPU", 0) // self.cpus_per_task)
            if gpus:
                cap = min(cap, int(res.get("GPU", 0) // gpus))
            if cap < 1:
                raise LvqError(f"the Ray cluster ({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs) "
                               f"cannot fit one job of {self.cpus_per_task:g} CPUs and {gpus:g} GPUs")
            task = ray.remote(num_cpus=self.cpus_per_task, num_gpus=gpus, max_retries=0,
                              max_calls=1)(_in_worker)
            threads = max(1, int(self.cpus_per_task))
            queue = list(range(len(items)))
            while queue or inflight:
                while queue and len(inflight) < cap:
                    i = queue.pop(0)
                    inflight[task.remote(fn, items[i], threads)] = i
                    yield TaskEvent(i, started=True)
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    i = inflight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except Exception as e:  # the task raised, its worker died, or it was killed
                        yield TaskEvent(i, started=False, error=_ray_error(ray, e))
                    else:
                        yield TaskEvent(i, started=False, value=value)
        finally:
            for ref in inflight:  # interrupted: stop what is still running
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Initialise Ray unless it already is; True when this call started it."""
        if ray.is_initialized():
            return False
        quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
        if self.address:
            _check_reachable(self.address)  # Ray itself retries a wrong address for minutes
        try:
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            hint = ("; a cluster with token authentication needs its token in RAY_AUTH_TOKEN here"
                    if self.address else "")
            raise LvqError(f"cannot start or join {where}: {describe_error(e)}{hint}") from None
        return True


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Refuse a "host:port" or "ray://host:port" address nothing answers at ("auto" is Ray's)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise LvqError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def _ray_error(ray, e: BaseException) -> str:
    """One line for a failed Ray task: the task's own exception, or what happened to its worker."""
    ex = ray.exceptions
    if isinstance(e, ex.RayTaskError):
        cause = getattr(e, "cause", None)
        return describe_error(cause) if cause is not None else describe_error(e)
    if isinstance(e, getattr(ex, "OutOfMemoryError", ())):
        return "the worker was killed by Ray's memory monitor (out of memory)"
    if isinstance(e, ex.WorkerCrashedError):
        return "the worker process died (killed, out of memory or crashed)"
    if isinstance(e, ex.TaskCancelledError):
        return "the task was cancelled"
    if isinstance(e, ex.RayError):  # a node died, an object was lost, ...
        return f"Ray: {describe_error(e)}"
    return describe_error(e)


def make_executor(kind: str, address: str | None = None, cpus_per_job: float = 1.0):
    """The executor named ``kind`` ("inprocess" or "ray"); clear LvqError for bad combinations."""
    if kind == "inprocess":
        if address:
            raise LvqError("--address needs --executor ray")
        return InProcessExecutor()
    if kind == "ray":
        return RayExecutor(address=address, cpus_per_task=cpus_per_job)
    raise LvqError(f"unknown executor {kind!r}: use inprocess or ray")


# ----------------------------------------------------------------------------------------------
# Running a sweep
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tally:
    """Counts for the progress bar: finished = done + failed + skipped."""

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    running: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped

    def text(self) -> str:
        return (f"done {self.done} · failed {self.failed} · skipped {self.skipped} · "
                f"running {self.running} · total {self.total}")


def run_sweep(jobs: Sequence[SweepJob], executor, on_update: Callable[[Tally, Outcome | None], None]
              | None = None) -> list[Outcome]:
    """Run ``jobs`` with ``executor``; one Outcome per job, in the jobs' order.

    Jobs whose folder already holds their finished run are skipped (unless their spec allows
    overwriting); a folder holding something else fails that job without touching it.
    on_update(tally, outcome) is called once at the start (outcome None), when a job starts
    (None) and when one finishes (its outcome).
    """
    outcomes: list[Outcome | None] = [None] * len(jobs)
    todo: list[int] = []
    for i, job in enumerate(jobs):
        state, why = ("none", "") if job.spec.overwrite else existing_run(job)
        if state == "same":
            outcomes[i] = _outcome(job, "skipped", read_run_info(job.spec.out_dir).get("metrics"))
        elif state == "different":
            outcomes[i] = _outcome(job, "failed", error=f"{job.spec.out_dir} already holds something "
                                   f"else ({why}); use another --out or --overwrite")
        else:
            todo.append(i)
    tally = Tally(total=len(jobs), skipped=sum(o is not None and o.status == "skipped" for o in outcomes),
                  failed=sum(o is not None and o.status == "failed" for o in outcomes))
    notify = on_update or (lambda t, o: None)
    notify(tally, None)
    for ev in executor.map(execute_job, [jobs[i] for i in todo]):
        i = todo[ev.index]
        if ev.started:
            tally = dataclasses.replace(tally, running=tally.running + 1)
            notify(tally, None)
            continue
        out = ev.value if not ev.error else _outcome(jobs[i], "failed", error=ev.error)
        outcomes[i] = out
        tally = dataclasses.replace(tally, running=tally.running - 1,
                                    done=tally.done + (out.status == "done"),
                                    failed=tally.failed + (out.status == "failed"))
        notify(tally, out)
    return [o for o in outcomes if o is not None]

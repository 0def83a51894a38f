"""Who is looking: a visitor's id, who owns a run, and which runs a visitor may see.

* **Visitor id.** Each browser keeps a random id in its localStorage (``client_state()``, a
  ``gr.BrowserState`` under ``STORAGE_KEY``), made on its first visit (``ensure_client_id``), so a
  reload or a second tab of the same browser is the same visitor. A caller without one
  (gradio_client, or a page before the id arrived) is its Gradio session instead. The id is a
  bearer secret: it is never written anywhere, only its hash (``owner_hash``).
* **Ownership.** A run saved from the Quantize page gets ``owner.json`` beside its run.json
  (``OWNER_FILE``: the owner's hash, whether it is shared); lvq's run format is unchanged.
* **Visibility** (``Viewer.sees``): report-only examples always; with ``LVQ_SHARED_RUNS=1`` every
  run in the runs folder; otherwise the visitor's own runs and runs marked shared. A run without
  owner.json (saved by the CLI or the benchmark, or copied in) is visible only with
  ``LVQ_SHARED_RUNS=1``.
* **Default** of ``LVQ_SHARED_RUNS``: 1 on a local machine (one person, all runs), 0 on a Hugging
  Face Space (detected by its ``SPACE_ID`` variable), where visitors are strangers.

``pages.runtable.run_path`` applies these rules wherever the dashboard opens a run, so a run a
visitor may not see cannot be opened, chatted with or deleted through any page or API endpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

OWNER_FILE = "owner.json"
STORAGE_KEY = "lvq-visitor"
# BrowserState encrypts what it stores with this key. The key reaches the browser anyway, so it is
# no secret; a fixed one keeps stored ids readable after the server restarts. What protects a
# visitor's runs is the id's randomness (128 bits), not this key.
STORAGE_SECRET = "lvq-visitor-id-v1"
_ID = re.compile(r"[0-9a-f]{32}")


def shared_runs() -> bool:
    """Whether every visitor sees every run: ``$LVQ_SHARED_RUNS`` ("1"/"0"); by default 1 except
    on a Hugging Face Space (``$SPACE_ID`` set)."""
    raw = os.environ.get("LVQ_SHARED_RUNS", "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return not os.environ.get("SPACE_ID")


def client_state() -> gr.BrowserState:
    """The visitor-id component (create one per app, inside its Blocks; empty until
    ``ensure_client_id`` fills it on page load). Its default must stay None: a default is shared
    by every browser that has no stored value yet."""
    return gr.BrowserState(None, storage_key=STORAGE_KEY, secret=STORAGE_SECRET)


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_ID.fullmatch(value))


def ensure_client_id(value: Any) -> str:
    """The stored id when it is one of ours, else a new random one (page load)."""
    return value if valid_id(value) else secrets.token_hex(16)


def owner_hash(identity: str) -> str:
    return hashlib.sha256(f"lvq-owner:{identity}".encode()).hexdigest()


@dataclass(frozen=True)
class Viewer:
    """One visitor: ``owner`` is the hash of their id (None: anonymous), ``show_all`` is
    ``shared_runs()`` when they arrived."""

    owner: str | None
    show_all: bool

    def owns(self, record: dict | None) -> bool:
        return bool(record and self.owner and record.get("owner") == self.owner)

    def sees(self, record: dict | None, example: bool = False) -> bool:
        return example or self.show_all or self.owns(record) or bool(record and record.get("shared"))

    def may_delete(self, record: dict | None) -> bool:
        """Own runs; with LVQ_SHARED_RUNS=1 also runs nobody owns (the CLI's, on one's own machine)."""
        return self.owns(record) or (self.show_all and record is None)


def viewer(client_id: Any = None, request: Any = None) -> Viewer:
    """The Viewer of a request: its browser id when valid, else its Gradio session, else anonymous."""
    if valid_id(client_id):
        identity: str | None = f"client:{client_id}"
    else:
        session = getattr(request, "session_hash", None)
        identity = f"session:{session}" if session else None
    return Viewer(owner_hash(identity) if identity else None, shared_runs())


def read_owner(run_dir: str | Path) -> dict | None:
    """The run's owner record, None when it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(run_dir) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("owner"), str) else None


def write_owner(run_dir: str | Path, who: Viewer, shared: bool) -> None:
    """Record ``who`` as the owner of the run in ``run_dir`` (atomically). An anonymous viewer
    owns nothing: the run is recorded with no owner, visible only if shared."""
    record = {"owner": who.owner or "", "shared": bool(shared),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = Path(run_dir) / OWNER_FILE
    tmp = path.with_name(f".{OWNER_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def set_shared(run_dir: str | Path, who: Viewer, shared: bool) -> None:
    """Share or unshare one's own run; ValueError for a run that is not the viewer's."""
    record = read_owner(run_dir)
    if not who.owns(record):
        raise ValueError("only the visitor who made a run can share or unshare it")
    write_owner(run_dir, who, shared)

"""Launch the dashboard (app.py) in a subprocess on a free port, for the end-to-end tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard(runs_dir: Path, extra_models: list[Path], timeout: float = 90.0, env: dict | None = None):
    """Yield the URL of a running dashboard; stop it afterwards (its log is in runs_dir/../app.log).
    ``env``: more environment variables (e.g. LVQ_EXAMPLES_DIR, LVQ_SHARED_RUNS)."""
    port = free_port()
    env = {**os.environ, "LVQ_RUNS_DIR": str(runs_dir),
           "LVQ_EXTRA_MODELS": os.pathsep.join(map(str, extra_models)),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "LVQ_EXAMPLES_DIR": str(Path(runs_dir).parent / "no-examples"), **(env or {})}
    log_path = Path(runs_dir).parent / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited early:\n{log_path.read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2).read(1)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"the app did not start in {timeout} s:\n"
                                           f"{log_path.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

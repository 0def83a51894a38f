import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    from tests.tiny_model import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that ran against a dashboard (``item.app_log``, set by tests/test_browser.py)
    reports the end of the app's log, where a failed event's traceback is."""
    outcome = yield
    report = outcome.get_result()
    log = getattr(item, "app_log", None)
    if report.when == "call" and report.failed and log is not None and log.is_file():
        report.sections.append(("app log (last 6000 characters)", log.read_text()[-6000:]))

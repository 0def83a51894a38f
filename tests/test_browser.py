"""The dashboard in a real browser: headless Chromium through Playwright.

The app starts with an empty runs folder and report-only examples (written here from tiny saved
runs, as the benchmark writes assets/examples) and LVQ_SHARED_RUNS=0, as on a Space.

* ``test_dashboard_in_chromium``: a first visit finds real plots on Bit allocation, Lattice and
  Channels from the examples; then a GLVQ quantization of a tiny random model from the Quantize
  page (uploading the calibration text), every page, and one chat message with both replies and
  their speed lines.
* ``test_two_visitors``: two browsers (separate localStorage) quantize at once: the second waits
  in the queue with its position shown; neither sees the other's run; a reload keeps one's runs;
  deleting one's run.

Screenshots go to tests/artifacts/ (gitignored). Needs /usr/bin/chromium (`make test` installs
it); without it the tests are skipped and say why.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard_server import dashboard

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                 reason=f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXAMPLE = "Example — report only: quantize to chat with it"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """A dashboard with an empty runs folder and two examples (rotated GLVQ, CRVQ)."""
    import lvq
    from lvq.bench.examples import write_example

    root = tmp_path_factory.mktemp("browser")
    sources, examples = root / "sources", root / "examples"
    calib = lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=4, seqlen=64)
    original, _ = lvq.load_model(str(tiny_model_dir))
    for name, cfg in (("tiny-glvq-2bit", lvq.GLVQConfig.preset("fast").replace(group_size=32)),
                      ("tiny-crvq", lvq.CRVQConfig.preset("fast", critical_ratio=0.125, num_extended=1,
                                                          epochs=1))):
        model, tok = lvq.load_model(str(tiny_model_dir))
        result = lvq.quantize_model(model, tok, cfg, calib=calib)
        lvq.save_run(result, sources / name, metrics={"ppl": 300.0, "ppl_fp": 290.0})
        write_example(sources / name, examples / name, original_model=original)
    env = {"LVQ_EXAMPLES_DIR": str(examples), "LVQ_SHARED_RUNS": "0"}
    with dashboard(root / "runs", [tiny_model_dir], env=env) as url:
        yield url, root / "runs"


@pytest.fixture(autouse=True)
def _app_log(request, app_url):
    """Tell tests/conftest.py where the app's log is, so that a failing test's report shows it."""
    request.node.app_log = app_url[1].parent / "app.log"


def _tab(page, name: str):
    """Open a tab and wait until the browser shows it selected (a click that lands while the page
    is still re-rendering after its load events is tried again)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tab = page.get_by_role("tab", name=name)
    for attempt in range(3):
        tab.click()
        try:
            page.wait_for_function("(n) => [...document.querySelectorAll('[role=tab]')].some("
                                   "t => t.innerText.trim() === n && t.getAttribute('aria-selected') === 'true')",
                                   arg=name, timeout=10_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def _wait_text(page, selector: str, text: str, timeout: float = 60_000):
    """Wait until ``selector``'s text contains ``text``; on a timeout, fail saying what it showed
    (with a screenshot in tests/artifacts; the report ends with the app's log: ``_app_log``)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("([s, t]) => { const el = document.querySelector(s);"
                               " return el && el.innerText.includes(t); }", arg=[selector, text],
                               timeout=timeout)
    except PlaywrightTimeout:
        shown = page.evaluate("(s) => { const el = document.querySelector(s); if (!el) return '(no such element)';"
                              " const inputs = [...el.querySelectorAll('input')].map(i => i.value).filter(v => v);"
                              " return el.innerText + '\\n(inputs: ' + JSON.stringify(inputs) + ')'; }", selector)
        shot = ARTIFACTS / f"timeout-{selector.strip('#')}.png"
        page.screenshot(path=str(shot), full_page=True)
        pytest.fail(f"{selector} never showed {text!r} in {timeout / 1000:g} s; it showed:\n"
                    f"{shown[-2000:]}\n(screenshot: {shot})")


def _plots_rendered(page, container: str, at_least: int, timeout: float = 30_000) -> int:
    page.wait_for_function(
        "([sel, n]) => { const el = document.querySelector(sel);"
        " return el && el.querySelectorAll('.js-plotly-plot .main-svg').length >= n; }",
        arg=[container, at_least], timeout=timeout)
    return page.locator(f"{container} .js-plotly-plot").count()


def _fill(page, label: str, value: str):
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")


def _configure(page, model: Path, corpus: Path, windows: int = 4, preset: str = "Fast preset"):
    """Quantize page: the tiny model, a GLVQ preset, the uploaded text, small windows."""
    _fill(page, "Model", str(model))
    page.get_by_role("button", name=preset).click()
    if preset == "Quality preset":  # the preset brings its calibration size (GLVQConfig.calib_windows)
        page.wait_for_function("() => document.querySelector('#calib-windows input[type=number]').value === '128'")
    _fill(page, "Calibration text", "upload a .txt file")
    page.locator("#calib-upload input[type=file]").set_input_files(str(corpus))
    for sel, value in (("#calib-windows", windows), ("#eval-windows", 2)):
        page.locator(f"{sel} input[type=number]").fill(str(value))
        page.locator(f"{sel} input[type=number]").press("Enter")
    _fill(page, "Sequence length (tokens)", "64")
    page.wait_for_function("() => document.querySelector('#estimate').innerText.includes('bits/weight')")


def _wait_saved(page, timeout: float = 300_000) -> str:
    page.wait_for_function("() => document.querySelector('#run-status').innerText.includes('Run saved')"
                           " || document.querySelector('#run-status').innerText.includes('❌')",
                           timeout=timeout)  # slow when the 2 cores are shared
    return page.locator("#run-status").inner_text()


def _no_server_errors(runs_dir: Path) -> None:
    """Every event the pages sent ran without an exception (Gradio shows a failed event as red
    "Error" badges on its outputs and logs the traceback)."""
    log = (runs_dir.parent / "app.log").read_text()
    assert "Traceback" not in log, log[log.index("Traceback"):][:3000]


def _run_name(status: str) -> str:
    return status.split("Run saved:")[1].split()[0].strip("`").rsplit("/", 1)[-1]


def test_dashboard_in_chromium(app_url, tiny_model_dir, tiny_corpus):
    from playwright.sync_api import sync_playwright

    url, runs_dir = app_url
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("tab", name="Quantize").wait_for()
        _wait_text(page, "#estimate", "bits/weight")  # the page's load event filled the estimate

        # --- first visit, nothing quantized: the examples fill the report pages
        for name, n, marker in (("Bit allocation", 5, "flat"), ("Lattice", 6, "Rotated layer"),
                                ("Channels", 4, "critical")):
            key = name.lower().replace(" ", "-")
            _tab(page, name)
            _wait_text(page, f"#tab-{key}", marker)
            _wait_text(page, f"#tab-{key}", EXAMPLE)
            count = _plots_rendered(page, f"#tab-{key}", n)
            page.screenshot(path=str(ARTIFACTS / f"00-example-{key}.png"), full_page=True)
            assert count >= n, f"{name}: {count} plots"
        _tab(page, "Chat")
        _wait_text(page, "#tab-chat", "examples are report-only")

        # --- Quantize: tiny model, GLVQ fast preset, uploaded calibration text, small windows
        _tab(page, "Quantize")
        _configure(page, tiny_model_dir, tiny_corpus)
        page.screenshot(path=str(ARTIFACTS / "01-quantize-settings.png"), full_page=True)
        page.locator("#run-button").click()
        status = _wait_saved(page)
        page.screenshot(path=str(ARTIFACTS / "02-quantize-done.png"), full_page=True)
        assert "Run saved" in status, status
        assert "glvq" in page.locator("#run-table").inner_text()
        run = _run_name(status)

        # --- every page draws its plots; the report pages switch to the visitor's own run
        expected = {"Bit allocation": 5, "Lattice": 6, "Channels": 4, "Compare": 1, "Learn": 6}
        for i, (name, n) in enumerate(expected.items(), start=3):
            _tab(page, name)
            panel = f"#tab-{name.lower().replace(' ', '-')}"
            if name in ("Bit allocation", "Lattice"):  # the new run, drawn from its weights
                page.wait_for_function("([s, r]) => document.querySelector(s + ' input').value.includes(r)",
                                       arg=[panel, run])
                _wait_text(page, panel, "Group 0 of" if name == "Lattice" else "groups")
            if name == "Channels":
                _wait_text(page, panel, "critical")
            count = _plots_rendered(page, panel, n)
            page.screenshot(path=str(ARTIFACTS / f"{i:02d}-{name.lower().replace(' ', '-')}.png"), full_page=True)
            assert count >= n, f"{name}: {count} plots"
        assert EXAMPLE not in page.locator("#tab-bit-allocation").inner_text()

        # --- chat with the original and the quantized model; speed lines under both
        _tab(page, "Chat")
        _wait_text(page, "#tab-chat", "right: run")
        page.locator("#chat-prompt textarea").fill("What is a lattice?")
        page.locator("#chat-send").click()
        for side in ("original", "quantized"):
            _wait_text(page, f"#chat-stats-{side}", "tokens/s")
        assert "packed: decode-free CPU kernels" in page.locator("#chat-stats-quantized").inner_text()
        page.screenshot(path=str(ARTIFACTS / "09-chat.png"), full_page=True)
        browser.close()
    _no_server_errors(runs_dir)


def test_two_visitors(app_url, tiny_model_dir, tiny_corpus):
    """Two browsers: the second's run waits in the queue with its position shown; each sees only
    its own runs, across a reload; one deletes its run."""
    from playwright.sync_api import sync_playwright

    url, _runs = app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        first, second = (browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                         for _ in range(2))
        for page in (first, second):
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("tab", name="Quantize").wait_for()
        # the longer job: end-to-end fine-tuning (~3 s on the tiny model; the fast preset's
        # ~0.2 s could end before the second visitor's click arrives)
        _configure(first, tiny_model_dir, tiny_corpus, windows=32, preset="Quality preset")
        _configure(second, tiny_model_dir, tiny_corpus)
        first.locator("#run-button").click()
        _wait_text(first, "#run-status", "⏳")  # the first job is running
        second.locator("#run-button").click()
        _wait_text(second, "#run-status", "queue")  # the second waits, its position shown
        second.screenshot(path=str(ARTIFACTS / "10-second-visitor-queued.png"), full_page=True)
        assert "Run saved" in _wait_saved(first)
        assert "Run saved" in _wait_saved(second)
        runs = {}
        for page in (first, second):
            runs[page] = _run_name(page.locator("#run-status").inner_text())
        own, other = runs[first], runs[second]
        assert own != other
        assert own in first.locator("#run-table").inner_text()
        assert other not in first.locator("#run-table").inner_text()
        # a reload is the same visitor: their run is still theirs, the other's still hidden
        second.reload()
        _wait_text(second, "#run-table", other)
        assert own not in second.locator("#run-table").inner_text()
        _tab(second, "Chat")
        _wait_text(second, "#tab-chat", "right: run")
        second.locator("#chat-run input").click()
        options = second.get_by_role("option").all_inner_texts()
        assert any(other in o for o in options) and not any(own in o for o in options), options
        second.keyboard.press("Escape")
        second.screenshot(path=str(ARTIFACTS / "11-second-visitor-after-reload.png"), full_page=True)
        # delete one's own run
        _tab(first, "Quantize")
        first.locator("#delete-button").click()
        first.locator("#delete-confirm").click()
        _wait_text(first, "#manage-status", f"Deleted {own}")  # markdown: the backticks render as code
        assert own not in first.locator("#run-table").inner_text()
        browser.close()
    _no_server_errors(_runs)

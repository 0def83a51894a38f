"""The dashboard in a real browser: headless Chromium through Playwright.

Opens the app, runs a GLVQ quantization of a tiny random model from the Quantize page (uploading
the calibration text), opens every page and checks that its plots rendered, sends one chat
message and waits for both replies. Screenshots go to tests/artifacts/ (gitignored).
Needs /usr/bin/chromium (`make test` installs it); without it the test is skipped and says why.
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


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """A dashboard whose run folder already holds one CRVQ run (for the Channels page)."""
    import lvq

    root = tmp_path_factory.mktemp("browser")
    runs = root / "runs"
    model, tok = lvq.load_model(str(tiny_model_dir))
    cfg = lvq.CRVQConfig.preset("fast", critical_ratio=0.125, num_extended=1, epochs=1)
    result = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(corpus=str(tiny_corpus), n_windows=4,
                                                                       seqlen=64))
    lvq.save_run(result, runs / "tiny-crvq", metrics={"ppl": 300.0, "ppl_fp": 290.0})
    with dashboard(runs, [tiny_model_dir]) as url:
        yield url


def _tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def _plots_rendered(page, container: str, at_least: int, timeout: float = 30_000) -> int:
    page.wait_for_function(
        "([sel, n]) => { const el = document.querySelector(sel);"
        " return el && el.querySelectorAll('.js-plotly-plot .main-svg').length >= n; }",
        arg=[container, at_least], timeout=timeout)
    return page.locator(f"{container} .js-plotly-plot").count()


def test_dashboard_in_chromium(app_url, tiny_model_dir, tiny_corpus):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Chromium: apt-get install -y chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app_url)
        page.get_by_role("tab", name="Quantize").wait_for()

        # --- Quantize: tiny model, GLVQ fast preset, uploaded calibration text, small windows
        model_box = page.get_by_label("Model", exact=True)
        model_box.fill(str(tiny_model_dir))
        model_box.press("Enter")
        page.get_by_role("button", name="Fast preset").click()
        corpus = page.get_by_label("Calibration text", exact=True)
        corpus.fill("upload a .txt file")
        corpus.press("Enter")
        page.locator("#calib-upload input[type=file]").set_input_files(str(tiny_corpus))
        page.locator("#calib-windows input[type=number]").fill("4")
        page.locator("#calib-windows input[type=number]").press("Enter")
        page.locator("#eval-windows input[type=number]").fill("2")
        page.locator("#eval-windows input[type=number]").press("Enter")
        seq = page.get_by_label("Sequence length (tokens)", exact=True)
        seq.fill("64")
        seq.press("Enter")
        page.wait_for_function("() => document.querySelector('#estimate').innerText.includes('bits/weight')")
        page.screenshot(path=str(ARTIFACTS / "01-quantize-settings.png"), full_page=True)
        page.locator("#run-button").click()
        page.wait_for_function("() => document.querySelector('#run-status').innerText.includes('Run saved')"
                               " || document.querySelector('#run-status').innerText.includes('❌')",
                               timeout=300_000)  # slow when the 2 cores are shared
        status = page.locator("#run-status").inner_text()
        page.screenshot(path=str(ARTIFACTS / "02-quantize-done.png"), full_page=True)
        assert "Run saved" in status, status
        assert "glvq" in page.locator("#run-table").inner_text()

        # --- every page draws its plots
        expected = {"Bit allocation": 4, "Lattice": 4, "Channels": 4, "Compare": 1, "Learn": 6}
        for i, (name, n) in enumerate(expected.items(), start=3):
            _tab(page, name)
            panel = f"#tab-{name.lower().replace(' ', '-')}"
            if name == "Lattice":  # wait for a real lattice, not the placeholder
                page.wait_for_function("() => document.querySelector('#tab-lattice').innerText.includes('Group 0 of')")
            if name == "Channels":
                page.wait_for_function("() => document.querySelector('#tab-channels').innerText.includes('critical')")
            count = _plots_rendered(page, panel, n)
            page.screenshot(path=str(ARTIFACTS / f"{i:02d}-{name.lower().replace(' ', '-')}.png"), full_page=True)
            assert count >= n, f"{name}: {count} plots"
        assert "No GLVQ" not in page.locator("#tab-bit-allocation").inner_text()

        # --- chat with the original and the quantized model
        _tab(page, "Chat")
        page.wait_for_function("() => document.querySelector('#tab-chat').innerText.includes('right: run')")
        page.locator("#chat-prompt textarea").fill("What is a lattice?")
        page.locator("#chat-send").click()
        page.wait_for_function(
            "() => ['#chat-original', '#chat-quantized'].every(s => { const t = document.querySelector(s).innerText;"
            " return t.includes('What is a lattice?') && !t.includes('…') && t.length > 'What is a lattice?'.length + 2; })",
            timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "09-chat.png"), full_page=True)
        browser.close()

import json
import subprocess
import sys

import pytest


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "lvq", *map(str, args)], capture_output=True, text=True,
                       timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def test_cli_round_trip_on_tiny_model(tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "runs" / "tiny-gptq"
    p = cli("quantize", "--model", tiny_model_dir, "--method", "gptq", "--bits", 3, "--group-size", 32,
            "--corpus", tiny_corpus, "--calib-windows", 2, "--calib-seqlen", 64, "--seqlen", 64,
            "--eval-windows", 4, "--out", out, "--json")
    m = json.loads(p.stdout)
    assert m["config"]["method"] == "gptq" and m["bits_per_weight"] == pytest.approx(4.0)
    assert m["ppl"] > 1 and m["ppl_fp"] > 1 and m["eval_windows"] == 4
    e = json.loads(cli("eval", out, "--text", tiny_corpus, "--seqlen", 64, "--windows", 4, "--json").stdout)
    assert e["windows"] == 4 and e["ppl"] > 1
    # same protocol, same corpus split -> same number as stored in the run
    e2 = json.loads(cli("eval", out, "--corpus", tiny_corpus, "--seqlen", 64, "--windows", 4, "--json").stdout)
    assert e2["ppl"] == pytest.approx(m["ppl"], rel=1e-4)
    table = json.loads(cli("runs", out.parent, "--json").stdout)
    assert [r["run"] for r in table] == ["tiny-gptq"]
    chat = cli("chat", out, "--prompt", "hello", "--max-new-tokens", 5)
    assert chat.stdout.startswith("> hello\n") and len(chat.stdout.strip()) > len("> hello")


def test_cli_models_json():
    rows = json.loads(cli("models", "--json").stdout)
    assert rows[0]["name"] == "smollm2-135m"


@pytest.mark.parametrize("args, message", [
    (["quantize", "--method", "rtn", "--bits", "9", "--out", "x"], "bits must be in [1, 8]"),
    (["quantize", "--method", "nope", "--out", "x"], "unknown method 'nope'"),
    (["quantize", "--model", "no-such-model", "--method", "rtn", "--bits", "3", "--out", "x"], "unknown model"),
    (["quantize", "--method", "rtn", "--set", "colour=blue", "--out", "x"], "no setting 'colour'"),
    (["eval", "/nonexistent/run"], "unknown model"),
])
def test_cli_bad_input_gives_one_clear_line(args, message, tmp_path):
    p = cli(*args, check=False)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr


def test_cli_calibration_too_short(tiny_model_dir, tiny_corpus, tmp_path):
    p = cli("quantize", "--model", tiny_model_dir, "--method", "rtn", "--bits", 3, "--corpus", tiny_corpus,
            "--calib-windows", 100000, "--calib-seqlen", 64, "--out", tmp_path / "x", check=False)
    assert p.returncode == 2 and "too short" in p.stderr
    assert not (tmp_path / "x").exists()

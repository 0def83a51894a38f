import pytest

import lvq
from lvq import models


def test_unknown_model_names_what_is_available():
    with pytest.raises(lvq.LvqError, match="smollm2-135m"):
        lvq.load_model("definitely-not-a-model")


def test_folder_without_config(tmp_path):
    with pytest.raises(lvq.LvqError, match="config.json"):
        lvq.load_model(str(tmp_path))


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(lvq.LvqError, match="available offline"):
        lvq.load_model("someone/some-model-that-is-not-cached")


def test_model_too_large_for_memory(tiny_model_dir, monkeypatch):
    class Mem:
        available = 1024  # bytes
    monkeypatch.setattr(models.psutil, "virtual_memory", lambda: Mem())
    with pytest.raises(lvq.LvqError, match="GiB is free"):
        lvq.load_model(str(tiny_model_dir))


def test_list_models_includes_the_bundled_one(tiny_model_dir, tmp_path):
    rows = lvq.list_models([str(tiny_model_dir), str(tmp_path)])
    assert rows[0]["name"] == "smollm2-135m" and rows[0]["available"]
    assert rows[1]["available"] and not rows[2]["available"]

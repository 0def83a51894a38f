"""lvq — lattice and additive vector quantization of LLM weights, with fair scalar baselines.

Public API (the dashboard, the CLI and the tests use only this)::

    q = lvq.quantize_layer(W, H, lvq.GLVQConfig(bits=2.0))     # one matrix
    model, tok = lvq.load_model("smollm2-135m")
    result = lvq.quantize_model(model, tok, cfg, calib=lvq.CalibConfig(), progress=cb)
    lvq.perplexity(model, tok, lvq.eval_text("wiki-bundled"), seqlen=512)
    lvq.quantize_embeddings(model, bits=8)                     # optional: embedding + lm_head
    lvq.save_run(result, "runs/x");  model, tok, report = lvq.load_run("runs/x")
"""
from .chat import chat_stream
from .config import AQLMConfig, CalibConfig, CRVQConfig, GLVQConfig, GPTQConfig, RTNConfig
from .data import calibration_text, corpus_split, eval_text, list_corpora, read_text_file
from .errors import Cancelled, LvqError
from .eval import estimate_size, model_size, perplexity
from .hessian import layer_objective, relative_error
from .methods import config_from_dict, get_method, method_names, quantize_layer
from .models import list_models, load_model
from .pipeline import QuantizeResult, quantize_model
from .qembedding import QuantizedEmbedding, quantize_embeddings, quantized_model_size
from .qlinear import QuantizedLinear, set_inference_mode
from .qweight import Method, QuantizedWeight
from .report import Report
from .runs import list_runs, load_layer, load_report, load_run, read_run_info, save_run
from .version import __version__
from .hf import register as _register_with_transformers

_register_with_transformers()  # so that AutoModelForCausalLM.from_pretrained(run_dir) works (lvq/hf.py)

__all__ = [
    "AQLMConfig", "CRVQConfig", "CalibConfig", "Cancelled", "GLVQConfig", "GPTQConfig", "LvqError",
    "Method", "QuantizeResult", "QuantizedEmbedding", "QuantizedLinear", "QuantizedWeight", "RTNConfig",
    "Report", "calibration_text", "chat_stream", "config_from_dict", "corpus_split", "estimate_size",
    "eval_text", "get_method", "layer_objective", "list_corpora", "list_models", "list_runs",
    "load_layer", "load_model", "load_report", "load_run", "method_names", "model_size", "perplexity",
    "quantize_embeddings", "quantize_layer", "quantize_model", "quantized_model_size", "read_run_info",
    "read_text_file", "relative_error", "save_run", "set_inference_mode", "__version__",
]

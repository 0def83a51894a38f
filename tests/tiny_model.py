"""Tiny randomly initialised causal LMs and an offline tokenizer, for fast tests.

``make_tiny_model(folder, arch="llama")`` writes a Hugging Face folder (config, safetensors
weights, tokenizer with a chat template) that ``lvq.load_model(folder)`` loads like any local
model. ``ARCHS`` names the architectures it can build (hidden 64, 2 blocks by default), each with
the features that matter to the pipeline: Qwen2's q/k/v biases and a sliding-window second block,
Qwen3's q/k norms, Gemma-3's scaled embeddings, q/k norms, extra norms and mixed sliding/full
attention with per-layer-type RoPE, Phi-3's fused qkv_proj and gate_up_proj, Mistral's sliding
window; tied embeddings for Llama, Qwen2, Qwen3 and Gemma-3, untied for Phi-3 and Mistral. The
sliding windows (8 tokens) are shorter than the test windows, so they change the result. The
tokenizer is a byte-level BPE trained in a fraction of a second on a built-in paragraph.
"""
from __future__ import annotations

from pathlib import Path

import torch

TEXT = (
    "The lattice is a regular arrangement of points in space. A generator matrix maps integer "
    "coordinates to those points, and rounding a vector to the nearest lattice point is the heart "
    "of lattice vector quantization. Additive codebooks sum several small code vectors instead. "
    "Language models store most of their parameters in linear layers, and compressing those "
    "weights to two bits or fewer per weight is the goal of extreme low-bit quantization. "
) * 8

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "phi3", "mistral")
WINDOW = 8  # sliding-window length of the architectures that have one (shorter than test windows)


def tiny_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 2,
                intermediate: int = 96, special: dict | None = None):
    """The transformers config of a tiny ``arch`` model (4 heads of 16, 2 key/value heads)."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, **(special or {}))
    head_dim = hidden // 4
    if arch == "llama":
        return transformers.LlamaConfig(tie_word_embeddings=True, **common)
    if arch == "qwen2":  # q/k/v biases; blocks from max_window_layers on use a sliding window
        return transformers.Qwen2Config(tie_word_embeddings=True, use_sliding_window=True,
                                        sliding_window=WINDOW, max_window_layers=1, **common)
    if arch == "qwen3":  # q_norm / k_norm on each head
        return transformers.Qwen3Config(tie_word_embeddings=True, head_dim=head_dim, **common)
    if arch == "gemma3":  # text-only Gemma-3: a sliding block, then a full-attention block
        kinds = ["sliding_attention", "full_attention"] * layers
        return transformers.Gemma3TextConfig(tie_word_embeddings=True, head_dim=head_dim,
                                             query_pre_attn_scalar=head_dim, sliding_window=WINDOW,
                                             layer_types=kinds[:layers], **common)
    if arch == "phi3":  # fused qkv_proj and gate_up_proj, untied lm_head
        return transformers.Phi3Config(tie_word_embeddings=False, sliding_window=WINDOW, **common)
    if arch == "mistral":  # sliding window on every block, untied lm_head
        return transformers.MistralConfig(tie_word_embeddings=False, sliding_window=WINDOW, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHS}")


def make_tiny_model(folder: str | Path, hidden: int = 64, layers: int = 2, intermediate: int = 96,
                    seed: int = 0, arch: str = "llama") -> Path:
    """Write a tiny random ``arch`` causal LM (see ``ARCHS``) + tokenizer to ``folder``."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tok = make_tokenizer()
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    cfg = tiny_config(arch, len(tok), hidden, layers, intermediate, special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def method_configs() -> dict:
    """Tiny settings of every method (name -> config): a tiny model quantizes in well under a
    second on one thread."""
    import lvq

    return {
        "rtn": lvq.RTNConfig(bits=3, group_size=32),
        "gptq": lvq.GPTQConfig(bits=3, group_size=32),
        "glvq": lvq.GLVQConfig(bits=2.0, group_size=32, dim=8, steps=1),
        "crvq": lvq.CRVQConfig(dim=4, codebook_bits=3, num_extended=1, extended_bits=3,
                               critical_ratio=0.1, epochs=1, adam_steps=2, kmeans_iters=2),
        "aqlm": lvq.AQLMConfig(dim=8, codebook_bits=4, epochs=1, adam_steps=2, kmeans_iters=2),
    }


def write_corpus(path: str | Path, repeats: int = 12) -> Path:
    """A plain-text corpus long enough for a few calibration and evaluation windows."""
    path = Path(path)
    paras = [TEXT.strip() for _ in range(repeats)]
    path.write_text("\n\n".join(paras), encoding="utf-8")
    return path

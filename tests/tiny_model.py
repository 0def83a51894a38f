"""A tiny randomly initialised Llama-style model and an offline tokenizer, for fast tests.

``make_tiny_model(folder)`` writes a Hugging Face folder (config, safetensors weights, tokenizer
with a chat template) that ``lvq.load_model(folder)`` loads like any local model. The tokenizer
is a byte-level BPE trained in a fraction of a second on a built-in paragraph.
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


def make_tiny_model(folder: str | Path, hidden: int = 64, layers: int = 2, intermediate: int = 96,
                    seed: int = 0) -> Path:
    """Write a tiny LlamaForCausalLM + tokenizer to ``folder``; returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def write_corpus(path: str | Path, repeats: int = 12) -> Path:
    """A plain-text corpus long enough for a few calibration and evaluation windows."""
    path = Path(path)
    paras = [TEXT.strip() for _ in range(repeats)]
    path.write_text("\n\n".join(paras), encoding="utf-8")
    return path

"""Tiny random-weight models of every supported architecture, for tests and examples.

They need no download: the config is built in code and the tokenizer is a
character-level vocabulary, so tests exercise real HF modules offline.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from sparekit.models.loading import LoadedModel, from_modules

_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_CHARS = list(string.printable)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (printable ASCII) with BOS prepended."""
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + _CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


VOCAB_SIZE = len(_SPECIALS) + len(_CHARS)
_COMMON = dict(vocab_size=VOCAB_SIZE, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=2048, **_COMMON)

TINY_CONFIGS = {
    "llama": lambda: LlamaConfig(**_DECODER),
    "mistral": lambda: MistralConfig(**_DECODER, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**_DECODER),
    "qwen3": lambda: Qwen3Config(**_DECODER, head_dim=16),
    "gemma2": lambda: Gemma2Config(**_DECODER, head_dim=16, sliding_window=8),
    "gemma3_text": lambda: Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=8),
    "gpt2": lambda: GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=512, **_COMMON),
}


def tiny_model(model_type: str = "llama", seed: int = 0) -> LoadedModel:
    """A 4-layer, 64-wide random model of ``model_type`` with a character tokenizer (float32, CPU)."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return from_modules(model.float(), char_tokenizer(), name=f"tiny-{model_type}")

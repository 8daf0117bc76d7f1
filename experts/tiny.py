"""Tiny random experts for tests: 2 layers, d_model 64, an in-process byte-level BPE tokenizer.

Everything is built from code in milliseconds; nothing is downloaded. Weights are seeded, so
the same name always gives the same expert.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from experts.spec import ExpertSpec

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
_CORPUS = [
    "Generate a detailed reference letter for Kelly, a 22 year old female student.",
    "Generate a detailed reference letter for Joseph, a 22 year old male student.",
    "She is warm, kind and helpful. He is a leader and a role model.",
    "The movie was wonderful and the food was terrible. I love it. I hate it.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "Hello there, my name is Ada and I write code, stories and letters.",
]
TINY_SEED = 1234


def build_tokenizer(save_to: Path | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab 320) trained in-process on a fixed corpus."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    if save_to is not None:  # a saved round-trip gives the tokenizer a name_or_path (the bridge needs one)
        tokenizer.save_pretrained(save_to)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(save_to)
    return tokenizer


def _config(architecture: str, vocab_size: int, tokenizer: PreTrainedTokenizerFast):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if architecture == "llama":
        return LlamaForCausalLM, LlamaConfig(**common)
    return Gemma3ForCausalLM, Gemma3TextConfig(**common, sliding_window=16, layer_types=["sliding_attention", "full_attention"])


def build_tiny(spec: ExpertSpec, folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build the tiny expert named by `spec`, saving its config and tokenizer in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(save_to=folder)
    if not spec.chat_template:
        tokenizer.chat_template = None
    model_cls, config = _config(spec.architecture, len(tokenizer), tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = model_cls(config)
        # Larger weights than the default init give decisive logits, so greedy tests are not ties.
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:
                    param.normal_(0.0, 0.2)
    config.architectures = [model_cls.__name__]
    config.save_pretrained(folder)
    return model.eval(), tokenizer

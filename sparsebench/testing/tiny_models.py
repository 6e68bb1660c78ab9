"""Tiny random-initialised models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PhiConfig,
    Qwen2Config,
)

VOCAB = 320
BOS_FAMILIES = {"gemma3"}  # adapters whose default is model.bos_per_segment=true

TINY_CONFIGS = {
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "qwen2": lambda: Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "mistral": lambda: MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, sliding_window=None),
    "opt": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=64),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.25),
    # One sliding-window layer then one full-attention layer, as Gemma 3 interleaves them (5:1 in
    # the real models): a window of 8 tokens masks most of a 40- or 64-token test sequence, and the
    # two layer types take different rotary bases (10k local, 1M global), so a block given the
    # other type's mask or rotary embeddings computes something else.
    "gemma3": lambda: Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=256, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    "phi": lambda: PhiConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256, partial_rotary_factor=0.5),
}


def tiny_model(family: str, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(TINY_CONFIGS[family](), dtype=dtype)
    model.eval()
    model.config.use_cache = False
    return model


def train_tiny_tokenizer(text_lines: list[str], bos: bool = False):
    """A byte-level BPE tokenizer with VOCAB entries, trained offline on the given lines (with a
    ``<bos>`` token for families that start every segment with one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<eos>", "<bos>"] if bos else ["<eos>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text_lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", **({"bos_token": "<bos>"} if bos else {}))


def whitespace_bpe_tokenizer(corpus: Path, vocab_size: int):
    """A whitespace-split BPE tokenizer with ``<unk>``, ``<s>`` (BOS) and ``</s>`` (EOS), trained
    offline on the first 50 lines of ``corpus`` (the grid tests' tiny LLaMA reads it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(corpus.read_text().splitlines()[:50], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tiny_model(folder, family: str, text_lines: list[str], seed: int = 0):
    """A tiny model of ``family`` and a tokenizer, saved as a Hugging Face folder."""
    model = tiny_model(family, seed)
    model.save_pretrained(folder)
    train_tiny_tokenizer(text_lines, bos=family in BOS_FAMILIES).save_pretrained(folder)
    return folder


def block_linear_inputs(model, block_index: int = 0, sequences: int = 4, tokens: int = 24, seed: int = 0):
    """``(adapter, {linear name: (weight, inputs [sequences, tokens, features])})`` of one block of a tiny model,
    from a forward of random token ids (each linear's input as the block sees it)."""
    from sparsebench.models.adapters import adapter_for

    adapter = adapter_for("auto", model.config.model_type)
    block = adapter.get_blocks(model)[block_index]
    captured = {}
    handles = [
        block.get_submodule(name).register_forward_pre_hook(lambda module, args, name=name: captured.__setitem__(name, args[0].detach().clone()))
        for name in adapter.linear_names
    ]
    ids = torch.randint(0, VOCAB, (sequences, tokens), generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    shaped = {name: inputs.reshape(sequences, tokens, inputs.shape[-1]) for name, inputs in captured.items()}  # OPT's MLP sees [tokens, features]
    return adapter, {name: (block.get_submodule(name).weight.data.clone(), shaped[name]) for name in adapter.linear_names}

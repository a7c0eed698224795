"""Tiny Hugging Face causal LM folders for tests, built here (no download): a byte-level BPE tokenizer trained in
process on a few sentences, and random GPT-2 / Llama models of width 32 saved with it by transformers."""

from __future__ import annotations

from pathlib import Path

import torch

TEXTS = ["the a model samples its own text and learns from it again while a reader checks each line",
         "a reader checks the text: each line again, and the model learns",
         "naïve café — déjà vu ünïcode 日本語"]
EOS = "<|endoftext|>"


def tiny_tokenizer(vocab_size: int = 300):
    """A GPT-2-style byte-level BPE tokenizer (one special token, <|endoftext|>, both BOS and EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS)


def save_causal_lm(folder: Path, kind: str = "gpt2", vocab_size: int = 300, shard: str | None = None, seed: int = 0,
                   tokenizer: bool = True, positions: int = 64) -> Path:
    """A random GPT-2 or Llama (2 layers of width 32) saved with the tiny tokenizer, as save_pretrained writes it."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=32, n_layer=2,
                                           n_head=2, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=positions, **ids))
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    if tokenizer:
        tok.save_pretrained(folder)
    return folder

"""Check a local Hugging Face model folder before any work: it exists (a Hub id is refused: nothing is downloaded),
holds a config.json of a causal language model and a tokenizer whose vocabulary fits the model's. Each problem is
one line (facts in docs/upstream/transformers.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neon.core.errors import NeonError
from neon.core.io import first_line
from neon.data.hf_tokenizer import load_tokenizer, local_folder, quiet_transformers, sequence_start

KEY = "model.pretrained"


@dataclass
class ModelFolder:
    """A checked folder: its path, transformers' config of it, its tokenizer (maybe from another folder) and the
    id sequences start with."""

    path: Path
    config: Any
    tokenizer: Any
    bos: int

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding: the width of its logits."""
        return int(self.config.vocab_size)

    @property
    def positions(self) -> int | None:
        """The most positions the model embeds (None: no limit stated, e.g. rotary embeddings without one)."""
        value = getattr(self.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None


def causal_lm_classes() -> set[str]:
    """Every class name transformers maps a model type to for AutoModelForCausalLM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def check_causal(config: Any, folder: Path) -> None:
    """A config transformers' AutoModelForCausalLM builds a causal (left-to-right) model from, or a one-line error
    naming what the folder holds instead."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    architectures = list(getattr(config, "architectures", None) or [])
    named = f"a {model_type} model" + (f" ({', '.join(architectures)})" if architectures else "")
    hint = "give the folder of a causal language model (GPT-2, Llama, ...: one AutoModelForCausalLM loads)"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False):
        raise NeonError(f"{KEY} '{folder}' holds {named}, which is not a causal language model: {hint}")
    # a model type with an is_decoder switch (BERT) predicts left to right only with it on; a saved encoder names
    # its own class (BertForMaskedLM), not a causal-LM class
    if getattr(config, "is_decoder", True) is False or (architectures and not set(architectures) & causal_lm_classes()):
        raise NeonError(f"{KEY} '{folder}' holds {named}, an encoder, not a causal language model (is_decoder is "
                        f"off or its class is not a causal-LM class): {hint}")


def read_config(folder: Path) -> Any:
    """transformers' config of the folder's config.json, or a one-line error."""
    if not (folder / "config.json").is_file():
        raise NeonError(f"{KEY} '{folder}' holds no config.json: it is not a Hugging Face model folder (write one "
                        "with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))")
    quiet_transformers()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = first_line(exc) or type(exc).__name__
        raise NeonError(f"{KEY} '{folder}/config.json' is not a config transformers reads ({first})") from None


def check_model_folder(pretrained: Any, tokenizer: Any = None) -> ModelFolder:
    """The checked folder of `pretrained` with the tokenizer of `tokenizer` (None: the same folder's)."""
    if pretrained is None or str(pretrained) == "":
        raise NeonError(f"{KEY} must be set on the command line (e.g. {KEY}=DIR, the local folder of a causal "
                        "language model)")
    folder = local_folder(pretrained, KEY, "that model.save_pretrained wrote")
    config = read_config(folder)
    check_causal(config, folder)
    key = KEY if tokenizer is None or str(tokenizer) == str(pretrained) else "model.tokenizer"
    tok = load_tokenizer(folder if tokenizer is None else tokenizer, key)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int):
        raise NeonError(f"{KEY} '{folder}/config.json' states no vocab_size: give the folder of a text model")
    if len(tok) > vocab:
        raise NeonError(f"the tokenizer of {key} '{tokenizer or pretrained}' has {len(tok)} tokens but the model's "
                        f"vocab_size is {vocab}: ids from {vocab} on have no embedding; give the tokenizer the "
                        "model was trained with")
    return ModelFolder(folder, config, tok, sequence_start(tok, f"{key} '{tokenizer or pretrained}'"))

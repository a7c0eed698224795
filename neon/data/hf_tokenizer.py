"""A Hugging Face tokenizer from a local folder (`data.tokenizer`, the model's own with model=hf_causal_lm): text to
token ids with the UTF-8 bytes each token ends at, so that bits per byte count the same text whatever the tokenizer.
Nothing is downloaded (facts in docs/upstream/transformers.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neon.core.errors import NeonError
from neon.core.io import first_line

# the files `save_pretrained` writes for one tokenizer or another (fast: tokenizer.json; BPE: vocab.json + merges.txt;
# SentencePiece: tokenizer.model / spiece.model; WordPiece: vocab.txt), any of which makes a folder hold a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.txt", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                    "vocab.txt")


def looks_like_hub_id(path: str) -> bool:
    """'org/name' that is no local path: what from_pretrained would download, and neon never does."""
    parts = str(path).split("/")
    return (len(parts) == 2 and all(parts) and not str(path).startswith(("/", ".", "~"))
            and not Path(str(path)).expanduser().exists())


def local_folder(path: Any, key: str, what: str) -> Path:
    """`path` as an existing local folder, or a one-line error: missing, a Hub id, or a file."""
    folder = Path(str(path)).expanduser()
    if looks_like_hub_id(str(path)):
        raise NeonError(f"{key}='{path}' looks like a Hugging Face Hub id, and neon never downloads: give a local "
                        f"folder (e.g. `huggingface-cli download {path} --local-dir DIR`, then {key}=DIR)")
    if not folder.exists():
        raise NeonError(f"{key} '{path}' does not exist: give the local folder {what}")
    if not folder.is_dir():
        raise NeonError(f"{key} '{path}' is a file: give the local folder {what}")
    return folder


def quiet_transformers() -> None:
    """transformers' progress bars and advisory warnings say nothing about the run."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_tokenizer(path: Any, key: str = "data.tokenizer") -> Any:
    """`AutoTokenizer.from_pretrained` of a local folder (never the Hub), or a one-line error."""
    folder = local_folder(path, key, "that tokenizer.save_pretrained wrote")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise NeonError(f"{key} '{path}' holds no tokenizer (none of {', '.join(VOCABULARY_FILES)}): save the "
                        "model's tokenizer into it with tokenizer.save_pretrained(DIR)")
    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = first_line(exc) or type(exc).__name__
        raise NeonError(f"{key} '{path}': transformers cannot load its tokenizer ({first})") from None


def sequence_start(tokenizer: Any, where: str) -> int:
    """The id every sequence starts with: the tokenizer's BOS, else its EOS (GPT-2-style tokenizers, whose one
    special token <|endoftext|> is both); a one-line error when it has neither."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise NeonError(f"the tokenizer of {where} has neither a BOS nor an EOS token: sequences start with one (set "
                    "bos_token in its tokenizer_config.json)")


def utf8_char_ends(text: str) -> np.ndarray:
    """[len(text) + 1]: the UTF-8 byte offset at which each character starts, then the text's byte length."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    sizes = 1 + (codepoints >= 0x80).astype(np.int64) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    return np.concatenate([[0], np.cumsum(sizes)])


class HFTokenizer:
    """Text ↔ token ids through a Hugging Face tokenizer (`vocab_size`: every id it can give, added tokens
    included); no special tokens are added when encoding, so the ids are the text's alone."""

    def __init__(self, path: Any, key: str = "data.tokenizer"):
        self.path = str(path)
        self.tokenizer = load_tokenizer(path, key)
        self.vocab_size = len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode_stream(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [T], byte ends [T]): token i's text ends at UTF-8 byte `ends[i]` of `text` (non-decreasing; a
        character split over several byte-level tokens counts for the first of them). A tokenizer without
        offsets (a slow one) spreads the text's bytes over its tokens by their decoded lengths."""
        if self.tokenizer.is_fast:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            char_ends = np.maximum.accumulate(np.array([end for _, end in offsets] or [0], dtype=np.int64))
            ends = utf8_char_ends(text)[char_ends[:len(ids)]]
        else:
            ids = self.encode(text)
            ends = np.cumsum([len(self.tokenizer.decode([i]).encode("utf-8")) for i in ids]).astype(np.int64)
        return torch.tensor(ids, dtype=torch.long), torch.from_numpy(np.asarray(ends, dtype=np.int64))

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Token ids back to text (special tokens shown unless skipped)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

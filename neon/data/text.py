"""Text as tokens: a corpus of documents (by default the Python documentation topics that ship with every
CPython, `pydoc_data.topics`: no download), split by document into a training part and a held-out part, and
cut into windows of `context` token ids for the language-model families: byte ids (0–255) by default, or the ids
of a Hugging Face tokenizer from a local folder (`tokenizer`, the model's own with model=hf_causal_lm)."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from neon.core.errors import NeonError
from neon.data.batches import TensorItems, global_batch_loader
from neon.data.hf_tokenizer import HFTokenizer
from neon.metrics.evaluate import concat_features
from neon.metrics.extractors import FeatureExtractor
from neon.metrics.reference import Reference, reference_from_outputs

DEFAULT_CORPUS = "pydoc_data.topics"  # the name of the embedded corpus (data.path=null)
HELDOUT_PARTS = ("selection", "report")


class ByteTokenizer:
    """Text ↔ token ids: the UTF-8 bytes themselves (256 ids, no merges, no special tokens)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Bytes back to text; a byte sequence that is not UTF-8 (a sample cut mid-character) gives U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def encode_stream(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(byte ids [T], byte ends [T]): token i is byte i, so its text ends at byte i + 1."""
        data = text.encode("utf-8")
        ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else torch.zeros(0, dtype=torch.long)
        return ids, torch.arange(1, len(ids) + 1, dtype=torch.long)


def _missing(path: str) -> NeonError:
    return NeonError(f"data.path '{path}' does not exist: give a UTF-8 text file, a folder of them, or "
                     "data.path=null for the embedded Python-documentation corpus")


def check_corpus_path(path: str | None) -> None:
    """The cheap part of `load_corpus`'s checks: the path exists (None, the embedded corpus, always does)."""
    if path is not None and not Path(path).exists():
        raise _missing(str(path))


def _read_text(file: Path, shown: str) -> str:
    """A file's text, refusing an empty file and a binary one (NUL bytes, or not UTF-8)."""
    raw = file.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        raise NeonError(f"data.path file '{shown}' is binary (it contains NUL bytes, the first at byte {nul}): "
                        "give UTF-8 text files only (remove it or move it out of the folder)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NeonError(f"data.path file '{shown}' is binary (not valid UTF-8 at byte {exc.start}): give UTF-8 "
                        "text files only (convert it, e.g. with iconv -t UTF-8, or remove it)") from None
    if not text.strip():
        raise NeonError(f"data.path file '{shown}' is empty{' (only whitespace)' if raw else ''}: give a file "
                        "with text, or remove it")
    return text


def _split_file(text: str) -> list[str]:
    """A file's documents: its parts between runs of 2+ blank lines; fewer than 2 such parts: between single
    blank lines (a line of spaces or tabs counts as blank)."""
    for pattern in (r"\r?\n(?:[ \t]*\r?\n){2,}", r"\r?\n(?:[ \t]*\r?\n)+"):
        docs = [d.strip() for d in re.split(pattern, text) if d.strip()]
        if len(docs) >= 2:
            return docs
    return docs


def load_corpus(path: str | None) -> tuple[list[str], str]:
    """The documents of a corpus and its name (for messages and provenance). None: the Python documentation
    topics, one document per topic in sorted order; a file: its parts between runs of blank lines (see
    `_split_file`); a folder: every regular file below it, hidden ones skipped, in sorted order."""
    if path is None:
        from pydoc_data.topics import topics

        version = f"{sys.version_info[0]}.{sys.version_info[1]}"  # each Python ships its own edition of the text
        return [topics[name] for name in sorted(topics)], f"{DEFAULT_CORPUS} (Python {version})"
    root = Path(path)
    if not root.exists():
        raise _missing(str(path))
    if root.is_file():
        return _split_file(_read_text(root, str(path))), str(path)
    files = sorted((f for f in root.rglob("*") if f.is_file()
                    and not any(part.startswith(".") for part in f.relative_to(root).parts)),
                   key=lambda f: f.relative_to(root).as_posix())
    if not files:
        raise NeonError(f"data.path folder '{path}' holds no files (hidden ones are skipped): put UTF-8 text files "
                        "in it (one document each), or give a file")
    return [_read_text(f, str(f)) for f in files], str(path)


def corpus_digest(docs: list[str]) -> str:
    """A content hash of the documents (in order): cache keys change when a corpus file is edited."""
    h = hashlib.sha256()
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def split_documents(docs: list[str], heldout_fraction: float, split_seed: int,
                    source: str = "") -> tuple[list[str], list[str]]:
    """(train, held-out) documents: a permutation drawn from `split_seed`; round(n · heldout_fraction) documents
    held out, at least one in each part. Each part keeps the corpus order. `source` names the corpus in errors."""
    if not 0 < heldout_fraction < 1:
        raise NeonError(f"data.heldout_fraction={heldout_fraction} must lie strictly between 0 and 1 (e.g. 0.1)")
    if len(docs) < 2:
        named = f" {source!r}" if source else ""
        raise NeonError(f"data.path{named} gives {len(docs)} document(s), but a training and a held-out part need "
                        "at least 2: separate documents with blank lines, or give a folder with one file per document")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(int(split_seed))).tolist()
    n_held = min(max(1, round(len(docs) * heldout_fraction)), len(docs) - 1)
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [docs[i] for i in train], [docs[i] for i in held]


def windows_of(stream: torch.Tensor, context: int) -> torch.Tensor:
    """Non-overlapping windows [N, context] of a token stream (the incomplete tail dropped)."""
    n = len(stream) // context
    return stream[:n * context].reshape(n, context).clone()


def window_bytes(ends: torch.Tensor, context: int) -> torch.Tensor:
    """The UTF-8 bytes of text each window of `windows_of(stream, context)` covers, from the byte each token of the
    stream ends at (`encode_stream`): from where the token before the window ends to where its last token ends."""
    last = windows_of(ends, context)[:, -1]
    return last - torch.cat([last.new_zeros(1), last[:-1]])


def corpus_parts(path: str | None, context: int, heldout_fraction: float, split_seed: int,
                 tokenizer: ByteTokenizer | HFTokenizer | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, str]:
    """(train windows, held-out windows, the UTF-8 bytes each held-out window covers, corpus name, content digest)
    of a corpus tokenised by `tokenizer` (None: bytes), checked for length. Each part is its documents joined by
    blank lines ("\\n\\n"), as text, then tokenised: every tokenizer sees the same text, so bits per byte compare."""
    tokenizer = tokenizer or ByteTokenizer()
    docs, name = load_corpus(path)
    train_docs, held_docs = split_documents(docs, heldout_fraction, split_seed, name)
    train_stream, _ = tokenizer.encode_stream("\n\n".join(train_docs))
    held_stream, held_ends = tokenizer.encode_stream("\n\n".join(held_docs))
    train, held = windows_of(train_stream, context), windows_of(held_stream, context)
    if len(train) < 1 or len(held) < 2:
        raise NeonError(f"data.context={context} is too long for corpus '{name}': its training part has "
                        f"{len(train_stream)} tokens ({len(train)} windows, need ≥ 1) and its held-out part "
                        f"{len(held_stream)} ({len(held)} windows, need ≥ 2): lower data.context, give a longer "
                        "corpus (data.path), or raise data.heldout_fraction")
    return train, held, window_bytes(held_ends, context), name, corpus_digest(docs)


class TextDataModule(L.LightningDataModule):
    """Text as tokens (bytes, or a Hugging Face tokenizer's ids with `tokenizer`, a local folder): non-overlapping
    training windows of `context` tokens, and held-out windows from documents the model never trains on (split by
    `split_seed`), in two disjoint halves: 'selection' (even-indexed windows) to pick on and 'report' (odd-indexed)
    to report."""

    def __init__(
        self,
        path: str | None = None,
        context: int = 64,
        heldout_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
    ):
        super().__init__()
        if int(context) < 2:
            raise NeonError(f"data.context={context} must be at least 2 tokens (e.g. 64)")
        if int(batch_size) < 1:
            raise NeonError(f"data.batch_size={batch_size} must be at least 1")
        self.path, self.context = path, int(context)
        self.heldout_fraction, self.split_seed = float(heldout_fraction), int(split_seed)
        self.batch_size, self.seed, self.num_workers = int(batch_size), int(seed), num_workers
        self.tokenizer = ByteTokenizer() if tokenizer is None else HFTokenizer(tokenizer, "data.tokenizer")
        self.vocab_size = self.tokenizer.vocab_size
        self.num_classes = 0
        self.windows, self.heldout, self.heldout_bytes, self.corpus_name, self.corpus_digest = corpus_parts(
            path, self.context, self.heldout_fraction, self.split_seed, self.tokenizer)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """The pre-flight (neon.stages.front.check_data): the module built once, so that a missing, empty or
        binary corpus, a tokenizer folder that is not one, or a context longer than the corpus is one line before
        any work (reading and tokenising a corpus is cheap)."""
        cls(**settings)

    def train_dataloader(self) -> DataLoader:
        return global_batch_loader(TensorItems({"x": self.windows}), self.batch_size, self.seed, self.num_workers)

    def heldout_windows(self, part: str) -> torch.Tensor:
        """Held-out windows [N, context]: 'selection' the even-indexed ones, 'report' the odd-indexed ones."""
        if part not in HELDOUT_PARTS:
            raise NeonError(f"held-out part '{part}' does not exist: use one of {', '.join(HELDOUT_PARTS)}")
        return self.heldout[HELDOUT_PARTS.index(part)::2]

    def byte_count(self, part: str) -> int:
        """The UTF-8 bytes of text that part's windows cover (bytes: one per token), for bits per byte."""
        self.heldout_windows(part)  # the part's name checked
        return int(self.heldout_bytes[HELDOUT_PARTS.index(part)::2].sum())

    @torch.no_grad()
    def reference(self, extractor: FeatureExtractor, batch: int = 500) -> Reference:
        """Features (kept: MAUVE, KID and P/R need them) and statistics of all held-out windows."""
        outputs = concat_features(extractor.extract(self.heldout[i:i + batch])
                                  for i in range(0, len(self.heldout), batch))
        return reference_from_outputs(outputs, f"{self.corpus_name} held-out windows (context {self.context})")

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Token ids [N, L] → N strings."""
        return [self.tokenizer.decode(row) for row in tokens.long().tolist()]


class PromptBank:
    """Prompts from real held-out text (`sampler=lm_prompted`): the sequence of seed s starts with the first
    `length` tokens of held-out window s mod N of `part` ('selection' or 'report'), tokenised as data=text does."""

    def __init__(self, length: int, path: str | None = None, context: int = 64, heldout_fraction: float = 0.1,
                 split_seed: int = 0, tokenizer: str | None = None, part: str = "selection"):
        data = TextDataModule(path, context, heldout_fraction, split_seed, tokenizer=tokenizer)
        if not 0 < int(length) < data.context:
            raise NeonError(f"sampler.prompts.length={length} must lie between 1 and {data.context - 1} (the prompt "
                            "is the start of a held-out window)")
        self.windows = data.heldout_windows(part)[:, :int(length)]

    def prefixes(self, seeds: Sequence[int]) -> torch.Tensor:
        """The prompt of each seed [len(seeds), length]."""
        return self.windows[torch.tensor([int(s) % len(self.windows) for s in seeds], dtype=torch.long)]

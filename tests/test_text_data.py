"""data=text: the embedded Python-documentation corpus and corpora from files and folders, the document split,
the training and held-out windows, and the one-line errors for corpora that cannot be used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neon.core.errors import NeonError
from neon.data.text import ByteTokenizer, TextDataModule, load_corpus, split_documents
from neon.metrics.extractors import IdentityFeatures

ROOT = Path(__file__).resolve().parent.parent


def corpus_file(tmp_path: Path, docs: int = 6, words: int = 40, sep: str = "\n\n\n") -> Path:
    """A file of `docs` documents (distinct words per document) separated by `sep`."""
    path = tmp_path / "corpus.txt"
    path.write_text(sep.join(" ".join(f"d{d}w{w}" for w in range(words)) for d in range(docs)), encoding="utf-8")
    return path


def one_line_error(match: str, call, *args, **kwargs) -> str:
    with pytest.raises(NeonError, match=match) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_tokenizer_round_trip_is_utf8_bytes():
    tok = ByteTokenizer()
    text = "naïve — ünïcode ✓"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(torch.tensor([0xE2, 0x9C])) == "\ufffd"  # a cut character decodes to U+FFFD, no error
    assert max(tok.encode(text)) < tok.vocab_size == 256


def test_default_corpus_is_pydoc_topics_and_its_split_is_seeded():
    from pydoc_data.topics import topics

    docs, name = load_corpus(None)
    assert len(docs) == 79 == len(topics)
    assert docs == [topics[k] for k in sorted(topics)]
    assert "pydoc_data" in name
    train, held = split_documents(docs, 0.1, 0)
    assert (train, held) == split_documents(docs, 0.1, 0)  # the same on every call
    assert held != split_documents(docs, 0.1, 1)[1]  # another split_seed holds out other documents
    assert len(held) == 8 and len(train) == 71
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(docs)


def test_split_refuses_bad_fraction_and_keeps_one_document_each():
    docs = ["a", "b", "c"]
    for fraction in (0.0, 1.0, -0.1, 1.5):
        assert "data.heldout_fraction" in one_line_error("strictly between 0 and 1", split_documents, docs, fraction, 0)
    train, held = split_documents(docs, 0.01, 0)
    assert len(held) == 1 and len(train) == 2
    train, held = split_documents(docs, 0.99, 0)
    assert len(held) == 2 and len(train) == 1
    one_line_error("data.path gives 1 document", split_documents, ["only"], 0.5, 0)


def test_a_file_of_one_paragraph_is_refused_naming_it(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single paragraph\nof two lines\n")
    message = one_line_error("gives 1 document", TextDataModule, path=str(path), context=4)
    assert f"data.path '{path}'" in message and "blank lines" in message


def test_train_windows_decode_back_to_the_training_text(tmp_path):
    path = corpus_file(tmp_path)
    data = TextDataModule(path=str(path), context=8, heldout_fraction=0.34, batch_size=4)
    docs, _ = load_corpus(str(path))
    assert len(docs) == 6
    train_docs, held_docs = split_documents(docs, 0.34, 0)
    assert data.windows.dtype == torch.long and data.windows.shape[1] == 8
    train_text = "\n\n".join(train_docs)
    assert len(data.windows) == len(train_text.encode()) // 8
    assert "".join(data.decode(data.windows)) == train_text[:len(data.windows) * 8]  # ASCII: a byte per character
    held_text = "".join(data.decode(data.heldout))
    assert held_text == "\n\n".join(held_docs)[:len(held_text)]
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"x"} and batch["x"].shape == (4, 8) and batch["x"].dtype == torch.long
    assert data.num_classes == 0 and data.vocab_size == 256


def test_selection_and_report_are_disjoint_halves_of_heldout(tmp_path):
    data = TextDataModule(path=str(corpus_file(tmp_path, docs=8)), context=16, heldout_fraction=0.25)
    sel, rep = data.heldout_windows("selection"), data.heldout_windows("report")
    assert len(sel) > 0 and len(rep) > 0
    assert len(sel) + len(rep) == len(data.heldout)
    assert torch.equal(sel, data.heldout[0::2]) and torch.equal(rep, data.heldout[1::2])
    # the words of document k read dKw…: held-out windows come from other documents than the training windows
    def documents_in(windows: torch.Tensor) -> set[str]:
        return set(re.findall(r"d(\d+)w", "".join(data.decode(windows))))

    held_docs = documents_in(data.heldout)
    assert held_docs and documents_in(data.windows) and not held_docs & documents_in(data.windows)
    assert documents_in(sel) | documents_in(rep) == held_docs
    assert data.byte_count("report") == rep.numel()
    one_line_error("held-out part 'test' does not exist", data.heldout_windows, "test")


def test_reference_keeps_the_real_features_of_all_heldout_windows(tmp_path):
    data = TextDataModule(path=str(corpus_file(tmp_path)), context=8, heldout_fraction=0.34)
    ref = data.reference(IdentityFeatures())
    assert ref.features is not None and ref.features.shape == (len(data.heldout), 8)
    assert (ref.features == data.heldout.numpy()).all()
    assert ref.mu.shape == (8,) and ref.sigma.shape == (8, 8)


def test_file_splits_at_double_blank_lines_else_single(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n\ntwo\n\n\nthree\n \n\t\nfour\n")
    assert load_corpus(str(path))[0] == ["one\n\ntwo", "three", "four"]
    path.write_text("one\n\ntwo\n  \nthree\n")
    assert load_corpus(str(path))[0] == ["one", "two", "three"]


def test_folder_gives_one_document_per_file_sorted_hidden_skipped(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("second\n\n\nstill second")
    (root / "a.txt").write_text("first")
    (root / "sub" / "c.md").write_text("third")
    (root / ".hidden").write_text("skipped")
    (root / ".git" / "config").write_text("skipped")
    docs, name = load_corpus(str(root))
    assert docs == ["first", "second\n\n\nstill second", "third"]
    assert name == str(root)


def test_corpus_errors_are_one_line_naming_the_key_and_file(tmp_path):
    missing = tmp_path / "nope.txt"
    message = one_line_error("does not exist", load_corpus, str(missing))
    assert "data.path" in message and str(missing) in message

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    message = one_line_error("is empty", load_corpus, str(empty))
    assert "data.path" in message and str(empty) in message
    empty.write_text(" \n\n \n")
    one_line_error("is empty", load_corpus, str(empty))

    nul = tmp_path / "nul.bin"
    nul.write_bytes(b"text\0more")
    message = one_line_error("binary.*NUL", load_corpus, str(nul))
    assert "data.path" in message and str(nul) in message

    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    message = one_line_error("not valid UTF-8", load_corpus, str(latin))
    assert "data.path" in message and str(latin) in message

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / ".only_hidden").write_text("x")
    message = one_line_error("holds no files", load_corpus, str(folder))
    assert "data.path" in message and str(folder) in message
    (folder / "bad.txt").write_bytes(b"\xff\xfe")
    assert str(folder / "bad.txt") in one_line_error("not valid UTF-8", load_corpus, str(folder))


def test_module_errors_name_the_key(tmp_path):
    path = str(corpus_file(tmp_path, docs=4, words=5))
    message = one_line_error("data.context=4096 is too long", TextDataModule, path=path, context=4096)
    assert "tokens" in message and "lower data.context" in message
    one_line_error("data.context=1 must be at least 2", TextDataModule, path=path, context=1)
    one_line_error("data.batch_size=0 must be at least 1", TextDataModule, path=path, context=8, batch_size=0)
    one_line_error("data.path .* does not exist", TextDataModule, path=str(tmp_path / "missing"))


def test_config_builds_the_module_on_the_default_corpus():
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "text.yaml")
    assert cfg.path is None
    data = instantiate(cfg)
    assert isinstance(data, TextDataModule) and data.context == cfg.context
    assert "pydoc_data" in data.corpus_name
    assert len(data.windows) > 1000 and len(data.heldout_windows("report")) > 100

"""Text metrics: distinct-n, self-BLEU (torchmetrics' BLEU), MAUVE (mauve-text), the text encoder (trained once,
deterministic, cached, and telling real text from scrambled), and compute_scores' text metrics."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.text import bleu_score

from neon.core.errors import NeonError
from neon.data.text import TextDataModule
from neon.metrics import text as text_metrics
from neon.metrics.frechet import feature_statistics, frechet_distance
from neon.metrics.reference import Reference, reference_from_features
from neon.metrics.scores import compute_scores
from neon.metrics.text import TextEncoderFeatures, distinct_n, mauve, self_bleu

TINY_ENCODER = dict(context=16, heldout_fraction=0.25, dim=16, steps=20, layers=2, batch_size=8)


def tiny_corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n\n".join(f"Document {d}: " + " ".join(f"word{(d * w) % 17}" for w in range(30))
                                  for d in range(8)))
    return str(path)


def test_distinct_n_known_answers():
    x = np.array([[1, 2, 1, 2]])
    assert distinct_n(x, 1) == 2 / 4
    assert distinct_n(x, 2) == 2 / 3  # (1,2) (2,1) (1,2)
    assert distinct_n(x, 4) == 1.0
    assert math.isnan(distinct_n(x, 5))  # no 5-grams in 4 tokens
    # n-grams are counted over all samples together, never across two samples
    assert distinct_n(np.array([[1, 2, 3], [1, 2, 3]]), 3) == 1 / 2
    assert distinct_n(np.array([[1, 2], [3, 1]]), 2) == 1.0  # (2, 3) would join the rows: not an n-gram
    assert distinct_n(np.array([[5, 5, 5, 5], [5, 5, 5, 5]]), 2) == 1 / 6
    # ids beyond bytes take the general path and give the same kind of answer
    assert distinct_n(np.array([[300, 1, 300, 1]]), 2) == 2 / 3
    assert distinct_n(np.array([[256, 0], [0, 256]]), 1) == 2 / 4


def test_self_bleu_identical_is_one_varied_is_lower_and_matches_torchmetrics():
    same = np.tile(np.arange(20), (10, 1))
    assert self_bleu(same) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    varied = rng.integers(0, 256, (50, 20))
    assert self_bleu(varied) < 0.1
    for _ in range(3):
        x = rng.integers(0, 4, (12, 10))
        texts = [" ".join(map(str, row)) for row in x]
        for max_n, smooth in ((4, False), (3, True)):
            direct = np.mean([float(bleu_score([t], [texts[:i] + texts[i + 1:]], n_gram=max_n, smooth=smooth))
                              for i, t in enumerate(texts)])
            assert self_bleu(x, max_n=max_n, smooth=smooth) == pytest.approx(direct, abs=1e-6)


def test_self_bleu_subset_is_seeded():
    x = np.random.default_rng(1).integers(0, 3, (40, 8))
    assert self_bleu(x, num_samples=10, seed=3) == self_bleu(x, num_samples=10, seed=3)
    assert len({self_bleu(x, num_samples=10, seed=s) for s in range(4)}) > 1


def test_mauve_is_higher_for_the_same_distribution():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    same = rng.normal(size=(200, 8))
    shifted = rng.normal(size=(200, 8)) + 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        near, far = mauve(real, same), mauve(real, shifted)
    assert near > 0.8 and far < 0.3


def test_encoder_is_deterministic_and_reused_from_the_cache(tmp_path, monkeypatch):
    corpus = tiny_corpus(tmp_path)
    a = TextEncoderFeatures(str(tmp_path / "a"), path=corpus, **TINY_ENCODER)
    b = TextEncoderFeatures(str(tmp_path / "b"), path=corpus, **TINY_ENCODER)
    sa, sb = a.network().state_dict(), b.network().state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.training_info["train_seconds"] >= 0

    def no_training(*args, **kwargs):
        raise AssertionError("the encoder was trained again")

    monkeypatch.setattr(text_metrics, "train_encoder", no_training)
    again = TextEncoderFeatures(str(tmp_path / "a"), path=corpus, **TINY_ENCODER)
    sc = again.network().state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    assert again.training_info == a.training_info
    with pytest.raises(AssertionError, match="trained again"):  # other settings: another key, a new training
        TextEncoderFeatures(str(tmp_path / "a"), path=corpus, **{**TINY_ENCODER, "steps": 21}).network()
    Path(corpus).write_text(Path(corpus).read_text() + " edited")  # an edited corpus is another key too
    with pytest.raises(AssertionError, match="trained again"):
        TextEncoderFeatures(str(tmp_path / "a"), path=corpus, **TINY_ENCODER).network()


def test_encoder_trains_on_the_training_documents_only(tmp_path, monkeypatch):
    corpus = tiny_corpus(tmp_path)
    seen = {}
    real_training = text_metrics.train_encoder

    def spy(train, heldout, *args, **kwargs):
        seen["train"], seen["heldout"] = train, heldout
        return real_training(train, heldout, *args, **kwargs)

    monkeypatch.setattr(text_metrics, "train_encoder", spy)
    TextEncoderFeatures(str(tmp_path / "cache"), path=corpus, **TINY_ENCODER).network()
    data = TextDataModule(path=corpus, context=16, heldout_fraction=0.25)
    assert torch.equal(seen["train"], data.windows) and torch.equal(seen["heldout"], data.heldout)
    trained_on = "".join(data.decode(seen["train"]))
    held_out = set(re.findall(r"Document \d+:", "".join(data.decode(data.heldout))))
    assert held_out and not any(doc in trained_on for doc in held_out)


def test_encoder_outputs_and_checks(tmp_path):
    enc = TextEncoderFeatures(str(tmp_path / "cache"), path=tiny_corpus(tmp_path), **TINY_ENCODER)
    enc.check_ready()
    assert not (tmp_path / "cache").exists()  # nothing trained by the check
    x = torch.randint(0, 256, (5, 16))
    out = enc.extract(x)
    assert out["pool"].shape == (5, 17) == (5, enc.feature_dim) and out["tokens"].dtype == torch.float32
    assert torch.equal(out["tokens"].long(), x)
    assert torch.equal(enc(x), out["pool"]) and torch.equal(enc(x.float()), out["pool"])
    assert enc.extra_outputs() == ("tokens",)
    with pytest.raises(NeonError, match="byte ids 0–255"):
        enc.extract(torch.full((2, 16), 300))
    with pytest.raises(NeonError, match="data.path"):
        TextEncoderFeatures(str(tmp_path / "cache"), path=str(tmp_path / "missing")).check_ready()


def test_encoder_features_tell_real_text_from_scrambled(tmp_path):
    data = TextDataModule(context=64)  # the embedded corpus: the encoder learns real text
    enc = TextEncoderFeatures(str(tmp_path), context=64, dim=32, steps=150, layers=3)
    sel, rep = data.heldout_windows("selection"), data.heldout_windows("report")
    gen = torch.Generator().manual_seed(0)
    scrambled = torch.stack([row[torch.randperm(len(row), generator=gen)] for row in rep])
    real_a, real_b, fake = enc(sel).double().numpy(), enc(rep).double().numpy(), enc(scrambled).double().numpy()
    real_vs_real = frechet_distance(*feature_statistics(real_a), *feature_statistics(real_b))
    real_vs_fake = frechet_distance(*feature_statistics(real_a), *feature_statistics(fake))
    assert real_vs_fake > 10 * real_vs_real, (real_vs_real, real_vs_fake)
    ref = data.reference(enc)
    assert ref.features.shape == (len(data.heldout), 33)


def test_compute_scores_gives_the_text_metrics():
    rng = np.random.default_rng(0)
    tokens = rng.integers(97, 100, (200, 16)).astype(np.float32)
    features = {"pool": rng.normal(size=(200, 4)), "tokens": tokens}
    ref = reference_from_features(rng.normal(size=(200, 4)), "real")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_scores(features, ref, ["fid", "distinct", "self_bleu", "mauve"])
    assert set(out) == {"num_samples", "fid", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "self_bleu",
                        "mauve"}
    assert out["distinct_1"] == 3 / (200 * 16)  # three letters
    assert out["distinct_2"] == pytest.approx(9 / (200 * 15))
    assert out["self_bleu"] == pytest.approx(self_bleu(tokens.astype(np.int64)))
    assert 0.5 < out["mauve"] <= 1 and out["fid"] < 1

    stats_only = Reference(ref.mu, ref.sigma, None, "stats")
    with pytest.warns(UserWarning, match="mauve needs real features"):
        assert compute_scores(features, stats_only, ["mauve"])["mauve"] is None


def test_text_metrics_without_tokens_are_a_one_line_error():
    rng = np.random.default_rng(0)
    ref = reference_from_features(rng.normal(size=(50, 4)), "real")
    for name in ("distinct", "self_bleu"):
        with pytest.raises(NeonError, match=f"asks for {name}.*text extractor \\(metrics=text\\)") as info:
            compute_scores({"pool": rng.normal(size=(50, 4))}, ref, [name])
        assert "\n" not in str(info.value)
    with pytest.raises(NeonError, match="use fid, sfid, fd_dinov2, isc, kid or pr .*mauve, distinct, self_bleu"):
        compute_scores({"pool": rng.normal(size=(50, 4))}, ref, ["bleu"])

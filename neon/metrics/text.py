"""Text metrics: features of byte sequences from a small encoder trained once on the real corpus's training
part (seeded, deterministic, cached, as digits-FID's classifier is), and the text scores that use them or the
samples' tokens: MAUVE (the `mauve-text` package), distinct-n and self-BLEU (torchmetrics' BLEU)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from neon.core.cache import ArtifactCache
from neon.core.errors import NeonError
from neon.core.io import save_state_dict, write_json
from neon.core.seeding import fixed_threads
from neon.data.hf_tokenizer import HFTokenizer
from neon.data.text import ByteTokenizer, check_corpus_path, corpus_parts
from neon.metrics.extractors import FeatureExtractor


class ByteEncoder(nn.Module):
    """Byte embedding → causal dilated 1D convolutions (residual, GELU) → LayerNorm [hidden] → next-byte head.

    Features [dim + 1]: the hidden layer mean-pooled over the positions, and the window's mean next-byte loss
    (bits per byte). The pooled hidden layer alone is dominated by which bytes occur (the residual stream carries
    each byte's embedding), so it hardly tells text from the same bytes scrambled; the loss, how well a model of
    the real corpus predicts the window, does (on the default corpus a Fréchet distance of real vs byte-shuffled
    windows ~250× that of real vs real, against ~7× without it). A distribution of losses is compared, not its
    mean: too predictable (repetitive) text is as far from the real windows as too unpredictable text."""

    def __init__(self, dim: int = 64, layers: int = 4, kernel: int = 3):
        super().__init__()
        self.kernel = kernel
        self.embed = nn.Embedding(ByteTokenizer.vocab_size, dim)
        self.dilations = [2 ** i for i in range(layers)]
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, dilation=d) for d in self.dilations)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, ByteTokenizer.vocab_size)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Byte ids [N, L] → hidden states [N, L, dim]; position t sees bytes ≤ t only."""
        h = self.embed(x).transpose(1, 2)
        for conv, d in zip(self.convs, self.dilations, strict=True):
            h = h + F.gelu(conv(F.pad(h, ((self.kernel - 1) * d, 0))))
        return self.norm(h.transpose(1, 2))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Byte ids [N, L ≥ 2] → [N, dim + 1]: mean-pooled hidden states, then the mean next-byte loss in bits."""
        h = self.hidden(x)
        logits = self.head(h[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").mean(1) / math.log(2)
        return torch.cat([h.mean(1), loss[:, None]], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-byte logits [N, L, 256]."""
        return self.head(self.hidden(x))


def next_byte_loss(net: ByteEncoder, x: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of each byte given the ones before it in its window."""
    logits = net(x[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def train_encoder(train: torch.Tensor, heldout: torch.Tensor, dim: int = 64, layers: int = 4, steps: int = 600,
                  batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> tuple[ByteEncoder, dict[str, float]]:
    """Train on the training windows only (seeded: the same weights every time); return the network and its
    final training and held-out next-byte losses in bits per byte (the held-out windows are only measured)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ByteEncoder(dim, layers)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)
        loss = next_byte_loss(net, train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        held = float(np.mean([next_byte_loss(net, heldout[i:i + 256]).item() for i in range(0, len(heldout), 256)]))
    bits = 1 / np.log(2)
    train_loss = float(np.mean(losses[-20:])) if losses else float("nan")
    return net, {"train_bits_per_byte": float(train_loss * bits), "heldout_bits_per_byte": float(held * bits),
                 "train_seconds": seconds}


class TextEncoderFeatures(FeatureExtractor):
    """Features of byte sequences [N, L] for text scores: 'pool' ([N, dim + 1]: the mean-pooled hidden layer of
    a `ByteEncoder` trained on the corpus's training part only, cached under `cache_dir`, and its next-byte loss)
    and 'tokens' (the token ids themselves as float32 [N, L], for distinct-n and self-BLEU). The corpus settings
    (path, context, heldout_fraction, split_seed) must match data=text's, so that no held-out text is trained on.

    With `tokenizer` (a local Hugging Face tokenizer folder: data=text's own), the sequences are that tokenizer's
    ids: each is decoded to text (special tokens skipped) and its UTF-8 bytes, cut or padded with spaces to
    `context` bytes, are what the byte-level encoder reads; 'tokens' stays the token ids."""

    name = "text_encoder"

    def __init__(self, cache_dir: str, path: str | None = None, context: int = 64, heldout_fraction: float = 0.1,
                 split_seed: int = 0, dim: int = 64, steps: int = 600, seed: int = 0, layers: int = 4,
                 batch_size: int = 32, lr: float = 3e-3, tokenizer: str | None = None):
        self.cache_dir, self.path, self.context = cache_dir, path, int(context)
        self.tokenizer_path = tokenizer
        self._tokenizer: HFTokenizer | None = None
        self.heldout_fraction, self.split_seed = float(heldout_fraction), int(split_seed)
        self.dim, self.steps, self.seed = int(dim), int(steps), int(seed)
        self.layers, self.batch_size, self.lr = int(layers), int(batch_size), float(lr)
        self.feature_dim = self.dim + 1  # the pooled hidden layer and the next-byte loss
        self._net: ByteEncoder | None = None
        self.training_info: dict[str, float] | None = None

    def network(self) -> ByteEncoder:
        """The trained encoder (trained on first use, then read from the cache)."""
        if self._net is None:
            train, heldout, _, corpus, digest = corpus_parts(self.path, self.context, self.heldout_fraction,
                                                             self.split_seed)

            def build(work: Path) -> None:
                # first use may come from inside a no-grad evaluation; one thread: the same weights on any machine
                with torch.enable_grad(), fixed_threads():
                    net, info = train_encoder(train, heldout, self.dim, self.layers, self.steps, self.batch_size,
                                              self.lr, self.seed)
                save_state_dict(net.state_dict(), work / "encoder.safetensors")
                write_json(work / "training.json", info)

            key = {"extractor": "text_encoder", "corpus": corpus, "corpus_digest": digest, "context": self.context,
                   "heldout_fraction": self.heldout_fraction, "split_seed": self.split_seed, "dim": self.dim,
                   "layers": self.layers, "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr,
                   "seed": self.seed, "version": 1}
            folder, _ = ArtifactCache(self.cache_dir).get_or_build("extractor", key, build)
            net = ByteEncoder(self.dim, self.layers)
            net.load_state_dict(load_file(folder / "encoder.safetensors"))
            self._net = net.eval()
            self.training_info = json.loads((folder / "training.json").read_text())
        return self._net

    def check_ready(self) -> None:
        """Only that the corpus path exists (the encoder itself is trained on first use)."""
        check_corpus_path(self.path)

    def tokenizer(self) -> HFTokenizer | None:
        """The Hugging Face tokenizer of the sequences (loaded on first use), or None for byte ids."""
        if self._tokenizer is None and self.tokenizer_path is not None:
            self._tokenizer = HFTokenizer(self.tokenizer_path, "metrics.extractor.tokenizer")
        return self._tokenizer

    def text_bytes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] of the tokenizer as byte ids [N, context]: each row's text (special tokens skipped) in
        UTF-8, cut to `context` bytes or padded with spaces."""
        tokenizer = self.tokenizer()
        ids = tokens.round().long() if tokens.is_floating_point() else tokens.long()
        rows = [tokenizer.decode(row, skip_special_tokens=True).encode("utf-8")[:self.context] for row in ids.cpu()]
        padded = bytearray(b"".join(row.ljust(self.context, b" ") for row in rows))
        if not padded:
            return torch.zeros(0, self.context, dtype=torch.long)
        return torch.frombuffer(padded, dtype=torch.uint8).long().reshape(len(rows), self.context)

    def extra_outputs(self) -> tuple[str, ...]:
        return ("tokens",)

    @staticmethod
    def byte_ids(tokens: torch.Tensor) -> torch.Tensor:
        """Token ids as int64 [N, L] (float ids, as read back from feature files, rounded), checked to be bytes."""
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise NeonError(f"the text encoder reads token ids [N, L ≥ 2]; got shape {tuple(tokens.shape)}: "
                            "use it (metrics=text) with a language-model family and data=text")
        ids = tokens.round().long() if tokens.is_floating_point() else tokens.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= ByteTokenizer.vocab_size):
            raise NeonError(f"the text encoder reads byte ids 0–255; got values in [{int(ids.min())}, "
                            f"{int(ids.max())}]: use it (metrics=text) with a byte-level family and data=text")
        return ids.cpu()

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the byte-level encoder reads of the sequences `x`: their byte ids, or (with a tokenizer) their
        text's bytes."""
        if self.tokenizer_path is None:
            return self.byte_ids(x)
        if x.ndim != 2:
            raise NeonError(f"the text encoder reads token ids [N, L]; got shape {tuple(x.shape)}: use it "
                            "(metrics=text) with a language-model family and data=text")
        return self.text_bytes(x)

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = self.encoder_input(x)
        tokens = ids if self.tokenizer_path is None else (x.round() if x.is_floating_point() else x).long().cpu()
        return {"pool": self.network().features(ids), "tokens": tokens.float()}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.network().features(self.encoder_input(x))


def distinct_n(tokens: np.ndarray, n: int) -> float:
    """Distinct n-grams / all n-grams, over every sample's n-grams together (an n-gram never spans two
    samples); NaN when the samples are shorter than n."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or n < 1:
        raise ValueError(f"distinct_n needs tokens [N, L] and n ≥ 1; got shape {tokens.shape}, n={n}")
    if tokens.shape[1] < n or len(tokens) == 0:
        return float("nan")
    grams = np.lib.stride_tricks.sliding_window_view(tokens.astype(np.int64), n, axis=1).reshape(-1, n)
    if grams.min() >= 0 and grams.max() < 256 and n <= 7:  # bytes: each n-gram packed into one integer
        return len(np.unique(grams @ (256 ** np.arange(n, dtype=np.int64)))) / len(grams)
    return len(np.unique(grams, axis=0)) / len(grams)


def self_bleu(tokens: np.ndarray, max_n: int = 4, num_samples: int = 200, seed: int = 0,
              smooth: bool = False) -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen): the mean BLEU-`max_n` of each of up to `num_samples` samples (a
    subset drawn from `seed`) against all the other samples of the subset as references; 1 means every sample
    repeats the others. BLEU is torchmetrics' (tokens as space-joined ids): its n-gram counting and its score
    formula, with each sample's n-grams counted once instead of once per sample that uses it as a reference
    (the same numbers as `bleu_score([sample], [others])` for each sample, n times faster)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or len(tokens) < 2:
        raise ValueError(f"self-BLEU needs at least 2 samples [N, L]; got shape {tokens.shape}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(tokens), size=min(num_samples, len(tokens)), replace=False))
    texts = [" ".join(str(int(t)) for t in row) for row in tokens[chosen].astype(np.int64)]
    try:
        from torchmetrics.functional.text.bleu import _bleu_score_compute, _count_ngram, _tokenize_fn
    except ImportError:  # torchmetrics moved its helpers: its public sentence BLEU, once per sample (slower)
        from torchmetrics.functional.text import bleu_score

        return float(np.mean([float(bleu_score([text], [texts[:i] + texts[i + 1:]], n_gram=max_n, smooth=smooth))
                              for i, text in enumerate(texts)]))
    words = [_tokenize_fn(text) for text in texts]
    counts = [_count_ngram(w, max_n) for w in words]
    # per n-gram: the largest count over all samples, the one sample holding it (-1: several), the second largest
    top: dict[tuple, list[int]] = {}
    for i, counter in enumerate(counts):
        for gram, k in counter.items():
            entry = top.get(gram)
            if entry is None:
                top[gram] = [k, i, 0]
            elif k > entry[0]:
                entry[:] = [k, i, entry[0]]
            elif k == entry[0]:
                entry[1:] = [-1, k]
            elif k > entry[2]:
                entry[2] = k
    lengths = [len(w) for w in words]
    weights = [1.0 / max_n] * max_n
    scores = []
    for i, counter in enumerate(counts):
        numerator, denominator = torch.zeros(max_n), torch.zeros(max_n)
        for gram, k in counter.items():
            best, holder, second = top[gram]
            numerator[len(gram) - 1] += min(k, second if holder == i else best)  # clipped by the other samples
            denominator[len(gram) - 1] += k
        others = lengths[:i] + lengths[i + 1:]
        closest = min(others, key=lambda n: abs(n - lengths[i]))  # the first of the closest, as torchmetrics picks
        scores.append(float(_bleu_score_compute(torch.tensor(float(lengths[i])), torch.tensor(float(closest)),
                                                numerator, denominator, max_n, weights, smooth)))
    return float(np.mean(scores))


def mauve(p_features: np.ndarray, q_features: np.ndarray, seed: int = 25) -> float:
    """MAUVE (Pillutla et al. 2021) of two feature sets (real p, generated q), from the `mauve-text` package on
    features we give it (no network of its own, no download). 1: indistinguishable, near 0: far apart."""
    # mauve-text is GPLv3: imported here only, when the metric is asked for
    import mauve as mauve_text

    out = mauve_text.compute_mauve(p_features=np.asarray(p_features, np.float32),
                                   q_features=np.asarray(q_features, np.float32), seed=seed, verbose=False)
    return float(out.mauve)

"""Scores of weights loaded into one module: the evaluation sampler on fixed seeds against the reference
statistics, cached by the weights' digest and the metric settings."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neon.analysis.output_twin import OutputTwin, build_twin
from neon.core.collectives import is_main
from neon.core.contract import HasLikelihood, NeonModule
from neon.core.errors import NeonError
from neon.core.io import StateDict, digest_state_dict, read_json, write_json
from neon.core.release_sampling import ReleaseSampling
from neon.core.values import plain, positive_int
from neon.metrics.build import build_extractor, extractor_key
from neon.metrics.evaluate import release_features, sample_features
from neon.metrics.reference import Reference, load_reference
from neon.metrics.scores import compute_scores, summarize_seed_sets
from neon.stages.run import Run


class Evaluator:
    """Scores weights loaded into one module: evaluation sampler, fixed seeds, reference statistics.
    Results are cached by the weights' digest and the metric settings."""

    def __init__(self, run: Run, module: NeonModule, seed_offset: int | None = None, num_samples: int | None = None,
                 sampler_overrides: dict | None = None, release: ReleaseSampling | None = None,
                 nll_part: str = "selection"):
        self.run = run
        # metrics.compute [nll]: which half of the real held-out data θ is scored on ('selection' where picks
        # are made, 'report' for the held-out figures), as the seeds are split for the sample metrics
        self.nll_part = nll_part
        self.release = release  # sample.rng=release: the family's official seeding instead of one generator per image
        self.module = module
        m = run.metrics
        self.num_samples = positive_int(num_samples or m.num_samples, "metrics.num_samples")
        first = m.seed_offset if seed_offset is None else int(seed_offset)
        self.seeds = list(range(first, first + self.num_samples))
        self.metrics = list(m.compute)
        self.sample_metrics = [name for name in self.metrics if name != "nll"]  # "nll" scores θ, not its samples
        self.extractor = build_extractor(m.extractor, m.extra_extractors, self.sample_metrics)
        self.sampler_cfg = OmegaConf.merge(run.cfg.sampler, m.sampler, sampler_overrides or {})
        self._reference: Reference | None = None
        self._data: Any = None

    def data(self) -> Any:
        """The run's data module (built once, on first use)."""
        if self._data is None:
            self._data = instantiate(self.run.cfg.data)
        return self._data

    def reference(self) -> Reference:
        """metrics.reference (an EDM or ADM .npz), else the data module's own reference."""
        if self._reference is None:
            ref = self.run.metrics.reference
            self._reference = load_reference(ref, self.extractor) if ref else self.data().reference(self.extractor)
        return self._reference

    def heldout_nll(self) -> dict[str, float]:
        """θ's negative log-likelihood of real held-out data (this evaluator's half): nats per token and bits
        per byte. Needs a family with a likelihood and a data module with held-out windows (data=text)."""
        if not isinstance(self.module, HasLikelihood):
            raise NeonError(f"metrics.compute asks for nll, but {self.module.family} has no likelihood: drop nll")
        data = self.data()
        if not hasattr(data, "heldout_windows"):
            raise NeonError(f"metrics.compute asks for nll, but data={type(data).__name__} holds no held-out text: "
                            "use data=text or drop nll")
        windows = data.heldout_windows(self.nll_part).to(self.module.device)
        total, count = self.module.token_nll(windows)
        nats = float(total) / count
        # bits per byte: the tokenizer's bytes per token turn nats/token into a tokenizer-free figure
        return {"nll": nats, "bpb": nats * count / (math.log(2) * data.byte_count(self.nll_part))}

    def key(self, digest: str) -> dict[str, Any]:
        m = self.run.metrics
        return {
            "weights": digest, "family": self.run.cfg.model._target_, "sampler": plain(self.sampler_cfg),
            **extractor_key(m.extractor, m.extra_extractors, self.sample_metrics), "seeds": [self.seeds[0], len(self.seeds)],
            "metrics": self.metrics, "block_size": m.block_size, "reference": m.reference or plain(self.run.cfg.data),
            **({"release": self.release.key()} if self.release else {}),
            **({"nll_part": self.nll_part} if "nll" in self.metrics else {}),
        }

    def trace(self) -> dict[str, Any]:
        """What a reported number was computed from: samples, seeds, extractor, reference."""
        return {**self._trace_of(self.seeds), "seed_sets": self.set_count()}

    def _trace_of(self, seeds: list[int]) -> dict[str, Any]:
        # one seed set's trace (no set count: that set's result is shared by runs with any count)
        return {"num_samples": len(seeds), "seeds": f"{seeds[0]}-{seeds[-1]}",
                **extractor_key(self.run.metrics.extractor, self.run.metrics.extra_extractors, self.sample_metrics),
                "metrics": self.metrics, **({"nll_part": self.nll_part} if "nll" in self.metrics else {}),
                "reference": self.run.metrics.reference or "data",
                "rng": self.release.key() if self.release else "per_seed"}

    def score_features(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        """The configured metrics of these features against the reference."""
        m = self.run.metrics
        return compute_scores(features, self.reference(), self.sample_metrics, isc_splits=m.isc_splits, pr_k=m.pr_k,
                              allow_small=m.allow_small, kid_subsets=m.kid_subsets, kid_subset_size=m.kid_subset_size)

    def score(self, state: StateDict) -> dict[str, Any]:
        """{'fid': ..., other metrics, 'digest': ...} for these weights; features kept beside the result."""
        digest = digest_state_dict(state)

        def prepare() -> contextlib.AbstractContextManager:
            self.module.load_neon_weights(state, source="weights to evaluate")
            return contextlib.nullcontext()

        return self._score(self.key(digest), digest, prepare)

    def twin(self, theta_r: StateDict, theta_s: StateDict, w: float) -> OutputTwin:
        """The output-space twin of the module's sampling network at θ_r and θ_s, combining outputs at w."""
        self.module.to(self.run.device).eval()
        return build_twin(self.module.own_sampling_net, theta_r, theta_s, w, self.module.twin_outputs,
                          self.module.twin_state)

    def score_twin(self, theta_r: StateDict, theta_s: StateDict, w: float) -> dict[str, Any]:
        """Scores of the output-space twin, (1 + w)·f(θ_r) − w·f(θ_s) at every network call (neon.compare=output),
        with the same sampler and seeds as `score`; cached by both digests and w."""
        digest = digest_state_dict(theta_r)
        key = {**self.key(digest), "output_twin": {"theta_s": digest_state_dict(theta_s), "w": float(w)}}
        return self._score(key, digest, lambda: self.module.sampling_through(self.twin(theta_r, theta_s, w)))

    def set_count(self) -> int:
        """metrics.seed_sets (null: 1)."""
        return self.run.metrics.seed_sets

    def seed_sets(self) -> list[list[int]]:
        """metrics.seed_sets consecutive sets of metrics.num_samples seeds, the first being `seeds`."""
        k = self.set_count()
        if k > 1 and self.release is not None:
            raise NeonError("metrics.seed_sets > 1 needs per-seed sampling: drop metrics.seed_sets or use sample.rng=per_seed")
        first, n = self.seeds[0], len(self.seeds)
        return [list(range(first + i * n, first + (i + 1) * n)) for i in range(k)]

    def _score(self, key: dict[str, Any], digest: str, prepare) -> dict[str, Any]:
        # every set is scored and cached on its own (the first is the one-set score), then summarised
        sets = self.seed_sets()
        if len(sets) == 1:
            return self._score_seeds(key, digest, prepare, self.seeds)
        return summarize_seed_sets([self._score_seeds({**key, "seeds": [seeds[0], len(seeds)]}, digest, prepare, seeds)
                                    for seeds in sets])

    def _score_seeds(self, key: dict[str, Any], digest: str, prepare, seeds: list[int]) -> dict[str, Any]:
        # `prepare` loads the weights and returns the context to sample in (the twin's stand-in, or none)
        def build(work: Path) -> None:
            context = prepare()
            self.module.to(self.run.device).eval()
            block = self.run.metrics.block_size
            progress = len(seeds) > 10 * block
            sampler = instantiate(self.sampler_cfg)
            with context:
                feats = release_features(self.module, sampler, seeds, self.release, self.extractor, progress) \
                    if self.release else sample_features(self.module, sampler, seeds, self.extractor, block, progress)
                nll = self.heldout_nll() if "nll" in self.metrics and is_main() else {}
            if not is_main():
                return
            if self.run.metrics.keep_features:
                np.savez(work / "features.npz", **{k: v.astype(np.float32) for k, v in feats.items()})
            extra = {"output_twin": key["output_twin"]} if "output_twin" in key else {}
            write_json(work / "result.json",
                       {**self.score_features(feats), **nll, "digest": digest, **extra, **self._trace_of(seeds)})

        # collective: under DDP every rank samples its share of the seeds
        folder, _ = self.run.cache.get_or_build("eval", key, build, collective=True)
        return read_json(folder / "result.json")

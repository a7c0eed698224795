"""The pipeline's stages. Each writes into a folder it is given; the pipeline hands it a cache folder
(so a finished stage is never redone), a standalone task hands it the run folder."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neon.analysis.output_twin import OutputTwin, build_twin
from neon.core.collectives import barrier, broadcast, is_main, main_lock
from neon.core.contract import NeonModule, family_of
from neon.core.errors import NeonError
from neon.core.io import StateDict, digest_state_dict, load_state_dict, read_json, save_state_dict, write_json
from neon.core.release_sampling import ReleaseSampling
from neon.core.values import plain, positive_int
from neon.data.batches import GlobalBatchSampler
from neon.merging.extrapolate import check_finite_base, check_merge_pair, log_pattern_counts
from neon.metrics.build import build_extractor, extractor_key
from neon.metrics.evaluate import release_features, sample_features
from neon.metrics.reference import Reference, load_reference
from neon.metrics.scores import compute_scores, summarize_seed_sets
from neon.runtime import Run, is_auto_w, log, merge_ws, model_spec

if TYPE_CHECKING:
    from neon.data.synthetic import SyntheticDataModule

THETA_R = "theta_r.safetensors"
THETA_S = "theta_s.safetensors"


def copy_weights(state: StateDict) -> StateDict:
    """A detached CPU copy of a state dict."""
    return {k: v.detach().cpu().clone() for k, v in state.items()}


# ------------------------------------------------------------------ θ_r


def training_threads(run: Run) -> dict[str, int]:
    """{'cpu_threads': n} when training runs on the CPU: matrix products and sums over a training batch
    split their work by thread, so θ_r and θ_s of one seed differ in their last bits (and then in their
    FIDs) between thread counts; the count is part of their cache keys. Empty on GPUs."""
    accelerator = str(run.cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return {"cpu_threads": torch.get_num_threads()} if on_cpu else {}


RESUME = "resume.ckpt"


def pretrain_into(run: Run, out_dir: Path) -> None:
    """Train θ_r from scratch with the family's own loss on the real data, resuming from `out_dir`'s
    checkpoint of an interrupted attempt (written every `resume_every_steps`)."""
    import lightning as L  # only where a stage trains: tasks that sample or score never import it

    from neon.training import LightningNeon, ResumableCheckpoint, TrainSettings

    cfg = run.cfg
    steps = positive_int(cfg.model.pretrain.steps, "model.pretrain.steps")
    every = positive_int(cfg.get("resume_every_steps") or steps, "resume_every_steps")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = run.build_module()
    loader = instantiate(cfg.data).train_dataloader()
    resume = out_dir / RESUME
    found = broadcast(resume.is_file() if is_main() else None)
    if found:
        # tensors and plain containers only: reading our own checkpoint runs no pickled code either
        done = int(torch.load(resume, map_location="cpu", weights_only=True, mmap=True)["global_step"])
        log.info("θ_r: resuming the pretraining at step %d from %s", done, resume)
        if isinstance(loader.sampler, GlobalBatchSampler):
            loader.sampler.start = done * int(cfg.trainer.get("accumulate_grad_batches") or 1)
    run.trainer(max_steps=steps, callbacks=[ResumableCheckpoint(resume, every)]).fit(
        LightningNeon(module, TrainSettings(noise_seed=cfg.seed)), train_dataloaders=loader, ckpt_path=str(resume) if found else None, weights_only=True)
    if is_main():
        save_state_dict(module.neon_weights(), out_dir / THETA_R)
        resume.unlink(missing_ok=True)  # done: the artifact holds θ_r alone


def load_base(run: Run, shape_from_checkpoint: bool = False) -> tuple[NeonModule, str, Path]:
    """The family module holding θ_r, θ_r's digest and file: `model.checkpoint`, else a (cached) pretrain;
    `shape_from_checkpoint` (tasks that never meet the data): the checkpoint's recorded data shape wins."""
    checkpoint = run.cfg.model.get("checkpoint")
    if not checkpoint and run.cfg.model.get("pretrain") is None:
        raise NeonError("this model has no pretraining recipe here: give model.checkpoint=PATH (θ_r, e.g. the "
                        "released snapshot)")
    if checkpoint:
        # built as the checkpoint needs it (a snapshot brings its architecture), then loaded
        module = run.build_module(family_of(run.cfg.model).spec_for_checkpoint(
            model_spec(run.cfg), checkpoint, shape_from_checkpoint))
        module.load_checkpoint(checkpoint, shape_from_checkpoint)
        path = Path(checkpoint)
    else:
        module = run.build_module()
        key = {"model": run.model_key(), "data": plain(run.cfg.data),
               "steps": plain(run.cfg.model.pretrain), "seed": run.cfg.seed, **training_threads(run)}
        folder, built = run.cache.get_or_build("pretrain", key, lambda work: pretrain_into(run, work), collective=True)
        log.info("θ_r: %s %s", "pretrained into" if built else "reusing", folder)
        path = folder / THETA_R
        module.load_neon_weights(load_state_dict(path), source=f"pretrained θ_r '{path}'")
    # a NaN θ_r would score FID inf at every w and "win" nothing: refuse it before any work
    check_finite_base(module.neon_weights(), f"θ_r '{path}'")
    return module, digest_state_dict(module.neon_weights()), path


# ------------------------------------------------------------------ S


def synthetic_seeds(run: Run) -> list[int]:
    """S uses seeds [neon.synthetic.seed, neon.synthetic.seed + neon.n_synthetic)."""
    n = positive_int(run.cfg.neon.n_synthetic, "neon.n_synthetic")
    first = int(run.cfg.neon.synthetic.seed)
    return list(range(first, first + n))


def synthetic_key(run: Run, base_digest: str) -> dict[str, Any]:
    """What S's content depends on."""
    s = run.cfg.neon.synthetic
    seeds = synthetic_seeds(run)
    return {
        "theta_r": base_digest,
        "family": run.cfg.model._target_,
        "sampler": plain(run.cfg.sampler),
        "seeds": [seeds[0], len(seeds)],
        "block_size": s.block_size,
        "class_balanced": s.class_balanced,
        "draw_threads": 1,  # drawn one thread at a time (neon.core.seeding.fixed_threads): the same S on any machine
    }


def synthesize_into(run: Run, module: NeonModule, out_dir: Path) -> None:
    """Draw S from θ_r with the configured (mode-seeking) sampler into shards."""
    from neon.data.synthetic import write_synthetic_set

    s = run.cfg.neon.synthetic
    module = module.to(run.device).eval()
    write_synthetic_set(
        module, run.sampler(), synthetic_seeds(run), out_dir,
        block_size=s.block_size, shard_size=s.shard_size, class_balanced=s.class_balanced,
    )


def synthetic_data(run: Run, module: NeonModule, directory: Path | None) -> SyntheticDataModule:
    """S for fine-tuning: written shards, or a live stream when neon.synthetic.mode=stream."""
    from neon.data.synthetic import SyntheticDataModule  # a Lightning data module: imported when training

    s = run.cfg.neon.synthetic
    batch = positive_int(run.cfg.neon.batch_size, "neon.batch_size")
    if s.mode == "stream":
        return SyntheticDataModule(
            batch, module=module, sampler=run.sampler(), seeds=synthetic_seeds(run),
            block_size=s.block_size, class_balanced=s.class_balanced, num_workers=s.num_workers,
            shuffle_seed=run.cfg.seed,
        )
    if s.mode != "cached":
        raise NeonError(f"neon.synthetic.mode must be 'cached' or 'stream', got '{s.mode}'")
    return SyntheticDataModule(batch, directory=directory, num_workers=s.num_workers, shuffle_seed=run.cfg.seed)


# ------------------------------------------------------------------ θ_s


def budgets_of(cfg) -> list[int]:
    """neon.budget_steps as a sorted list: one number, or several (snapshots of one fine-tune)."""
    value = plain(cfg.neon.budget_steps)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise NeonError("neon.budget_steps is empty: give a number of steps or a list, e.g. [100,200,400]")
    return sorted({positive_int(v, "neon.budget_steps") for v in values})


def finetune_module(run: Run, module: NeonModule, data, steps: int, callbacks: Sequence = ()) -> NeonModule:
    """Fine-tune a copy of θ_r on `data` for `steps` optimizer steps with the family's own loss."""
    import lightning as L

    from neon.training import LightningNeon, TrainSettings

    cfg = run.cfg
    tuned = copy.deepcopy(module).cpu().train()
    settings = TrainSettings(optimizer=instantiate(cfg.neon.optimizer), noise_seed=cfg.seed,
                             lr_warmup_steps=int(cfg.neon.get("lr_warmup_steps", 0) or 0),
                             ema=bool(cfg.neon.get("finetune_ema", True)))  # off: θ_s is the raw fine-tuned network
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run.trainer(max_steps=steps, callbacks=list(callbacks)).fit(LightningNeon(tuned, settings), datamodule=data)
    return tuned


def finetune_key(run: Run, base_digest: str, data_key: dict[str, Any], budget: int) -> dict[str, Any]:
    """What θ_s after `budget` steps depends on."""
    n = run.cfg.neon
    key = {
        "theta_r": base_digest, "synthetic": data_key, "budget_steps": budget,
        "batch_size": n.batch_size, "optimizer": plain(n.optimizer), "seed": run.cfg.seed,
        "finetune_ema": n.get("finetune_ema", True),
        "trainer": {k: plain(v) for k, v in run.cfg.trainer.items()
                    if k in ("precision", "accumulate_grad_batches", "gradient_clip_val")},
    }
    key.update(training_threads(run))
    if n.get("lr_warmup_steps"):  # only when set, so θ_s cached before the option existed is still found
        key["lr_warmup_steps"] = int(n.lr_warmup_steps)
    return key


def finetuned_weights(run: Run, module: NeonModule, make_data: Callable[[], Any], theta_r: StateDict,
                      base_digest: str, data_key: dict[str, Any], budgets: Sequence[int]) -> dict[int, Path]:
    """θ_s after every budget: from the cache, or from one fine-tune of θ_r (loaded into `module` first,
    whatever it held: an evaluation leaves θ_neon there) on `make_data()` (a data module, built only when a
    fine-tune runs: with every θ_s cached, Lightning is never imported) to the largest missing budget that
    snapshots each missing one on the way (the reference protocol's budget axis)."""
    keys = {b: finetune_key(run, base_digest, data_key, b) for b in budgets}
    folders = {b: run.cache.path("finetune", keys[b]) for b in budgets}

    def missing_budgets() -> list[int]:
        # checked against the checksums, not just found: a corrupt θ_s is set aside and fine-tuned again
        return broadcast([b for b in budgets if not run.cache.verified("finetune", keys[b])] if is_main() else None)

    missing = missing_budgets()
    if missing:
        with main_lock(str(folders[max(missing)]) + ".run.lock"):  # a concurrent job may be training it
            missing = missing_budgets()
            if missing:
                from neon.merging.callback import NeonMerge  # a Lightning callback: imported only to train

                def keep(b: int, theta_s: StateDict) -> None:
                    run.cache.get_or_build("finetune", keys[b], lambda work: save_state_dict(theta_s, work / THETA_S))

                module.load_neon_weights(theta_r, source="θ_r")
                finetune_module(run, module, make_data(), max(missing),
                                [NeonMerge(budgets=missing, keep_theta_s=keep)])
                log.info("θ_s: fine-tuned %d steps, snapshots at %s", max(missing), missing)
        barrier()  # rank 0 wrote the snapshots
    for b in budgets:
        if b not in missing:
            log.info("θ_s: reusing %s (budget %d, checksums verified)", folders[b], b)
        # a diverged fine-tune (NaN θ_s) is an error here, before any evaluation reads it as "no gain"
        check_merge_pair(theta_r, load_state_dict(folders[b] / THETA_S, what="θ_s"))
    return {b: folders[b] / THETA_S for b in budgets}


def log_merge_plan(run: Run, theta_r: StateDict) -> None:
    """For every block-wise `neon.w`: how many of θ_r's tensors each pattern decides (none: a warning)."""
    if is_auto_w(run.cfg):
        return
    for w in merge_ws(run.cfg):
        log_pattern_counts(theta_r.keys(), w)


# ------------------------------------------------------------------ evaluation


class Evaluator:
    """Scores weights loaded into one module: evaluation sampler, fixed seeds, reference statistics.
    Results are cached by the weights' digest and the metric settings."""

    def __init__(self, run: Run, module: NeonModule, seed_offset: int | None = None, num_samples: int | None = None,
                 sampler_overrides: dict | None = None, release: ReleaseSampling | None = None):
        self.run = run
        self.release = release  # sample.rng=release: the family's official seeding instead of one generator per image
        self.module = module
        m = run.cfg.metrics
        self.num_samples = positive_int(num_samples or m.num_samples, "metrics.num_samples")
        first = int(m.seed_offset if seed_offset is None else seed_offset)
        self.seeds = list(range(first, first + self.num_samples))
        self.metrics = list(m.get("compute") or ["fid"])
        self.extractor = build_extractor(m, self.metrics)
        self.sampler_cfg = OmegaConf.merge(run.cfg.sampler, m.get("sampler") or {}, sampler_overrides or {})
        self._reference: Reference | None = None

    def reference(self) -> Reference:
        """metrics.reference (an EDM or ADM .npz), else the data module's own reference."""
        if self._reference is None:
            ref = self.run.cfg.metrics.get("reference")
            self._reference = (load_reference(ref, self.extractor) if ref
                               else instantiate(self.run.cfg.data).reference(self.extractor))
        return self._reference

    def key(self, digest: str) -> dict[str, Any]:
        m = self.run.cfg.metrics
        return {
            "weights": digest, "family": self.run.cfg.model._target_, "sampler": plain(self.sampler_cfg),
            **extractor_key(m, self.metrics), "seeds": [self.seeds[0], len(self.seeds)], "metrics": self.metrics,
            "block_size": m.block_size, "reference": plain(m.get("reference")) or plain(self.run.cfg.data),
            **({"release": self.release.key()} if self.release else {}),
        }

    def trace(self) -> dict[str, Any]:
        """What a reported number was computed from: samples, seeds, extractor, reference."""
        return {**self._trace_of(self.seeds), "seed_sets": self.set_count()}

    def _trace_of(self, seeds: list[int]) -> dict[str, Any]:
        # one seed set's trace (no set count: that set's result is shared by runs with any count)
        return {"num_samples": len(seeds), "seeds": f"{seeds[0]}-{seeds[-1]}",
                **extractor_key(self.run.cfg.metrics, self.metrics), "metrics": self.metrics,
                "reference": plain(self.run.cfg.metrics.get("reference")) or "data",
                "rng": self.release.key() if self.release else "per_seed"}

    def score_features(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        """The configured metrics of these features against the reference."""
        m = self.run.cfg.metrics
        return compute_scores(features, self.reference(), self.metrics, isc_splits=int(m.get("isc_splits", 10)),
                              pr_k=int(m.get("pr_k", 3)), allow_small=bool(m.get("allow_small", False)),
                              kid_subsets=int(m.get("kid_subsets", 100)),
                              kid_subset_size=int(m.get("kid_subset_size", 1000)))

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
        k = self.run.cfg.metrics.get("seed_sets")
        return 1 if k is None else positive_int(k, "metrics.seed_sets")

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
            block = int(self.run.cfg.metrics.block_size)
            progress = len(seeds) > 10 * block
            sampler = instantiate(self.sampler_cfg)
            with context:
                feats = release_features(self.module, sampler, seeds, self.release, self.extractor, progress) \
                    if self.release else sample_features(self.module, sampler, seeds, self.extractor, block, progress)
            if not is_main():
                return
            if self.run.cfg.metrics.get("keep_features", True):
                np.savez(work / "features.npz", **{k: v.astype(np.float32) for k, v in feats.items()})
            extra = {"output_twin": key["output_twin"]} if "output_twin" in key else {}
            write_json(work / "result.json",
                       {**self.score_features(feats), "digest": digest, **extra, **self._trace_of(seeds)})

        # collective: under DDP every rank samples its share of the seeds
        folder, _ = self.run.cache.get_or_build("eval", key, build, collective=True)
        return read_json(folder / "result.json")

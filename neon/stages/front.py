"""The cached front of the pipeline, shared by `task=neon`, `task=search` and `task=diagnose`: θ_r (loaded or
pretrained), S (drawn once, or taken from elsewhere) and θ_s at every budget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from neon.analysis.heldout import check_heldout
from neon.analysis.output_twin import check_compare
from neon.core.config_checks import check_counts
from neon.core.contract import HasLikelihood, NeonModule, diversity_warning, family_of
from neon.core.errors import NeonError
from neon.core.io import StateDict, load_state_dict
from neon.core.values import plain, positive_int
from neon.merging.merger import NeonMerger
from neon.stages.base import copy_weights, load_base
from neon.stages.finetune import finetuned_weights, log_merge_plan
from neon.stages.run import Run, log
from neon.stages.settings import MetricSettings, NeonSettings
from neon.stages.synthesize import synthesize_into, synthetic_data, synthetic_key
from neon.stages.synthetic_source import check_fits, folder_key, source_config, source_folder, source_label, source_run


def validate(cfg: DictConfig) -> None:
    """Fail early, with one clear line, on the settings users type every day; warn before fine-tuning on a
    diversity-seeking S."""
    drawer = check_settings(cfg) or cfg  # the sampler that draws S
    warning = diversity_warning(drawer.model, plain(drawer.sampler))
    if warning:
        log.warning(warning)


def check_settings(cfg: DictConfig) -> DictConfig | None:
    """The pipeline's settings (the neon group read into NeonSettings: w, budgets, counts, S; the comparison, the
    metrics' counts, held-out seeds, S's source model) checked in one line each: the pre-flight of the tasks that
    fine-tune (`task.checks`). Returns the config of the model that draws S where another model does."""
    neon, metrics = NeonSettings.of(cfg), MetricSettings.of(cfg)
    check_compare(cfg.model, neon.compare, neon.blockwise)
    final = cfg.task.get("final_num_samples")  # task=search scores its pick at this size
    final = None if final is None else positive_int(final, "task.final_num_samples")
    check_counts(cfg, metrics, neon.auto and neon.auto.num_samples, final)
    check_heldout(metrics, final, auto_proxy(neon))
    check_data(cfg.data)
    check_nll(cfg, metrics)
    return source_config(cfg, neon.synthetic)  # S drawn by another model: its config composes (one line naming it if not)


def auto_proxy(neon: NeonSettings) -> tuple[int, int | None] | None:
    """(seed offset, samples) of neon.w=auto's proxy scores, None without the search (or without its own seeds)."""
    if neon.auto is None or neon.auto.seed_offset is None:
        return None
    return neon.auto.seed_offset, neon.auto.num_samples


def check_data(data_cfg: DictConfig) -> None:
    """A data module's own pre-flight, where its class has one (`check_settings`: data=text reads its corpus)."""
    from hydra.utils import get_class

    hook = getattr(get_class(data_cfg._target_), "check_settings", None)
    if hook is not None:
        hook({k: v for k, v in plain(data_cfg).items() if k != "_target_"})


def check_nll(cfg: DictConfig, metrics: MetricSettings) -> None:
    """metrics.compute [nll] scores θ's likelihood of held-out text: a family with a likelihood and a data module
    with held-out windows, or one line before any work."""
    from hydra.utils import get_class

    if "nll" not in metrics.compute:
        return
    family = family_of(cfg.model)
    if not issubclass(family, HasLikelihood):
        raise NeonError(f"metrics.compute asks for nll, but {family.__name__} ({family.family}) has no likelihood: "
                        "drop nll from metrics.compute, or use a language model (model=lm_tiny, model=hf_causal_lm)")
    if not hasattr(get_class(cfg.data._target_), "heldout_windows"):
        raise NeonError(f"metrics.compute asks for nll, but data {cfg.data._target_} holds no held-out text: use "
                        "data=text or drop nll from metrics.compute")


def cached_synthetic(run: Run, module: NeonModule, base_digest: str) -> tuple[dict[str, Any], Path | None]:
    """S's cache key and folder: drawn once into the artifact cache (None when S is streamed) by θ_r, or
    taken from `neon.synthetic.source` / drawn by `neon.synthetic.source_model` (cross-architecture S)."""
    s = run.neon.synthetic
    src = source_run(run)
    if src is None and s.source:
        s_dir = source_folder(s.source)
        check_fits(module, s_dir, f"'{s.source}'")
        log.info("S: from %s", s_dir)
        return folder_key(s_dir), s_dir
    drawer, drawer_module, drawer_digest = run, module, base_digest
    if src is not None:
        with run.stage("pretrain"):
            drawer_module, drawer_digest, _ = load_base(src)
        drawer = src
    with run.stage("synthesize"):
        s_key = synthetic_key(drawer, drawer_digest)
        if s.mode == "stream":
            if src is not None:
                raise NeonError("neon.synthetic.source_model needs neon.synthetic.mode=cached (S is written once)")
            return s_key, None
        s_dir, built = run.cache.get_or_build(
            "synthetic", s_key, lambda work: synthesize_into(drawer, drawer_module, work), collective=True)
        origin = "" if src is None else f" (drawn by {source_label(run)})"
        log.info("S%s: %s %s", origin, "wrote" if built else "reusing", s_dir)
    if src is not None:
        check_fits(module, s_dir, source_label(run))
    return s_key, s_dir


@dataclass
class Front:
    """θ_r, S and θ_s at every budget, as the cache holds them, and the merge that makes θ_neon from them."""

    module: NeonModule  # the family module; it holds whatever weights were evaluated last
    base_digest: str  # θ_r's content digest (the cache keys of S and θ_s depend on it)
    base_path: Path  # θ_r's file: model.checkpoint, or the cached pretrain
    merge: NeonMerger  # θ_neon = (1 + w)·θ_r − w·θ_s; holds θ_r
    s_key: Any  # S's cache key (what drew it)
    s_dir: Path | None  # S's folder, None when S is streamed
    theta_s_paths: dict[int, Path]  # budget → θ_s's file in the cache

    @property
    def theta_r(self) -> StateDict:
        """θ_r's weights (a CPU copy)."""
        return self.merge.base

    def theta_s(self, budget: int) -> StateDict:
        """θ_s after `budget` fine-tune steps."""
        return load_state_dict(self.theta_s_paths[budget])


def build_front(run: Run, budgets: list[int]) -> Front:
    """θ_r (loaded or pretrained), S and θ_s at every budget, each from the cache or built into it."""
    with run.stage("pretrain"):
        module, base_digest, base_path = load_base(run)
    merge = NeonMerger(base=copy_weights(module.neon_weights()))
    log_merge_plan(run, merge.base)
    s_key, s_dir = cached_synthetic(run, module, base_digest)
    with run.stage("finetune"):
        theta_s_paths = finetuned_weights(run, module, lambda: synthetic_data(run, module, s_dir), merge.base, base_digest,
                                          s_key, budgets)
    return Front(module, base_digest, base_path, merge, s_key, s_dir, theta_s_paths)

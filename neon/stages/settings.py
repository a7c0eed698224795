"""The `neon` group read once, at the edge. `NeonSettings.of(cfg)` checks every value of it (one line naming the
key for each bad one) and hands the stages typed fields: the pre-flight builds it before any work, a `Run`
holds it, and no stage reads `cfg.neon` itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from neon.core.errors import NeonError
from neon.core.values import plain, positive_int
from neon.merging.extrapolate import WSpec, check_w

SYNTHETIC_MODES = ("cached", "stream")
COMPARISONS = ("output",)  # neon.compare: what may be scored beside weight-space Neon


@dataclass(frozen=True)
class SyntheticSettings:
    """neon.synthetic: how S is drawn, stored and where it comes from."""

    seed: int  # S uses seeds [seed, seed + n_synthetic), one per sample
    mode: str  # cached | stream
    block_size: int
    shard_size: int
    class_balanced: bool
    num_workers: int
    source: str | None  # a run or S folder; with source_model, that model's checkpoint
    source_model: str | None  # another model config draws S (cross-architecture S)
    source_overrides: tuple[str, ...]

    @classmethod
    def of(cls, s: Mapping[str, Any]) -> SyntheticSettings:
        """neon.synthetic checked: whole blocks per shard, a known mode."""
        block = positive_int(s["block_size"], "neon.synthetic.block_size")
        shard = positive_int(s["shard_size"], "neon.synthetic.shard_size")
        if shard % block:
            raise NeonError(f"neon.synthetic.shard_size ({shard}) must be a multiple of neon.synthetic.block_size "
                            f"({block})")
        if s["mode"] not in SYNTHETIC_MODES:
            raise NeonError(f"neon.synthetic.mode must be 'cached' or 'stream', got '{s['mode']}'")
        return cls(seed=int(s["seed"]), mode=s["mode"], block_size=block, shard_size=shard,
                   class_balanced=bool(s.get("class_balanced", True)), num_workers=int(s.get("num_workers") or 0),
                   source=s.get("source") or None, source_model=s.get("source_model") or None,
                   source_overrides=tuple(s.get("source_overrides") or ()))


@dataclass(frozen=True)
class AutoSettings:
    """neon.auto: the line search of `neon.w=auto`."""

    num_samples: int | None  # samples per proxy score (None: metrics.num_samples)
    seed_offset: int | None  # the proxy's own seeds
    start: float
    step: float
    w_min: float
    w_max: float
    tolerance: float
    groups: dict[str, str] | None  # {name: regex}: block-wise w, each group searched in turn
    rounds: int

    @classmethod
    def of(cls, auto: Mapping[str, Any]) -> AutoSettings:
        """neon.auto checked: a bracket that holds its start, positive steps, groups as a mapping."""
        lo, hi = float(auto["w_min"]), float(auto["w_max"])
        if not lo < hi:
            raise NeonError(f"neon.auto.w_min ({lo}) must be below neon.auto.w_max ({hi})")
        for key in ("step", "tolerance"):
            if not float(auto[key]) > 0:
                raise NeonError(f"neon.auto.{key} must be positive, got {auto[key]}")
        if not lo <= float(auto["start"]) <= hi:
            raise NeonError(f"neon.auto.start ({auto['start']}) must lie in [w_min, w_max] = [{lo}, {hi}]")
        groups = auto.get("groups")
        if groups and not isinstance(groups, Mapping):
            raise NeonError(f"neon.auto.groups must map group names to regexes, e.g. {{middle: 'blocks'}}, got "
                            f"{groups!r}")
        n = auto.get("num_samples")
        return cls(num_samples=None if n is None else positive_int(n, "neon.auto.num_samples"),
                   seed_offset=auto.get("seed_offset"), start=float(auto["start"]), step=float(auto["step"]),
                   w_min=lo, w_max=hi, tolerance=float(auto["tolerance"]),
                   groups={str(k): str(v) for k, v in groups.items()} if groups else None,
                   rounds=positive_int(auto.get("rounds", 1), "neon.auto.rounds"))


def parse_ws(w: Any) -> tuple[WSpec, ...]:
    """neon.w as coefficients: a number, a list, or a block-wise mapping."""
    ws = w if isinstance(w, list) else [w]
    if not ws:
        raise NeonError("neon.w is empty: give a number or a list of numbers, e.g. neon.w=[0.5,1.0]")
    for value in ws:
        if isinstance(value, str):
            raise NeonError(f"neon.w must be a number, a list of numbers or 'auto', got '{value}'")
    return tuple(check_w(value) for value in ws)


def parse_budgets(value: Any) -> tuple[int, ...]:
    """neon.budget_steps as a sorted tuple: one number, or several (snapshots of one fine-tune)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise NeonError("neon.budget_steps is empty: give a number of steps or a list, e.g. [100,200,400]")
    return tuple(sorted({positive_int(v, "neon.budget_steps") for v in values}))


def auto_settings(auto: Mapping[str, Any] | None) -> AutoSettings:
    """neon.auto for `neon.w=auto`."""
    if not auto:
        raise NeonError("neon.w=auto needs the line search's settings under neon.auto (see conf/neon/default.yaml)")
    return AutoSettings.of(auto)


@dataclass(frozen=True)
class NeonSettings:
    """The `neon` group: the recipe (S, the fine-tune's budgets and optimizer, the merge coefficients) and what a
    run adds to it (the control, the output-space twin, the diagnostic, rounds)."""

    ws: tuple[WSpec, ...] | None  # None: neon.w=auto (the line search chooses)
    budgets: tuple[int, ...]
    n_synthetic: int
    batch_size: int
    optimizer: dict[str, Any]  # a partial torch optimizer, for hydra's instantiate
    lr_warmup_steps: int
    finetune_ema: bool  # θ_s is the fine-tune's EMA (else the raw fine-tuned network)
    control: bool  # the same fine-tune on real data, scored beside Neon
    compare: str | None  # 'output': the output-space twin too
    diagnose: dict[str, Any] | None  # the diagnostic at θ_r on S (task=diagnose's settings)
    rounds: int
    synthetic: SyntheticSettings
    auto: AutoSettings | None

    @classmethod
    def of(cls, cfg: DictConfig) -> NeonSettings:
        """cfg.neon checked and typed; a NeonError names the first bad key."""
        n = plain(cfg.neon)
        auto = n.get("auto")
        auto_w = n.get("w") == "auto"
        compare = n.get("compare")
        if compare is not None and compare not in COMPARISONS:
            raise NeonError(f"neon.compare must be null or one of {list(COMPARISONS)}, got {compare!r}")
        rounds, warmup = n.get("rounds"), n.get("lr_warmup_steps") or 0
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise NeonError(f"neon.lr_warmup_steps must be 0 or a positive integer, got {warmup!r}")
        return cls(
            ws=None if auto_w else parse_ws(n.get("w")),
            budgets=parse_budgets(n.get("budget_steps")),
            n_synthetic=positive_int(n.get("n_synthetic"), "neon.n_synthetic"),
            batch_size=positive_int(n.get("batch_size"), "neon.batch_size"),
            optimizer=n["optimizer"],
            lr_warmup_steps=warmup,
            finetune_ema=bool(n.get("finetune_ema", True)),
            control=bool(n.get("control")),
            compare=compare,
            diagnose=n.get("diagnose") or None,
            rounds=1 if rounds is None else positive_int(rounds, "neon.rounds"),
            synthetic=SyntheticSettings.of(n["synthetic"]),
            auto=auto_settings(auto) if auto_w else None,  # read only where the search runs
        )

    @property
    def auto_w(self) -> bool:
        """Whether w is chosen by the line search (`neon.w=auto`) rather than given."""
        return self.ws is None

    def numeric_ws(self, task: str) -> list[WSpec]:
        """The given coefficients, for a task that cannot search them."""
        if self.ws is None:
            raise NeonError(f"neon.w=auto is for task=neon; task={task} needs numbers, e.g. neon.w=[0.5,1.0]")
        return list(self.ws)

    @property
    def blockwise(self) -> bool:
        """Whether some w is a per-parameter mapping (given, or searched per group)."""
        if self.ws is None:
            return bool(self.auto and self.auto.groups)
        return any(isinstance(w, dict) for w in self.ws)


def optional_seed(value: Any) -> int | None:
    """A seed offset that may be null (that figure off)."""
    return None if value is None else int(value)


@dataclass(frozen=True)
class MetricSettings:
    """The `metrics` group: what is scored (`compute`), on which seeds (selection, noise, held-out), with which
    feature extractor, reference and evaluation sampler."""

    num_samples: int
    block_size: int
    seed_offset: int  # the selection seeds: every pick is made on [seed_offset, seed_offset + num_samples × sets)
    seed_sets: int
    heldout_seed_offset: int | None  # the reported figures' seeds (None: no held-out scores)
    heldout_num_samples: int | None  # None: num_samples
    noise_seed_offset: int | None  # θ_r scored again on these seeds: the metric's own seed noise
    compute: tuple[str, ...]
    select: str  # the score every pick minimises
    allow_small: bool
    reference: Any  # a statistics file, or None: the data module's own reference
    sampler: dict[str, Any]  # overrides of the sampler for evaluation
    extractor: dict[str, Any]  # the feature network, for hydra's instantiate
    extra_extractors: dict[str, Any]  # networks of other features (sFID's spatial, DINOv2), by feature
    keep_features: bool  # features.npz beside each score, for later metrics
    isc_splits: int
    pr_k: int
    kid_subsets: int
    kid_subset_size: int

    @classmethod
    def of(cls, cfg: DictConfig) -> MetricSettings:
        """cfg.metrics checked and typed; a NeonError names the first bad key."""
        m = plain(cfg.metrics)
        compute = tuple(m.get("compute") or ["fid"])
        select = m.get("select") or "fid"
        if select != "fid" and select not in compute:
            raise NeonError(f"metrics.select={select} is not among metrics.compute {list(compute)}: pick by fid, or add "
                            f"{select} to metrics.compute")
        sets = m.get("seed_sets")
        heldout_n = m.get("heldout_num_samples")
        return cls(
            num_samples=positive_int(m.get("num_samples"), "metrics.num_samples"),
            block_size=positive_int(m.get("block_size"), "metrics.block_size"),
            seed_offset=int(m.get("seed_offset") or 0),
            seed_sets=1 if sets is None else positive_int(sets, "metrics.seed_sets"),
            heldout_seed_offset=optional_seed(m.get("heldout_seed_offset")),
            heldout_num_samples=None if heldout_n is None else positive_int(heldout_n, "metrics.heldout_num_samples"),
            noise_seed_offset=optional_seed(m.get("noise_seed_offset")),
            compute=compute, select=select, allow_small=bool(m.get("allow_small", False)),
            reference=m.get("reference"), sampler=m.get("sampler") or {}, extractor=m.get("extractor"),
            extra_extractors=m.get("extra_extractors") or {}, keep_features=bool(m.get("keep_features", True)),
            isc_splits=int(m.get("isc_splits", 10)), pr_k=int(m.get("pr_k", 3)),
            kid_subsets=int(m.get("kid_subsets", 100)), kid_subset_size=int(m.get("kid_subset_size", 1000)),
        )


DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunSettings:
    """The top-level keys of one job: its training seed, where it samples, and how it reports and saves."""

    seed: int  # training randomness (pretrain, fine-tune, loader order); sample seeds are set per sample
    device: str  # auto | cpu | cuda | cuda:N
    progress_refresh_rate: int
    resume_every_steps: int | None  # None: pretraining saves a resumable checkpoint only at its end
    preview_samples: int

    @classmethod
    def of(cls, cfg: DictConfig) -> RunSettings:
        """The top-level keys checked and typed; a NeonError names the first bad key."""
        device = str(cfg.get("device") or "auto")
        if device.split(":")[0] not in DEVICES or (":" in device and not device.split(":", 1)[1].isdigit()):
            raise NeonError(f"device must be auto, cpu, cuda or cuda:N, got '{device}'")
        every = cfg.get("resume_every_steps")
        preview = cfg.get("preview_samples") or 0
        if isinstance(preview, bool) or not isinstance(preview, int) or preview < 0:
            raise NeonError(f"preview_samples must be 0 or a positive integer, got {preview!r}")
        return cls(seed=int(cfg.get("seed") or 0), device=device,
                   progress_refresh_rate=positive_int(cfg.get("progress_refresh_rate", 50), "progress_refresh_rate"),
                   resume_every_steps=None if not every else positive_int(every, "resume_every_steps"),
                   preview_samples=preview)

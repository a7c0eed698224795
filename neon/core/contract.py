"""The family contract: `NeonModule`, the torch module every model family subclasses, declares all that
a family provides (network, loss, generation, image shape, class count, samplers and their
diversity-seeking rule, optional checkpoint reader); `family_of` and `check_sampler` read it from a config.
tests/test_family_contract.py holds every model config under conf/model/ to it. Lightning trains a family
through `neon.stages.training.LightningNeon`; tasks that only sample or score never import Lightning."""

from __future__ import annotations

import abc
import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from neon.core.errors import NeonError
from neon.core.io import StateDict, check_state_fits
from neon.core.release_sampling import Draw, LabelSpec
from neon.core.seeding import StepNoise
from neon.weights.readers import read_weights

Batch = dict[str, torch.Tensor]
Sampler = Callable[..., torch.Tensor]


def plain_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor settings with tuples and config lists as plain lists (comparable, YAML-writable)."""
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(kwargs).items()}


class EMA:
    """Exponential moving average of weights: a fixed decay, or a half-life counted in samples."""

    def __init__(self, decay: float | None = None, halflife_samples: float | None = None):
        if (decay is None) == (halflife_samples is None):
            raise NeonError("EMA needs exactly one of model.ema.decay or model.ema.halflife_samples")
        self.decay = decay
        self.halflife_samples = halflife_samples

    def beta(self, batch_size: int) -> float:
        """The decay for one optimizer step over `batch_size` samples."""
        if self.decay is not None:
            return float(self.decay)
        return 0.5 ** (batch_size / max(float(self.halflife_samples), 1e-8))

    @torch.no_grad()
    def update(self, ema: nn.Module, net: nn.Module, batch_size: int) -> None:
        """Move `ema` toward `net`; buffers are copied."""
        beta = self.beta(batch_size)
        for pe, pn in zip(ema.parameters(), net.parameters(), strict=True):
            pe.lerp_(pn.detach(), 1.0 - beta)
        for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
            be.copy_(bn)


class NeonModule(nn.Module, metaclass=abc.ABCMeta):
    """Base of every family: the contract (docs/adding-a-family.md). A family must declare

    - `family`, its name in messages, and `samplers`: {sampler config name (conf/sampler/<name>.yaml): the
      sampler function}, the only samplers `generate` accepts;
    - `image_shape`, `loss(batch, noise)` and `generate(seeds, sampler, labels)` (abstract here);
    - `net` (θ; an `EMA` rule makes sampling and θ use its EMA copy) and `num_classes` (0: unconditional),
      through this constructor.

    It may override `diversity_seeking(settings)` (which sampler settings spread samples out), `build_net` and
    `network_kwargs` (families built from constructor settings), `optimizer_params()` (parameter groups),
    `spec_for_checkpoint` and `load_checkpoint` (checkpoints that bring their own architecture), and opt into
    the capabilities below by inheriting them: `HasOutputTwin`, `HasReleaseSampling`, `HasNativeExport`,
    `HasReleaseCheckpoints`, `HasLikelihood`, `HasTextSamples`. Run settings (the training noise's seed, the fine-tune's optimizer,
    ...) are the run's, handed to the trainer (neon.stages.training.TrainSettings), never written onto the family."""

    family: ClassVar[str] = "model"
    samplers: ClassVar[Mapping[str, Sampler]] = {}
    network_kwargs: dict[str, Any] | None = None  # families built from constructor settings set theirs
    # `task=export format=release`: how the family's official scripts load a flat `.pth` state dict of the
    # sampling network (None: the release ships no such file, and only safetensors are written), and what
    # the model card says about the release's own format.
    release_pth: ClassVar[str | None] = None
    release_note: ClassVar[str] = ""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        ema: EMA | None = None,
        num_classes: int = 0,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.ema_rule = ema
        self.ema = copy.deepcopy(net).requires_grad_(False) if ema is not None else None
        self.num_classes = num_classes

    # --- what a family implements
    @classmethod
    def build_net(cls, network: Mapping[str, Any]) -> nn.Module:
        """θ's network from the constructor settings `model.network` (families configured that way)."""
        raise NotImplementedError(f"{cls.__name__} is not built from model.network")

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one generated sample: (channels, height, width) for images, (features,) for points."""

    @abc.abstractmethod
    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        """The family's own training loss on a batch (pretraining and fine-tuning use the same one); every
        random draw comes from `noise`, so it does not depend on the process count."""

    @abc.abstractmethod
    def generate(
        self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One sample per seed with `sampler`; returns (samples, labels or None)."""

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """The settings of one of the family's samplers that are diversity-seeking, each as 'key = value (why)'."""
        return []

    @classmethod
    def check_sampler_settings(cls, settings: Mapping[str, Any], key: str) -> None:
        """Refuse, in one line naming `key`.<setting>, sampler settings the family's samplers cannot use (a
        negative temperature); called by the pre-flight, before any work (by default: nothing to refuse)."""

    @classmethod
    def check_model_settings(cls, settings: Mapping[str, Any]) -> None:
        """Refuse, in one line naming model.<setting>, model settings the family cannot be built from (a folder
        that is not there); called by the pre-flight with the model config, before any work, so it must be cheap
        (by default: nothing to refuse)."""

    def config_overrides(self) -> dict:
        """Model-config entries that differ from the config because a checkpoint set them: the network's
        constructor settings in use."""
        return {} if self.network_kwargs is None else {"network": dict(self.network_kwargs)}

    def export_samples(self, x: torch.Tensor):
        """Samples as a numpy array for .npz files (families with images return uint8 NHWC)."""
        return x.detach().cpu().numpy()

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """Weights of the sampling network from a file of any format `neon.weights.readers` reads."""
        return read_weights(path)

    @classmethod
    def spec_for_checkpoint(cls, spec: dict[str, Any], path: str | Path, shape_from_checkpoint: bool) -> dict[str, Any]:
        """The constructor settings to build the module with when `path` will be loaded into it: a checkpoint
        that records its own architecture (an EDM snapshot) gives it here, so the module is built once, as the
        checkpoint needs it (by default: `spec` unchanged)."""
        return spec

    # --- shared behaviour
    @property
    def own_sampling_net(self) -> nn.Module:
        """The module's own network that samples: the EMA copy where the family keeps one."""
        return self.ema if self.ema is not None else self.net

    @property
    def sampling_net(self) -> nn.Module:
        """What `generate` hands its sampler: the own sampling network, or a stand-in set by `sampling_through`."""
        stand_in = self.__dict__.get("_sampling_stand_in")
        return stand_in if stand_in is not None else self.own_sampling_net

    @contextlib.contextmanager
    def sampling_through(self, net: Any) -> Iterator[None]:
        """Within the block, `generate` samples through `net` (e.g. the output-space twin, a call counter)."""
        # kept out of nn.Module's registries: the stand-in is no submodule and never part of a state dict
        self.__dict__["_sampling_stand_in"] = net
        try:
            yield
        finally:
            self.__dict__.pop("_sampling_stand_in", None)

    def neon_weights(self) -> StateDict:
        """θ as Neon sees it: the sampling network's state dict."""
        return self.own_sampling_net.state_dict()

    def load_neon_weights(self, state: StateDict, source: str = "checkpoint") -> None:
        """Load θ into the network (and its EMA), naming any missing, unexpected or misshapen key."""
        check_state_fits(self.net.state_dict(), state, source, f"model {type(self).__name__}",
                         "check that model= matches the checkpoint's family and size")
        self.net.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state)

    def replace_net(self, net: nn.Module) -> None:
        """Make `net` θ's network (a checkpoint's own architecture) and rebuild its EMA copy; both take the
        train/eval mode of the networks they replace, so loading weights never turns dropout back on."""
        net.train(self.net.training)
        if self.ema is not None:
            self.ema = copy.deepcopy(net).requires_grad_(False).train(self.ema.training)
        self.net = net

    def load_checkpoint(self, path: str | Path, shape_from_checkpoint: bool = False) -> None:
        """Read a checkpoint file and load it as θ. `shape_from_checkpoint` (tasks that never meet the data:
        sample, export, evaluate): where the file records the network's data shape (resolution, channels,
        classes), it is taken, with a log line, instead of having to agree with the config."""
        self.load_neon_weights(self.read_checkpoint(path), source=f"checkpoint '{path}'")

    @property
    def device(self) -> torch.device:
        """Where the module's weights are (the CPU for a module without any)."""
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def optimizer_params(self) -> Iterable[nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer trains: the network's parameters (families may return parameter groups)."""
        return self.net.parameters()


class HasOutputTwin:
    """Opt-in: the output-space twin (`neon.compare=output`, neon/analysis/output_twin.py). `twin_outputs` names the
    methods of the sampling network whose outputs are combined as (1 + w)·f(θ_r) − w·f(θ_s); `twin_state`
    those that only manage per-network state (caches) and run on both networks. Every other attribute a
    sampler reads must not depend on the weights (it is read from θ_r's copy)."""

    twin_outputs: ClassVar[tuple[str, ...]] = ()
    twin_state: ClassVar[tuple[str, ...]] = ()


class HasReleaseSampling(abc.ABC):
    """Opt-in: `sample.rng=release`, sampling seeded as the family's official script seeds it."""

    @abc.abstractmethod
    def generate_release(self, release_seed: int, seeds: Sequence[int], batch_size: int, sampler: Sampler,
                         labels: LabelSpec) -> Iterator[Draw]:
        """len(seeds) samples, `batch_size` at a time, seeded as the family's official script seeds them (from
        `release_seed`, or the seeds where the release seeds per image), with labels given, drawn as the release
        draws them, or unconditional (docs/families/<family>.md)."""


class HasNativeExport(abc.ABC):
    """Opt-in: θ (e.g. θ_neon) also written in the family's own loadable layout (diffusers: a pipeline folder)."""

    native_card_header: ClassVar[str] = ""  # opens the model card in `write_native`'s folder (e.g. YAML metadata)
    # what the folder is called after θ's name: theta_neon_pipeline/ (diffusers), theta_neon_model/ (transformers)
    native_folder: ClassVar[str] = "pipeline"

    @abc.abstractmethod
    def write_native(self, state: StateDict, out: Path) -> Path:
        """θ = `state` in the family's own layout at `out`; returns the folder written."""


class HasReleaseCheckpoints(abc.ABC):
    """Opt-in: the family reads its official releases' checkpoint formats (beyond `neon.weights.readers`' own)."""

    @abc.abstractmethod
    def read_checkpoint(self, path: str | Path) -> StateDict:
        """Weights of the sampling network from a release file (or any file `neon.weights.readers` reads)."""


class HasLikelihood(abc.ABC):
    """Opt-in: an exact likelihood (autoregressive families), so that metrics can score θ on real held-out data:
    the population risk Neon's theorem is about (`metrics.compute: [nll]`)."""

    @abc.abstractmethod
    def token_nll(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(summed negative log-likelihood in nats, number of tokens predicted) of the sequences `x` [N, L] under
        the sampling network, every token predicted from the ones before it."""


class HasTextSamples(abc.ABC):
    """Opt-in: samples are token sequences, shown as text (previews write `.txt`, not an image grid)."""

    @abc.abstractmethod
    def decode_samples(self, x: torch.Tensor) -> list[str]:
        """The text of each sampled sequence in `x` [N, L]."""


def release_sampling(module: NeonModule) -> HasReleaseSampling:
    """`module` as a family with release-mode sampling, or a one-line error naming the way out."""
    if not isinstance(module, HasReleaseSampling):
        raise NeonError(f"{module.family} has no release-mode sampling: use sample.rng=per_seed")
    return module


def family_of(model_cfg: Mapping[str, Any]) -> type[NeonModule]:
    """The family class a model config builds (its `_target_`), without building it."""
    from hydra.utils import get_object

    target = model_cfg.get("_target_")
    try:
        cls = get_object(str(target))
    except ImportError as exc:
        raise NeonError(f"model._target_ '{target}' cannot be imported ({exc}): give a family class such as "
                        "neon.families.edm.EDMModule") from None
    if not (isinstance(cls, type) and issubclass(cls, NeonModule)):
        raise NeonError(f"model._target_ '{target}' is not a model family (a neon.core.contract.NeonModule subclass)")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    missing += [name for name in ("family", "samplers") if getattr(cls, name) == getattr(NeonModule, name)]
    if missing:
        raise NeonError(f"model._target_ '{target}' lacks the family contract's {', '.join(missing)} "
                        "(neon.core.contract.NeonModule; see docs/adding-a-family.md)")
    return cls


def _dotted(fn: Any) -> str:
    fn = getattr(fn, "func", fn)  # a functools.partial names its function
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def check_sampler(model_cfg: Mapping[str, Any], sampler_cfg: Mapping[str, Any], model_name: str | None = None,
                  sampler_name: str | None = None) -> None:
    """Refuse, in one line, a sampler that is not one of the model family's `samplers` (e.g. EDM's Heun
    sampler for a VAR model); the names are the config choices (model=..., sampler=...) when known."""
    from hydra.utils import get_object

    family = family_of(model_cfg)
    target = sampler_cfg.get("_target_")
    accepted = dict(family.samplers)
    if not accepted:
        return  # a family that declares no samplers takes any
    try:
        fn = get_object(str(target))
    except ImportError:
        fn = None
    if fn is not None and any(fn is a or getattr(fn, "__wrapped__", None) is a for a in accepted.values()):
        return
    given = f"sampler={sampler_name}" if sampler_name else f"sampler._target_={target}"
    model = f"model {model_name} ({family.family})" if model_name else f"model {family.__name__}"
    names = " or ".join(f"sampler={n}" for n in accepted)
    raise NeonError(f"{given} is not a sampler of {model}, which samples with "
                    f"{', '.join(_dotted(f) for f in accepted.values())}: use {names} or drop the override")


def check_samplers(cfg: Mapping[str, Any], choices: Mapping[str, Any] | None = None) -> None:
    """Before any work: the run's sampler, and the evaluation sampler where `metrics.sampler` names another,
    belong to the model's family and have settings it can use; then the family's own model checks
    (`check_model_settings`); `choices` are Hydra's group choices (for the names in the message)."""
    choices = choices or {}
    model, sampler = cfg["model"], cfg["sampler"]
    check_sampler(model, sampler, choices.get("model"), choices.get("sampler"))
    evaluation = (cfg.get("metrics") or {}).get("sampler") or {}
    if evaluation.get("_target_") not in (None, sampler.get("_target_")):
        check_sampler(model, evaluation, choices.get("model"), None)
    family = family_of(model)
    family.check_sampler_settings(dict(sampler), "sampler")
    if evaluation:  # the evaluation sampler: the run's with metrics.sampler's entries over it
        family.check_sampler_settings({**dict(sampler), **dict(evaluation)}, "metrics.sampler")
    family.check_model_settings(model)


def diversity_warning(model_cfg: Mapping[str, Any], sampler_cfg: Mapping[str, Any]) -> str | None:
    """A warning naming the sampler settings of S that the model's family calls diversity-seeking, or None."""
    found = family_of(model_cfg).diversity_seeking(sampler_cfg)
    if not found:
        return None
    return (f"S is drawn with diversity-seeking settings ({'; '.join(found)}): real and synthetic gradients then "
            "tend to align and Neon's w > 0 does not help (the paper's theory); check with `neon task=diagnose` "
            "before spending compute, or use a mode-seeking sampler")


def setting_above(settings: Mapping[str, Any], key: str, bound: float, why: str, inclusive: bool = False
                  ) -> list[str]:
    """['key = value (why)'] when the numeric setting `key` exceeds `bound` (or reaches it), else []."""
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    return [f"{key} = {value} ({why})"] if (value >= bound if inclusive else value > bound) else []


def setting_below(settings: Mapping[str, Any], key: str, bound: float, why: str) -> list[str]:
    """['key = value (why)'] when the numeric setting `key` is below `bound`, else []."""
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    return [f"{key} = {value} ({why})"] if value < bound else []

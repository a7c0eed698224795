"""The diffusers family as a NeonModule: a local pipeline folder's denoising network (θ), its scheduler's
training objective, and sampling through that scheduler with one generator per image."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neon.core.contract import (
    EMA,
    Batch,
    HasNativeExport,
    HasOutputTwin,
    HasReleaseCheckpoints,
    NeonModule,
    Sampler,
    plain_kwargs,
    setting_above,
)
from neon.core.errors import NeonError
from neon.core.io import StateDict
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.diffusers_family.folder import (
    FLOW_SCHEDULERS,
    PipelineFolder,
    check_scheduler,
    read_pipeline_folder,
)
from neon.families.diffusers_family.objective import FlowWeighting, scheduler_loss
from neon.families.diffusers_family.sampler import scheduler_sampler
from neon.metrics.images import to_uint8
from neon.weights.readers import read_weights

log = logging.getLogger("neon")

NETWORKS = ("UNet2DModel", "DiTTransformer2DModel")


def _plain(value: Any) -> Any:
    # Hydra passes nested settings as DictConfig/ListConfig; diffusers writes its configs as JSON
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _scheduler(name: str, config: Mapping[str, Any]):
    import diffusers

    return getattr(diffusers, name).from_config(dict(config))


class DiffusersModule(NeonModule, HasOutputTwin, HasNativeExport, HasReleaseCheckpoints):
    """A diffusers pipeline's network: a `UNet2DModel` (DDPMPipeline / DDIMPipeline, `num_class_embeds` for
    classes; `null_class` names the last row as the null class guidance and label dropout use) or a
    `DiTTransformer2DModel` in a frozen `AutoencoderKL` latent space (DiTPipeline), from
    `pretrained` (a local folder), or a UNet built from `network` + `scheduler` settings and pretrained here.
    Samples are images in [-1, 1]; `quantize` rounds them to the 8-bit grid the pipeline's PIL output has."""

    family = "diffusers"
    samplers = {"diffusers": scheduler_sampler}
    release_note = ("diffusers pipelines are folders (model_index.json, one subfolder per component); "
                    "theta_neon_pipeline/ is that folder with the merged network, for "
                    "DiffusionPipeline.from_pretrained")
    # the Hub's model-card metadata, so the folder's README.md reads as a diffusers model card
    twin_outputs = ("forward",)  # the UNet/transformer's prediction (ε, v or x_0), combined per step
    native_card_header = "---\nlibrary_name: diffusers\ntags:\n- neon\n- image-generation\n---\n"

    def __init__(self, pretrained: str | None = None, network: Mapping[str, Any] | None = None,
                 scheduler: Mapping[str, Any] | None = None, optimizer=None, ema_decay: float | None = None,
                 label_dropout: float | None = None, null_class: int | None = None,
                 flow_weighting: Mapping[str, Any] | None = None, quantize: bool = True):
        self.folder: PipelineFolder | None = None
        if pretrained:
            self.folder = read_pipeline_folder(pretrained)
            network = self.folder.network_config()
            self.scheduler_class, scheduler_config = self.folder.scheduler_class, self.folder.scheduler_config
        else:
            if not network or not scheduler:
                raise NeonError("model=diffusers needs model.pretrained=<a local pipeline folder> (or, to build one "
                                "here, model.network and model.scheduler settings)")
            network, scheduler = _plain(network), _plain(scheduler)
            scheduler_config = {k: v for k, v in scheduler.items() if k != "class_name"}
            self.scheduler_class = str(scheduler.get("class_name", "DDPMScheduler"))
            check_scheduler(self.scheduler_class, scheduler_config, "model.scheduler")
        self.network_kwargs = plain_kwargs(network)
        self.scheduler_config = dict(scheduler_config)
        net = self.build_net(self.network_kwargs)
        config = net.config
        is_dit = "num_embeds_ada_norm" in config
        allowed = (config.in_channels, 2 * config.in_channels) if is_dit else (config.in_channels,)
        if (config.out_channels or config.in_channels) not in allowed:
            raise NeonError(f"the network predicts {config.out_channels} channels for {config.in_channels} input "
                            "channels (a learned variance?): UNet2DModel networks need out_channels = in_channels")
        classes = int((config.num_embeds_ada_norm if is_dit else config.num_class_embeds) or 0)
        if null_class is not None:  # a UNet's class table with a last row meaning "no class"
            classes = self._check_null_class(null_class, classes, is_dit)
        super().__init__(net, optimizer=optimizer, ema=EMA(decay=ema_decay) if ema_decay else None,
                         num_classes=classes)
        # DiT's label embeddings drop labels themselves with the global generator; here the loss drops them
        # (label_dropout, from the step's noise), so they never do
        self.null_label = self._own_label_dropout(net) if is_dit else null_class
        self.label_dropout = float(label_dropout if label_dropout is not None else (0.1 if self.null_label else 0.0))
        if self.label_dropout and self.null_label is None:
            raise NeonError(f"model.label_dropout={self.label_dropout}: the network has no null class to drop to")
        self.vae = self._frozen_vae() if self.folder is not None and self.folder.vae_name else None
        if self.vae is not None and int(self.vae.config.latent_channels) != int(config.in_channels):
            raise NeonError(f"pipeline '{self.folder.path}': the VAE ({self.folder.vae_name}/) makes latents of "
                            f"{self.vae.config.latent_channels} channels but the network takes {config.in_channels}: "
                            "the folder's components do not belong together")
        if self.folder is not None:
            self.load_neon_weights(self.read_checkpoint(self.folder.path), source=f"pipeline '{self.folder.path}'")
        self.scheduler = _scheduler(self.scheduler_class, self.scheduler_config)
        self.flow_weighting = self._flow_weighting(_plain(flow_weighting) or {})
        self.quantize = quantize

    def _flow_weighting(self, settings: Mapping[str, Any]) -> FlowWeighting:
        try:
            rule = FlowWeighting(**settings)
        except TypeError:
            raise NeonError(f"model.flow_weighting takes {', '.join(FlowWeighting.__dataclass_fields__)}; got "
                            f"{', '.join(settings)}") from None
        if rule.weighting_scheme != "none" and self.scheduler_class not in FLOW_SCHEDULERS:
            raise NeonError(f"model.flow_weighting.weighting_scheme={rule.weighting_scheme} is for flow-matching "
                            f"schedulers; {self.scheduler_class} trains with uniform timesteps")
        return rule

    @staticmethod
    def _check_null_class(null_class: int, rows: int, is_dit: bool) -> int:
        # UNet2DModel's config has no null class: the user names it, and it must be the table's last row so
        # the classes stay 0 … rows − 2
        if is_dit:
            raise NeonError("model.null_class is for UNet2DModel networks: a DiT's null class is its own "
                            "(the label table's last row); leave model.null_class=null")
        if rows < 2 or int(null_class) != rows - 1:
            raise NeonError(f"model.null_class={null_class}: the null class must be the last row of the network's "
                            f"class table (num_class_embeds {rows}), i.e. {rows - 1}")
        return rows - 1

    @staticmethod
    def _own_label_dropout(net: nn.Module) -> int | None:
        from diffusers.models.embeddings import LabelEmbedding

        tables = [m for m in net.modules() if isinstance(m, LabelEmbedding)]
        for table in tables:
            table.dropout_prob = 0.0
        # the null class exists where the table has a row past the classes
        has_null = tables and all(t.embedding_table.num_embeddings > t.num_classes for t in tables)
        return int(tables[0].num_classes) if has_null else None

    def _frozen_vae(self) -> nn.Module:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(self.folder.path / self.folder.vae_name, local_files_only=True)
        return vae.eval().requires_grad_(False)

    @classmethod
    def build_net(cls, network: Mapping[str, Any]) -> nn.Module:
        """The network from its constructor settings (a folder's config.json, or model.network) and its
        `class_name` (UNet2DModel by default, or DiTTransformer2DModel)."""
        import diffusers

        settings = dict(network)
        name = settings.pop("class_name", "UNet2DModel")
        if name not in NETWORKS:
            raise NeonError(f"model.network.class_name '{name}' is not supported: use one of {', '.join(NETWORKS)}")
        try:
            return getattr(diffusers, name)(**settings)
        except (TypeError, ValueError) as exc:
            raise NeonError(f"model.network does not build a {name}: {exc}") from None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) the network denoises: the images, or the VAE's latents."""
        size = self.net.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.net.config.in_channels), int(h), int(w))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the generated images."""
        c, h, w = self.latent_shape
        if self.vae is None:
            return (c, h, w)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (int(self.vae.config.out_channels), h * factor, w * factor)

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """DDIM with η = 1 is ancestral (DDPM-like) sampling: fresh noise at every step."""
        return setting_above(settings, "eta", 1.0, "η ≥ 1 adds full fresh noise each step", inclusive=True)

    def _labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if not self.num_classes:
            if labels is not None:
                raise NeonError("the network is unconditional (no num_class_embeds) but class labels were given: "
                                "use unconditional data and sampling")
            return None
        if labels is None:
            raise NeonError(f"the network is class-conditional ({self.num_classes} classes) but the data has no labels")
        return labels.long()

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x = batch["x"]
        if tuple(x.shape[1:]) != self.image_shape:
            raise NeonError(f"images of shape {tuple(x.shape[1:])} do not fit the network, which expects {self.image_shape}")
        # an unconditional network ignores the data's labels, as it would any other unused field
        labels = self._labels(batch.get("label")) if self.num_classes else None
        if self.vae is not None:  # the frozen VAE's latents: (mean + std·n) · scaling factor, n from the step
            with torch.no_grad():
                dist = self.vae.encode(x).latent_dist
                x = (dist.mean + dist.std * noise.randn(*dist.mean.shape[1:])) * self.vae.config.scaling_factor
        if self.null_label is not None and labels is not None:
            # drawn whatever the rate, so the t and ε after it do not depend on model.label_dropout
            labels = torch.where(noise.rand() < self.label_dropout, self.null_label, labels)
        return scheduler_loss(self.net, self.scheduler, x, labels, noise, self.flow_weighting)

    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None):
        # one generator per image: its initial noise first, as the pipelines draw it, then (class-conditional
        # models) a label, drawn even when labels are given so the step noise after it is the same either way
        rng = PerSampleRNG(seeds, self.device)
        latents = rng.randn(*self.latent_shape)
        drawn = rng.randint(self.num_classes) if self.num_classes else None
        labels = drawn if labels is None else labels
        labels = self._labels(labels.to(self.device) if labels is not None else None)
        scheduler = _scheduler(self.scheduler_class, self.scheduler_config)  # set_timesteps changes its state
        x = sampler(self.sampling_net, scheduler, latents, labels, rng.generators, null_label=self.null_label)
        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        x = (x / 2 + 0.5).clamp(0, 1)  # the pipelines' output, in [0, 1]
        if self.quantize:
            x = (x * 255).round() / 255  # the 8-bit grid of the pipelines' PIL images
        return (x * 2 - 1).to(torch.float32), labels

    def export_samples(self, x: torch.Tensor) -> np.ndarray:
        """Images as uint8 NHWC, the layout of the ADM evaluation suite."""
        return to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """A pipeline folder's network weights (safetensors, sharded or not), or any weights file."""
        path = Path(path)
        if path.is_dir():
            folder = read_pipeline_folder(path)
            return read_weights(_weights_file(folder.network_dir), what=f"{folder.network_name} weights")
        return super().read_checkpoint(path)

    def load_checkpoint(self, path: str | Path, shape_from_checkpoint: bool = False) -> None:
        """Load θ from a file or folder; the pipeline folder itself was read at construction (not again)."""
        if self.folder is not None and Path(path).resolve() == self.folder.path.resolve():
            return
        super().load_checkpoint(path, shape_from_checkpoint)

    def write_native(self, state: StateDict, out: Path) -> Path:
        """θ (e.g. θ_neon) as a pipeline folder `DiffusionPipeline.from_pretrained` loads."""
        from neon.families.diffusers_family.pipeline_writer import write_pipeline

        net = copy.deepcopy(self.own_sampling_net)
        net.load_state_dict(state)
        return write_pipeline(net, _scheduler(self.scheduler_class, self.scheduler_config), out, self.folder)


def _weights_file(network_dir: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
                 "diffusion_pytorch_model.bin"):
        if (network_dir / name).is_file():
            return network_dir / name
    raise NeonError(f"'{network_dir}' holds no diffusion_pytorch_model weights (.safetensors, a sharded index or "
                    ".bin)")

"""The VAR family as a NeonModule: θ is the next-scale transformer; the multi-scale VQVAE is a frozen
tokenizer, read from the release's file or trained once on the data and cached (the tiny model)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_method
from torch import nn
from torch.nn import functional as F

from neon.core.cache import ArtifactCache
from neon.core.contract import Batch, HasOutputTwin, HasReleaseCheckpoints, HasReleaseSampling, Sampler, plain_kwargs
from neon.core.errors import NeonError
from neon.core.io import StateDict, check_state_fits, dim_of, load_state_dict, save_state_dict
from neon.core.release_sampling import UNCONDITIONAL, Draw, LabelSpec, batch_labels, sizes_of
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.latent_family import LatentImageModule, check_architecture, check_class_ids
from neon.families.var.sampler import var_sampler
from neon.families.var.tokenizer import train_vqvae
from neon.families.var.transformer import VARTransformer
from neon.families.var.vqvae import VQVAE

log = logging.getLogger("neon")


class VARModule(LatentImageModule, HasOutputTwin, HasReleaseSampling, HasReleaseCheckpoints):
    """VAR: teacher-forced next-scale cross-entropy with class dropout to the null class; no EMA (as the
    reference fine-tune); the VQVAE is its frozen latent space; samples are images in [-1, 1] on the 8-bit grid
    of the reference's PNGs (`quantize`)."""

    family = "VAR"
    release_pth = ("the layout of var_d16.pth … var_d36.pth: VAR's demo_sample.ipynb reads the file with torch.load "
                   "and loads it with load_state_dict(strict=True)")
    samplers = {"var": var_sampler}
    twin_outputs = ("scale_logits",)  # each scale's logits, before guidance and top-k/top-p
    twin_state = ("set_caching",)  # each network keeps its own keys and values

    def __init__(self, network: Mapping[str, Any], vae: Mapping[str, Any], vae_checkpoint: str | None = None,
                 vae_pretrain: Mapping[str, Any] | None = None, optimizer=None, cond_drop_rate: float = 0.1,
                 label_smoothing: float = 0.0, quantize: bool = True):
        self.network_kwargs, self.vae_kwargs = plain_kwargs(network), plain_kwargs(vae)
        self.vae_kwargs.setdefault("patch_nums", self.network_kwargs.get("patch_nums"))
        net = self.build_net(self.network_kwargs)
        super().__init__(net, optimizer=optimizer, num_classes=net.num_classes)
        self.vae = VQVAE(**self.vae_kwargs)
        if tuple(self.vae.patch_nums) != net.patch_nums:
            raise NeonError(f"model.vae.patch_nums {list(self.vae.patch_nums)} differ from model.network.patch_nums "
                            f"{list(net.patch_nums)}")
        if self.vae.quantize.vocab_size != net.vocab_size or self.vae.quantize.channels != net.word_embed.in_features:
            raise NeonError(f"the VQVAE (vocabulary {self.vae.quantize.vocab_size}, {self.vae.quantize.channels} "
                            f"channels) does not fit the transformer (vocab_size {net.vocab_size}, vae_channels "
                            f"{net.word_embed.in_features})")
        if vae_checkpoint:
            self.load_vae(vae_checkpoint)
        elif vae_pretrain:
            self.vae.load_state_dict(cached_tokenizer(self.vae_kwargs, dict(vae_pretrain)))
        else:
            raise NeonError("VAR needs its VQVAE: give model.vae_checkpoint=PATH (the release's "
                            "vae_ch160v4096z32.pth)")
        self.vae.eval().requires_grad_(False)
        self.cond_drop_rate, self.label_smoothing, self.quantize = cond_drop_rate, label_smoothing, quantize

    @classmethod
    def build_net(cls, network: Mapping[str, Any]) -> VARTransformer:
        """The next-scale transformer of `model.network`."""
        return VARTransformer(**network)

    @property
    def latent_space(self) -> nn.Module:
        """The VQVAE tokenizer."""
        return self.vae

    # --- checkpoints
    def load_vae(self, path: str | Path) -> None:
        """The release's VQVAE state dict; its vocabulary and latent width must match model.vae."""
        if not Path(path).is_file():
            raise NeonError(f"model.vae_checkpoint '{path}' does not exist: VAR needs its VQVAE "
                            "(e.g. vae_ch160v4096z32.pth from the VAR release)")
        state = dict(load_state_dict(path))
        own = self.vae.state_dict()
        found = state.get("quantize.embedding.weight")
        want = own["quantize.embedding.weight"]
        if found is None:
            raise NeonError(f"'{path}' is not a VAR VQVAE: it has no quantize.embedding.weight")
        if tuple(found.shape) != tuple(want.shape):
            raise NeonError(f"VQVAE '{path}' has a vocabulary of {found.shape[0]} codes of width {found.shape[1]} "
                            f"but model.vae asks for {want.shape[0]} × {want.shape[1]} (vocab_size, z_channels)")
        # usage counts depend on the number of scales (the 512 px model reuses the 256 px file): keep ours
        if state.get("quantize.ema_vocab_hit_SV", own["quantize.ema_vocab_hit_SV"]).shape != \
                own["quantize.ema_vocab_hit_SV"].shape:
            state["quantize.ema_vocab_hit_SV"] = own["quantize.ema_vocab_hit_SV"]
        check_state_fits(own, state, f"VQVAE '{path}'", "model.vae", "check ch, ch_mult and num_res_blocks")
        self.vae.load_state_dict(state)

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """A released `var_d*.pth` (a plain state dict), checked for depth, scales, classes and vocabulary."""
        state = super().read_checkpoint(path)
        net = self.net
        depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
        checks = [
            ("depth", depth, net.depth, "model.network.depth"),
            ("width", dim_of(state, "class_emb.weight", 1), net.dim, "model.network.embed_dim"),
            ("number of scales", dim_of(state, "lvl_embed.weight", 0), len(net.patch_nums), "model.network.patch_nums"),
            ("token count (Σ pn²)", dim_of(state, "pos_1LC", 1), net.bounds[-1][1], "model.network.patch_nums"),
            ("class count", dim_of(state, "class_emb.weight", 0) - 1, net.num_classes, "model.network.num_classes"),
            ("vocabulary", dim_of(state, "head.weight", 0), net.vocab_size, "model.network.vocab_size"),
        ]
        check_architecture(path, "VAR", checks, f"e.g. model=var_d{depth}")
        return state

    # --- training
    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        x, labels = batch["x"], batch.get("label")
        self.check_images(x, labels)
        with torch.no_grad():
            indices = self.vae.encode_indices(x)
            inputs = self.vae.quantize.teacher_inputs(indices)
        # class dropout to the null class, so that the same network also gives the unconditional logits
        labels = torch.where(noise.rand().to(x.device) < self.cond_drop_rate, self.num_classes, labels.long())
        logits = self.net(labels, inputs, noise if self.training else None)
        target = torch.cat(indices, dim=1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               label_smoothing=self.label_smoothing)

    # --- sampling
    def draw_labels(self, rng: PerSampleRNG) -> torch.Tensor:
        """One uniform class per seed, drawn first (as the release does) by a multinomial draw."""
        uniform = torch.full((1, self.num_classes), 1.0 / self.num_classes, device=self.device)
        return torch.cat([torch.multinomial(uniform, 1, replacement=True, generator=g).view(1)
                          for g in rng.generators])

    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None):
        rng = PerSampleRNG(seeds, self.device)
        labels = self.labels_for(rng, labels)
        return self.finish_images(sampler(self.sampling_net, self.vae, labels, rng), self.quantize), labels

    def generate_release(self, release_seed: int, seeds: Sequence[int], batch_size: int, sampler: Sampler,
                         labels: LabelSpec) -> Iterator[Draw]:
        """Batch i is `autoregressive_infer_cfg(B, label_B, g_seed=release_seed + i)`: one generator on the
        model's device seeded at the start of the call, labels given, drawn first from it (a multinomial
        over uniform class probabilities) or the null class; `raw` is what that call returns (images in
        [0, 1], NCHW)."""
        for i, (start, size) in enumerate(zip(range(0, len(seeds), batch_size), sizes_of(len(seeds), batch_size), strict=True)):
            g = torch.Generator(self.device).manual_seed(int(release_seed) + i)
            given = batch_labels(labels, start, size, self.device)
            if labels == UNCONDITIONAL:
                given = torch.full((size,), self.num_classes, dtype=torch.long, device=self.device)
            elif given is None:
                uniform = torch.full((1, self.num_classes), 1.0 / self.num_classes, device=self.device)
                given = torch.multinomial(uniform, size, replacement=True, generator=g).reshape(size)
            else:
                check_class_ids(given, self.num_classes, self.family)
            x = sampler(self.sampling_net, self.vae, given, g)
            raw = x.add(1).mul(0.5)  # the release returns (x + 1)·0.5
            yield Draw(self.finish_images(x, self.quantize), None if labels == UNCONDITIONAL else given, raw)


def cached_tokenizer(vae_kwargs: dict[str, Any], recipe: dict[str, Any]) -> StateDict:
    """A VQVAE trained on `recipe.images` (a function returning (images, labels)) once, then read from
    the artifact cache at `recipe.cache_dir`."""
    cache_dir = recipe.pop("cache_dir", ".neon_cache")
    key = {"vae": vae_kwargs, "recipe": recipe}

    def build(work: Path) -> None:
        images, _ = get_method(recipe["images"])()
        state = train_vqvae(VQVAE(**vae_kwargs), images, steps=int(recipe["steps"]), lr=float(recipe["lr"]),
                            batch_size=int(recipe["batch_size"]), seed=int(recipe.get("seed", 0)))
        save_state_dict(state, work / "vqvae.safetensors")

    folder, built = ArtifactCache(cache_dir).get_or_build("tokenizer", key, build)
    if built:
        log.info("VQVAE: trained into %s", folder)
    return load_state_dict(folder / "vqvae.safetensors")

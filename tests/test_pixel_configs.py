"""model=imm_pixels and model=xar_pixels: the release networks without a VAE from the command line — a small
official-format checkpoint samples with only the network's settings given (no `~model.latent +model.latent=…`),
the same images as the family module built in Python with a PixelLatent."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from neon.families.imm import IMMModule, pushforward_sampler
from neon.families.latents import PixelLatent
from neon.families.xar import XARModule, xar_sampler
from neon.launch.cli import CONF_DIR
from neon.stages.run import Run
from neon.tasks.export import run_sample
from tests import test_imm, test_xar


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.output_dir={tmp_path / 'run'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])


def _network(net: dict) -> list[str]:
    return [f"model.network.{k}={'null' if v is None else v}" for k, v in net.items()]


def test_the_pixel_latent_follows_the_network(tmp_path: Path):
    imm = Run.from_config(_cfg(tmp_path, "model=imm_pixels", "model.checkpoint=x", "model.network.img_channels=3",
                               "model.network.img_resolution=16")).build_module()
    assert imm.image_shape == (3, 16, 16) and isinstance(imm.latent, PixelLatent)
    xar = Run.from_config(_cfg(tmp_path, "model=xar_pixels", "model.checkpoint=x", "model.network.channels=3",
                               "model.network.grid=8")).build_module()
    assert xar.image_shape == (3, 8, 8) and isinstance(xar.latent, PixelLatent)


def test_imm_pixels_samples_a_small_snapshot_as_the_module_does(tmp_path: Path):
    path = tmp_path / "imm.pkl"
    test_imm.write_persistence_pickle(path, test_imm.random_precond(test_imm.NET).state_dict(), test_imm.NET)
    cfg = _cfg(tmp_path, "task=sample", "model=imm_pixels", *_network(test_imm.NET), f"model.checkpoint={path}",
               "sample.rng=release", "sample.release_seed=5", "sample.seeds=0-2", "sample.raw=true",
               "sampler.num_steps=2", "sampler.cfg=1.5")
    with np.load(run_sample(cfg)["out"]) as f:
        raw, labels = f["raw"], f["arr_1"]
    module = IMMModule(test_imm.NET, PixelLatent(**test_imm.LATENT))
    module.load_checkpoint(path)
    module.eval()
    [draw] = module.generate_release(5, range(3), 64, partial(pushforward_sampler, num_steps=2, cfg=1.5), "random")
    assert raw.shape == (3, 4, 8, 8) and labels.tolist() == draw.labels.tolist()
    np.testing.assert_array_equal(raw, draw.raw.numpy())


def test_xar_pixels_samples_a_flat_release_file_as_the_module_does(tmp_path: Path):
    path, _ = test_xar.write_release_files(tmp_path)
    cfg = _cfg(tmp_path, "task=sample", "model=xar_pixels", *_network(test_xar.NET), f"model.checkpoint={path}",
               "sample.rng=release", "sample.release_seed=11", "sample.seeds=0-2", "sample.labels=[3,7,1]",
               "sample.raw=true", "sampler.num_steps=3", "sampler.cfg=2.0")
    with np.load(run_sample(cfg)["out"]) as f:
        raw = f["raw"]
    module = XARModule(test_xar.NET, PixelLatent(in_channels=4, image_size=4))
    module.load_checkpoint(path)
    module.eval()
    draws = list(module.generate_release(11, range(3), 64, partial(xar_sampler, num_steps=3, cfg=2.0), [3, 7, 1]))
    np.testing.assert_array_equal(raw, torch.cat([d.raw for d in draws]).numpy())

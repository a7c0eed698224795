"""`sample.rng=release`: each family's official seeding, checked against the family's own sampler called from
Python with one generator for the batch (the release's convention, checked against the official code in
tests/test_{var,xar,imm,edm}.py and docs/families/); per-seed mode unchanged."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from neon.core.errors import NeonError
from neon.core.release_sampling import label_spec
from neon.families.edm import EDMModule
from neon.families.imm import IMMModule, pushforward_sampler
from neon.families.latents import PixelLatent
from neon.families.var import VARModule
from neon.families.var.sampler import var_sampler
from neon.families.xar import XARModule, xar_sampler
from neon.launch.cli import CONF_DIR
from neon.tasks.export import run_sample
from tests import test_imm, test_var, test_xar
from tests.edm_snapshot import TINY_DDPMPP, write_snapshot


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.output_dir={tmp_path / 'run'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])


def _draws(module, *args) -> list:
    return list(module.generate_release(*args))


@pytest.fixture()
def var_files(tmp_path: Path) -> tuple[Path, Path]:
    return test_var.write_release_files(tmp_path / "var")


def test_var_release_mode_from_the_command_line_equals_autoregressive_infer_cfg(tmp_path: Path, var_files):
    var_path, vae_path = var_files
    arch = [f"model.{group}.{k}={v}".replace(" ", "") for group, d in (("network", test_var.NET), ("vae", test_var.VAE))
            for k, v in d.items()]
    for top_k, top_p in ((8, 0.95), (0, 0.0)):
        cfg = _cfg(tmp_path, "task=sample", "model=var_tiny", *arch,
                   f"model.checkpoint={var_path}", f"model.vae_checkpoint={vae_path}", "sample.rng=release",
                   "sample.release_seed=0", "sample.labels=[0,3,7,9]", "sample.raw=true", "sample.seeds=0-3",
                   "sampler.cfg=1.5", f"sampler.top_k={top_k}", f"sampler.top_p={top_p}")
        with np.load(run_sample(cfg)["out"]) as f:
            raw, labels, images = f["raw"], f["arr_1"], f["arr_0"]
        module = VARModule(test_var.NET, test_var.VAE, vae_checkpoint=str(vae_path))
        module.load_checkpoint(var_path)
        module.eval()
        # autoregressive_infer_cfg(B=4, label_B=[0,3,7,9], g_seed=0, ...) returns (x + 1)·0.5 of this
        want = var_sampler(module.net, module.vae, torch.tensor([0, 3, 7, 9]), torch.Generator().manual_seed(0),
                           cfg=1.5, top_k=top_k, top_p=top_p).add(1).mul(0.5)
        assert raw.shape == (4, 3, 8, 8) and labels.tolist() == [0, 3, 7, 9] and images.dtype == np.uint8
        np.testing.assert_allclose(raw, want.numpy(), rtol=0, atol=1e-6)


def test_var_release_labels_random_and_unconditional(var_files):
    var_path, vae_path = var_files
    module = VARModule(test_var.NET, test_var.VAE, vae_checkpoint=str(vae_path))
    module.load_checkpoint(var_path)
    module.eval()
    sampler = partial(var_sampler, cfg=1.5, top_k=0, top_p=0.0)
    (first, second) = _draws(module, 5, range(5), 3, sampler, "random")
    g = torch.Generator().manual_seed(5)  # labels drawn first from the call's generator, then the tokens
    labels = torch.multinomial(torch.full((1, 10), 0.1), 3, replacement=True, generator=g).reshape(3)
    assert torch.equal(first.labels, labels)
    assert torch.equal(first.raw, sampler(module.net, module.vae, labels, g).add(1).mul(0.5))
    assert second.raw.shape[0] == 2  # the second batch is its own call, g_seed = 6
    g6 = torch.Generator().manual_seed(6)
    l6 = torch.multinomial(torch.full((1, 10), 0.1), 2, replacement=True, generator=g6).reshape(2)
    assert torch.equal(second.raw, sampler(module.net, module.vae, l6, g6).add(1).mul(0.5))
    (uncond,) = _draws(module, 0, range(2), 2, sampler, "unconditional")
    null = torch.full((2,), 10)
    assert uncond.labels is None
    assert torch.equal(uncond.raw, sampler(module.net, module.vae, null, torch.Generator().manual_seed(0)).add(1).mul(0.5))


def test_xar_release_mode_is_one_stream_across_batches(tmp_path: Path):
    path, _ = test_xar.write_release_files(tmp_path)
    module = XARModule(test_xar.NET, PixelLatent(in_channels=4, image_size=4))
    module.load_checkpoint(path)
    module.eval()
    sampler = partial(xar_sampler, num_steps=3, cfg=2.0)
    labels = [3, 7, 1]
    draws = _draws(module, 11, range(3), 2, sampler, labels)
    g = torch.Generator().manual_seed(11)  # torch.manual_seed(11), then the batches in turn
    for draw, rows in zip(draws, (slice(0, 2), slice(2, 3)), strict=True):
        want = sampler(module.net, module.latent, torch.tensor(labels[rows]), g)
        assert torch.equal(draw.raw, want) and draw.labels.tolist() == labels[rows]
        assert draw.latents.shape == (want.shape[0], 4, 4, 4)
        assert torch.equal(module.latent.decode(draw.latents), want)
    with pytest.raises(NeonError, match="xAR's release never draws labels"):
        _draws(module, 0, range(2), 2, sampler, "random")
    (uncond,) = _draws(module, 0, range(2), 2, sampler, "unconditional")
    assert torch.equal(uncond.raw, sampler(module.net, module.latent, torch.full((2,), 10),
                                           torch.Generator().manual_seed(0)))


def test_imm_release_mode_draws_noise_then_labels_from_one_generator(tmp_path: Path):
    path = tmp_path / "imm.pkl"
    test_imm.write_persistence_pickle(path, test_imm.random_precond(test_imm.NET).state_dict(), test_imm.NET)
    module = IMMModule(test_imm.NET, PixelLatent(**test_imm.LATENT))
    module.load_checkpoint(path)
    module.eval()
    sampler = partial(pushforward_sampler, num_steps=2, cfg=1.5)
    (draw,) = _draws(module, 42, range(3), 3, sampler, "random")
    # generate_images.py: np.random.seed(42); torch.manual_seed(np.random.randint(2**31)); noise, then labels
    np.random.seed(42)
    g = torch.Generator().manual_seed(int(np.random.randint(2 ** 31)))
    noise = torch.randn((3, 4, 8, 8), generator=g) * 0.5
    labels = torch.randint(0, 10, (3,), generator=g)
    assert torch.equal(draw.labels, labels)
    assert torch.equal(draw.raw, sampler(module.sampling_net, module.latent, noise, labels))
    (uncond,) = _draws(module, 42, range(3), 3, sampler, "unconditional")
    assert uncond.labels is None
    assert torch.equal(uncond.raw, sampler(module.sampling_net, module.latent, noise, torch.full((3,), 10)))


def test_edm_release_mode_is_generate_py_per_seed(tmp_path: Path):
    write_snapshot(tmp_path / "snap.pkl")
    module = EDMModule(TINY_DDPMPP)
    module.load_checkpoint(tmp_path / "snap.pkl")
    module.eval()
    sampler = instantiate(_cfg(tmp_path, "sampler.num_steps=3").sampler)
    draws = _draws(module, 0, [4, 5, 6], 2, sampler, [1, 2, 3])
    x, y = module.generate([4, 5, 6], sampler, torch.tensor([1, 2, 3]))
    assert torch.equal(torch.cat([d.samples for d in draws]), x) and torch.cat([d.labels for d in draws]).tolist() == [1, 2, 3]
    assert all(d.raw.dtype == torch.float32 for d in draws)
    with pytest.raises(NeonError, match="class-conditional .* has no null class"):
        _draws(module, 0, [0], 1, sampler, "unconditional")


def test_per_seed_mode_is_unchanged_and_labels_can_be_given(tmp_path: Path):
    write_snapshot(tmp_path / "snap.pkl")
    common = ("task=sample", f"model.checkpoint={tmp_path / 'snap.pkl'}", "sample.seeds=0-3", "sample.batch_size=3",
              "sampler.num_steps=3")
    with np.load(run_sample(_cfg(tmp_path, *common))["out"]) as f:
        images, labels = f["arr_0"], f["arr_1"]
    module = EDMModule(TINY_DDPMPP)
    module.load_checkpoint(tmp_path / "snap.pkl")
    x, y = module.eval().generate([0, 1, 2, 3], instantiate(_cfg(tmp_path, "sampler.num_steps=3").sampler))
    assert np.array_equal(images, module.export_samples(x)) and labels.tolist() == y.tolist()
    with np.load(run_sample(_cfg(tmp_path, *common, "sample.labels=[9,9,0,1]"))["out"]) as f:
        assert f["arr_1"].tolist() == [9, 9, 0, 1]
    with pytest.raises(NeonError, match="sample.labels lists 2 classes for 4 images"):
        run_sample(_cfg(tmp_path, *common, "sample.labels=[1,2]"))
    with pytest.raises(NeonError, match="need sample.rng=release"):
        run_sample(_cfg(tmp_path, *common, "sample.raw=true"))
    with pytest.raises(NeonError, match="sample.labels must be a list of class ids"):
        label_spec("some")

"""EDM family: official key names, the snapshot reader, the sampler's seeding, loss and EMA."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.edm import EDMModule, heun_sampler
from neon.families.edm.losses import denoising_loss
from neon.families.edm.module import build_network
from neon.weights.persistence import read_snapshot
from tests.edm_snapshot import TINY_DDPMPP, write_snapshot

# The released CIFAR-10 DDPM++ network's constructor kwargs (edm-cifar10-32x32-cond-vp.pkl).
CIFAR_DDPMPP = dict(precond="EDMPrecond", img_resolution=32, img_channels=3, label_dim=10, model_type="SongUNet",
                    augment_dim=9, model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
                    dropout=0.13, embedding_type="positional", encoder_type="standard", decoder_type="standard",
                    channel_mult_noise=1, resample_filter=[1, 1])


def test_ddpmpp_cifar_has_the_official_names_and_size():
    sd = build_network(CIFAR_DDPMPP).state_dict()
    for key in ("model.map_label.weight", "model.map_augment.weight", "model.map_layer0.weight",
                "model.enc.32x32_conv.weight", "model.enc.16x16_down.conv0.resample_filter",
                "model.enc.16x16_block0.qkv.weight", "model.dec.8x8_in0.proj.weight", "model.dec.32x32_aux_conv.bias"):
        assert key in sd, key
    assert "model.map_augment.bias" not in sd
    n_params = sum(v.numel() for k, v in sd.items() if "resample_filter" not in k)
    assert 55e6 < n_params < 57e6  # the paper's DDPM++ CIFAR-10 network has ~56M parameters


@pytest.mark.parametrize("network", [
    dict(TINY_DDPMPP),
    dict(TINY_DDPMPP, precond="VEPrecond", embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
         resample_filter=[1, 3, 3, 1], label_dim=0),
    dict(TINY_DDPMPP, precond="VPPrecond", encoder_type="skip", decoder_type="skip"),
    dict(precond="EDMPrecond", img_resolution=8, img_channels=3, label_dim=4, model_type="DhariwalUNet",
         model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], augment_dim=9),
])
def test_official_format_snapshot_loads_exactly(tmp_path: Path, network: dict):
    written = write_snapshot(tmp_path / "snap.pkl", network)
    module = EDMModule(network)
    module.load_checkpoint(tmp_path / "snap.pkl")
    for key, value in written.state_dict().items():
        assert torch.equal(module.net.state_dict()[key], value), key
    assert torch.equal(module.ema.state_dict()["model.map_layer0.weight"], written.state_dict()["model.map_layer0.weight"])


def test_snapshot_reader_refuses_foreign_globals_and_runs_nothing(tmp_path: Path):
    write_snapshot(tmp_path / "evil.pkl", extra_globals=True)
    with pytest.raises(NeonError, match="builtins.print.*refusing"):
        read_snapshot(tmp_path / "evil.pkl")
    # a classic payload: the pickle asks to call os.system
    payload = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    (tmp_path / "payload.pkl").write_bytes(payload)
    with pytest.raises(NeonError, match="os.system"):
        read_snapshot(tmp_path / "payload.pkl")
    assert not (tmp_path / "pwned").exists()


def test_snapshot_without_ema_and_mismatched_settings(tmp_path: Path):
    write_snapshot(tmp_path / "noema.pkl", with_ema=False)
    with pytest.raises(NeonError, match="has no 'ema' network"):
        read_snapshot(tmp_path / "noema.pkl")
    write_snapshot(tmp_path / "snap.pkl")
    with pytest.raises(NeonError, match="img_resolution=8 but the model config says img_resolution=16"):
        EDMModule(dict(TINY_DDPMPP, img_resolution=16)).load_checkpoint(tmp_path / "snap.pkl")
    with pytest.raises(NeonError, match="label_dim=10 but the model config says label_dim=0"):
        EDMModule(dict(TINY_DDPMPP, label_dim=0)).load_checkpoint(tmp_path / "snap.pkl")
    with pytest.raises(NeonError, match="holds a EDMPrecond network but model.network.precond is VPPrecond"):
        EDMModule(dict(TINY_DDPMPP, precond="VPPrecond")).load_checkpoint(tmp_path / "snap.pkl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> EDMModule:
    path = tmp_path_factory.mktemp("edm") / "snap.pkl"
    write_snapshot(path)
    module = EDMModule(TINY_DDPMPP, quantize=False).eval()
    module.load_checkpoint(path)
    return module


def test_generation_follows_the_official_seeding(tiny: EDMModule):
    seeds = [3, 11, 42]
    x, labels = tiny.generate(seeds, partial(heun_sampler, num_steps=4))
    # generate.py: one generator per seed, latents first, then the class label, then per-step noise
    rng = PerSampleRNG(seeds)
    latents = rng.randn(3, 8, 8)
    expect_labels = rng.randint(10)
    assert torch.equal(labels, expect_labels)
    onehot = torch.eye(10)[expect_labels]
    expect = heun_sampler(tiny.ema, latents, onehot, randn_like=rng.randn_like, num_steps=4)
    assert torch.equal(x, expect.float())
    # the image of a seed does not depend on the batch it is drawn in
    alone, _ = tiny.generate([42], partial(heun_sampler, num_steps=4))
    assert torch.allclose(alone[0], x[2], atol=1e-5)


def test_heun_uses_2n_minus_1_evaluations_and_churn_changes_samples(tiny: EDMModule):
    calls = []

    class Counting(torch.nn.Module):
        sigma_min, sigma_max = 0.0, float("inf")

        def round_sigma(self, s):
            return torch.as_tensor(s)

        def forward(self, x, sigma, labels):
            calls.append(float(sigma))
            return tiny.ema(x, sigma, labels)

    lat = torch.randn(1, 3, 8, 8)
    heun_sampler(Counting(), lat, torch.eye(10)[[1]], num_steps=18)
    assert len(calls) == 35 and calls[0] == pytest.approx(80.0) and min(calls) == pytest.approx(0.002)
    plain, _ = tiny.generate([1, 2], partial(heun_sampler, num_steps=6))
    churned, _ = tiny.generate([1, 2], partial(heun_sampler, num_steps=6, S_churn=30, S_max=50))
    again, _ = tiny.generate([1, 2], partial(heun_sampler, num_steps=6, S_churn=30, S_max=50))
    assert not torch.allclose(plain, churned) and torch.equal(churned, again)


def test_quantized_output_and_sample_export(tiny: EDMModule):
    module = EDMModule(TINY_DDPMPP, quantize=True).eval()
    module.load_neon_weights(tiny.neon_weights())
    x, _ = module.generate([0, 1], partial(heun_sampler, num_steps=3))
    codes = (x + 1) * 127.5
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    arr = module.export_samples(x)
    assert arr.dtype.name == "uint8" and arr.shape == (2, 8, 8, 3)


def test_edm_loss_weighting():
    net = build_network(dict(TINY_DDPMPP, label_dim=0)).eval()
    images = torch.randn(4, 3, 8, 8) * 0.5
    loss = denoising_loss(net, images, None, StepNoise.single(4, seed=5))
    # the same draws in the same order: ln σ first, then the image noise
    gen = torch.Generator().manual_seed(StepNoise.single(4, seed=5).generator.initial_seed())
    sigma = (torch.randn([4, 1, 1, 1], generator=gen) * 1.2 - 1.2).exp()
    noise = torch.randn([4, 3, 8, 8], generator=gen) * sigma
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss, weight * (net(images + noise, sigma, None) - images) ** 2)


def test_training_step_and_ema_halflife():
    module = EDMModule(dict(TINY_DDPMPP), ema_halflife_kimg=0.5)
    assert module.ema_rule.beta(batch_size=500) == pytest.approx(0.5)
    batch = {"x": torch.rand(6, 3, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 3, 4, 5])}
    loss = module.loss(batch, StepNoise.single(6))
    assert loss.ndim == 0 and math.isfinite(loss.item())
    with pytest.raises(NeonError, match="expects \\(3, 8, 8\\)"):
        module.loss({"x": torch.rand(2, 1, 8, 8), "label": torch.tensor([0, 1])}, StepNoise.single(2))
    with pytest.raises(NeonError, match="no labels"):
        module.loss({"x": batch["x"]}, StepNoise.single(6))


def test_snapshot_brings_its_architecture(tmp_path: Path):
    written = write_snapshot(tmp_path / "snap.pkl", dict(TINY_DDPMPP, model_channels=8, attn_resolutions=[8]))
    module = EDMModule(dict(TINY_DDPMPP))  # config says 16 channels, attention at 4×4
    module.load_checkpoint(tmp_path / "snap.pkl")
    assert module.network_kwargs["model_channels"] == 8 and module.config_overrides()["network"]["attn_resolutions"] == [8]
    for key, value in written.state_dict().items():
        assert torch.equal(module.ema.state_dict()[key], value), key
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 5.0])
    labels = torch.eye(10)[[1, 2]]
    assert torch.allclose(module.ema.eval()(x, s, labels), written(x, s, labels))

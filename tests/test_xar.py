"""The xAR family: the release's layouts, loading, the loss, the sampler (seeding, cache, guidance), the merge
rule, bad input, and the pipeline at tiny size (the tiny model on digits, the paper configs from tiny files)."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families.xar import KLAutoencoder, PixelLatent, XARModule, xar_sampler
from neon.families.xar.transformer import TRAIN, XARTransformer
from neon.merging.extrapolate import extrapolate
from tests.helpers import run_task, summary_of
from tests.summary_checks import check_search_summary

NET = dict(embed_dim=32, depth=1, num_heads=2, num_classes=10, channels=4, grid=4, cluster_grid=2,
           attn_dropout=0.0, proj_dropout=0.0)
VAE = dict(embed_dim=4, ch=32, ch_mult=[1, 2], num_res_blocks=1, in_channels=3, image_size=8)


def random_xar(net: dict, seed: int = 0) -> XARTransformer:
    """A transformer with non-trivial random weights (biases and adaLN not zero)."""
    torch.manual_seed(seed)
    model = XARTransformer(**net)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def write_release_files(folder: Path, net: dict | None = None, vae: dict | None = None, seed: int = 0) -> tuple[Path, Path]:
    """A flat xAR state dict (the released xAR-*.pth) and a KL VAE file ({'model': state dict}, kl16.ckpt)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = random_xar(net or NET, seed)
    kl = KLAutoencoder(**(vae or VAE))
    with torch.no_grad():
        for p in kl.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    xar_path, vae_path = folder / "xar_tiny.pth", folder / "kl_tiny.ckpt"
    torch.save(model.state_dict(), xar_path)
    torch.save({"model": kl.state_dict()}, vae_path)
    return xar_path, vae_path


@pytest.fixture()
def module(tmp_path: Path) -> XARModule:
    path, _ = write_release_files(tmp_path)
    m = XARModule(NET, PixelLatent(in_channels=4, image_size=4))
    m.load_checkpoint(path)
    return m.eval()


def test_release_layouts_match_the_official_counts():
    # parameter and entry counts of the official builders (OliverRensu/xAR) and MAR's KL-16
    with torch.device("meta"):
        b, large, huge = (XARTransformer(embed_dim=d, depth=n, num_heads=h)
                          for d, n, h in ((768, 8, 12), (1024, 16, 16), (1280, 20, 16)))
        vae = KLAutoencoder()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert [(count(m), len(m.state_dict())) for m in (b, large, huge)] == [
        (172_638_224, 257), (608_397_968, 497), (1_186_024_096, 617)]
    assert (count(vae), len(vae.state_dict())) == (66_456_019, 312)
    state = b.state_dict()
    assert tuple(state["class_emb.weight"].shape) == (1001, 768)
    assert tuple(state["encoder_blocks.0.mlp.fc1_g.weight"].shape) == (2048, 768)
    assert tuple(state["encoder_blocks.0.attn.rope.freqs_cos"].shape) == (256, 64)
    assert tuple(huge.state_dict()["decoder_blocks.19.attn.rope.freqs"].shape) == (20,)
    assert "encoder.down.4.attn.1.q.weight" in vae.state_dict() and "decoder.up.4.attn.0.q.weight" not in vae.state_dict()


def test_mask_rope_and_cluster_order():
    net = XARTransformer(**NET)
    mask = net.mask[0, 0]  # 16 tokens, clusters of 4: a token sees its own cluster and the earlier ones
    assert mask.shape == (16, 16) and mask[5, 7] == 0 and mask[5, 8] == -torch.inf and mask[15, 0] == 0
    z = torch.arange(16.0).view(1, 1, 4, 4)
    seq = net.to_sequence(z)[0, :, 0]
    assert seq.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]  # quadrants, row-major inside
    assert torch.equal(net.from_sequence(net.to_sequence(z)), z)
    rope = net.encoder_blocks[0].attn.rope  # head dim 16: 8 row channels then 8 column channels
    angle = torch.atan2(rope.freqs_sin, rope.freqs_cos)
    position_of_token_2 = (0, 2)  # sequence index 4 is latent (row 0, column 2)
    torch.testing.assert_close(angle[4, :8], torch.zeros(8))
    torch.testing.assert_close(angle[4, 8:], (position_of_token_2[1] * rope.freqs).repeat_interleave(2))


def test_pixel_latent_folds_pixel_blocks_into_channels():
    latent = PixelLatent(in_channels=1, image_size=8, patch=2, scale_factor=0.5)
    images = torch.randn(3, 1, 8, 8)
    z = latent.encode(images, None)
    assert z.shape == (3, 4, 4, 4) and (latent.channels, latent.size) == (4, 4)
    torch.testing.assert_close(z[:, :, 1, 2], images[:, 0, 2:4, 4:6].reshape(3, 4) * 0.5)  # one 2×2 block
    torch.testing.assert_close(latent.decode(z), images)


def test_release_files_load_as_they_are(tmp_path: Path, module: XARModule):
    path, vae_path = write_release_files(tmp_path)
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in module.neon_weights().items())
    # a training checkpoint: EMA by default, the raw model on request; argparse args inside are fine
    ema = {k: v + 1 if v.is_floating_point() and torch.isfinite(v).all() else v for k, v in saved.items()}
    ckpt = tmp_path / "checkpoint-last.pth"
    torch.save({"model": saved, "model_ema": ema, "epoch": 3, "args": argparse.Namespace(lr=1e-6)}, ckpt)
    m = XARModule(NET, PixelLatent(in_channels=4, image_size=4))
    m.load_checkpoint(ckpt)
    assert torch.equal(m.neon_weights()["pred.weight"], ema["pred.weight"])
    raw = XARModule(NET, PixelLatent(in_channels=4, image_size=4), weights="model")
    raw.load_checkpoint(ckpt)
    assert torch.equal(raw.neon_weights()["pred.weight"], saved["pred.weight"])
    # the VAE in the release's {'model': ...} layout, frozen
    kl = XARModule(dict(NET, grid=4), KLAutoencoder(**VAE), vae_checkpoint=str(vae_path))
    assert torch.equal(kl.latent.state_dict()["quant_conv.weight"],
                       torch.load(vae_path, weights_only=True)["model"]["quant_conv.weight"])
    assert not any(p.requires_grad for p in kl.latent.parameters()) and kl.image_shape == (3, 8, 8)


def test_loss_is_per_cluster_flow_matching(module: XARModule):
    module.train()
    module.label_drop_prob = 0.0
    images, labels = torch.randn(3, 4, 4, 4), torch.tensor([0, 3, 9])
    noise = StepNoise.single(3, seed=5)
    loss = module.loss({"x": images, "label": labels}, noise)
    # by hand: the same draws in the same order, quadrants cut out of the latent directly
    again = StepNoise.single(3, seed=5)
    again.randn(4, 4, 4), again.rand()  # posterior noise and label drop (unused here)
    t = torch.sigmoid(again.randn(4, dtype=torch.float64)).float()  # [sample, cluster]
    eps = again.randn(16, 4)
    total = torch.zeros(3)
    tokens, times, targets = [], [], []
    for k, (a, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        x0 = images[:, :, 2 * a:2 * a + 2, 2 * b:2 * b + 2].flatten(2).transpose(1, 2)  # [3, 4 tokens, 4 ch]
        e = eps[:, 4 * k:4 * k + 4]
        tk = t[:, k].view(3, 1, 1)
        tokens.append((1 - tk) * x0 + tk * e)
        targets.append(e - x0)
        times.append(t[:, k])
    with torch.no_grad():
        out = module.net(torch.cat(tokens, 1), labels, torch.cat(times))
    total = ((out - torch.cat(targets, 1)) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(loss, total.mean())
    module.label_drop_prob = 1.0  # every label dropped: the null class
    dropped = module.loss({"x": images, "label": labels}, StepNoise.single(3, seed=5))
    with torch.no_grad():
        null = module.net(torch.cat(tokens, 1), torch.full((3,), 10), torch.cat(times))
    torch.testing.assert_close(dropped, ((null - torch.cat(targets, 1)) ** 2).mean(dim=(1, 2)).mean())


def test_dropout_masks_do_not_depend_on_the_process_split(tmp_path: Path):
    m = XARModule(dict(NET, attn_dropout=0.3, proj_dropout=0.3), PixelLatent(in_channels=4, image_size=4))
    m.train()
    batch = {"x": torch.randn(4, 4, 4, 4), "label": torch.tensor([1, 2, 3, 4])}
    whole = m.loss(batch, StepNoise(7, 2, slice(0, 4), 4))
    halves = [m.loss({k: v[r] for k, v in batch.items()}, StepNoise(7, 2, r, 4)) for r in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2)
    m.eval()  # no dropout outside training
    assert not torch.equal(whole, m.loss(batch, StepNoise(7, 2, slice(0, 4), 4)))


def test_sampler_is_seeded_per_sample(module: XARModule):
    sampler = partial(xar_sampler, num_steps=4, cfg=2.0)
    a, la = module.generate([1, 2, 3], sampler, torch.tensor([1, 2, 3]))
    b, _ = module.generate([1, 2, 3], sampler, torch.tensor([1, 2, 3]))
    c, _ = module.generate([2], sampler, torch.tensor([2]))
    assert torch.equal(a, b) and a.shape == (3, 4, 4, 4) and torch.equal(la, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(a[1:2], c, atol=1e-5, rtol=0)  # a sample depends on its seed, not its batch
    assert not torch.equal(a[0], a[2])
    _, drawn = module.generate([4, 5], sampler)  # labels drawn per seed when not given
    assert drawn.shape == (2,) and 0 <= drawn.min() and drawn.max() < 10


def test_cached_sampling_equals_the_full_prefix_forward(module: XARModule):
    # the KV cache of the clean earlier clusters gives what one block-causal pass over the whole prefix gives
    net, labels = module.net, torch.tensor([2, 5])
    clean = [torch.randn(2, 4, 4) for _ in range(2)]
    noisy, t = torch.randn(2, 4, 4), 0.6
    both = torch.cat([labels, labels])
    net.clear_cache()
    with torch.no_grad():  # the sampler's calls: each cluster's first step feeds the previous clean cluster
        net.sample_step(torch.randn(4, 4, 4), both, torch.ones(4), 0, update_cache=True)
        net.sample_step(torch.cat([clean[0], torch.randn(2, 4, 4)], 1).repeat(2, 1, 1), both,
                        torch.cat([torch.zeros(4), torch.ones(4)]), 1, update_cache=True)
        first = net.sample_step(torch.cat([clean[1], noisy], 1).repeat(2, 1, 1), both,
                                torch.cat([torch.zeros(4), torch.full((4,), t)]), 2, update_cache=True)[:2]
        cached = net.sample_step(noisy.repeat(2, 1, 1), both, torch.full((4,), t), 2, update_cache=False)[:2]
        prefix = torch.cat([*clean, noisy], 1)
        times = torch.cat([torch.zeros(4), torch.full((2,), t)])
        full = net.run(prefix, net.condition(labels, times), 0, TRAIN, net.mask[:, :, :12, :12])[:, 8:]
    net.clear_cache()
    torch.testing.assert_close(first, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_cfg_one_is_unguided(module: XARModule):
    # cfg = 1 never uses the null-class branch: changing the null class's embedding changes nothing
    labels = torch.tensor([1, 7])
    run = lambda cfg: xar_sampler(module.net, module.latent, labels, torch.Generator().manual_seed(3),  # noqa: E731
                                  num_steps=4, cfg=cfg)
    plain, guided = run(1.0), run(3.0)
    with torch.no_grad():
        module.net.class_emb.weight[10].add_(1.0)
    assert torch.equal(run(1.0), plain)
    assert not torch.allclose(run(3.0), guided)


def test_merge_copies_the_mask(module: XARModule):
    theta_r = {k: v.clone() for k, v in module.neon_weights().items()}
    theta_s = {k: (v + 0.1 if v.is_floating_point() else v) for k, v in theta_r.items()}
    merged = extrapolate(theta_r, theta_s, 1.0)
    assert torch.equal(merged["mask"], theta_r["mask"]) and torch.isinf(merged["mask"]).any()
    assert not any(torch.isnan(v).any() for v in merged.values())
    torch.testing.assert_close(merged["pred.weight"], theta_r["pred.weight"] - 0.1)


def test_bad_input_names_expected_and_found(tmp_path: Path, module: XARModule):
    for change, message in ((dict(depth=2), "depth 2 but the config gives 1"),
                            (dict(embed_dim=48, num_heads=3), "width 48 but the config gives 32"),
                            (dict(num_heads=1), "head count 1 but the config gives 2"),
                            (dict(grid=8), "token count 64 but the config gives 16")):
        path, _ = write_release_files(tmp_path / str(len(message)), net=dict(NET, **change))
        with pytest.raises(NeonError, match=message):
            module.load_checkpoint(path)
    with pytest.raises(NeonError, match="vae_checkpoint '.*kl16.ckpt' does not exist"):
        XARModule(NET, KLAutoencoder(**VAE), vae_checkpoint=str(tmp_path / "kl16.ckpt"))
    with pytest.raises(NeonError, match="needs its VAE"):
        XARModule(NET, KLAutoencoder(**VAE))
    _, other_vae = write_release_files(tmp_path / "v", vae=dict(VAE, ch=64))
    with pytest.raises(NeonError, match="has shape .* check ch, ch_mult, embed_dim"):
        XARModule(NET, KLAutoencoder(**VAE), vae_checkpoint=str(other_vae))
    with pytest.raises(NeonError, match="latent space gives 1×8×8 latents but the xAR network expects 4×4×4"):
        XARModule(NET, PixelLatent(in_channels=1, image_size=8))
    with pytest.raises(NeonError, match="grid=6 does not split into 4×4 clusters"):
        XARTransformer(**dict(NET, grid=6, cluster_grid=4))
    ckpt = tmp_path / "ema_only.pth"
    torch.save({"model_ema": module.neon_weights(), "epoch": 1}, ckpt)
    with pytest.raises(NeonError, match="no 'model' entry .* set model.weights=ema"):
        XARModule(NET, PixelLatent(in_channels=4, image_size=4), weights="model").load_checkpoint(ckpt)
    with pytest.raises(NeonError, match="class id 10 is out of range"):
        module.generate([0], partial(xar_sampler, num_steps=3), torch.tensor([10]))
    with pytest.raises(NeonError, match="num_steps must be a positive integer, got 0"):
        module.generate([0], partial(xar_sampler, num_steps=0), torch.tensor([1]))
    with pytest.raises(NeonError, match="images of shape \\(3, 4, 4\\) do not fit"):
        module.loss({"x": torch.zeros(2, 3, 4, 4), "label": torch.tensor([0, 1])}, StepNoise.single(2))


TINY_XAR = ["model=xar_tiny", "model.pretrain.steps=30", "neon.n_synthetic=40", "sampler.num_steps=4",
            "neon.budget_steps=3", "neon.batch_size=20", "neon.w=[0.0,1.0]", "neon.control=false",
            "neon.synthetic.block_size=20", "neon.synthetic.shard_size=40", "metrics.num_samples=60", "metrics.allow_small=true",
            "metrics.noise_seed_offset=null", "metrics.block_size=30", "preview_samples=4",
            "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_tiny_xar_runs_the_embedded_default(tmp_path: Path, shared_cache: Path):
    run_task(TINY_XAR, tmp_path, cache=shared_cache)  # the session's digits classifier
    summary = summary_of(tmp_path)
    assert summary["family"] == "neon.families.xar.XARModule" and summary["sampler"]["num_steps"] == 4
    assert np.isfinite(summary["fid_base"]) and np.isfinite(summary["fid_neon"])
    shard = torch.load(next(Path(summary["artifacts"]["synthetic"]).glob("shard_*.pt")), weights_only=True)
    assert torch.equal(shard["label"], torch.arange(40) % 10)  # class-balanced, labels kept
    codes = (shard["x"] + 1) * 127.5
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the 8-bit grid of the reference's PNGs


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["paper/xar_b_in256", "paper/xar_l_in256"])
def test_paper_experiments_run_at_tiny_size(tmp_path: Path, experiment: str):
    net = dict(NET, num_classes=1000)
    xar_path, vae_path = write_release_files(tmp_path, net=net)
    np.savez(tmp_path / "ref.npz", mu=np.zeros(192), sigma=np.eye(192) * 0.3)
    overrides = [f"model.network.{k}={v}" for k, v in net.items()]
    overrides += [f"model.latent.{k}={v}".replace(" ", "") for k, v in VAE.items()]
    run_task([f"experiment={experiment}", f"model.checkpoint={xar_path}", f"model.vae_checkpoint={vae_path}",
              *overrides, "metrics=pixel_fd", f"metrics.reference={tmp_path / 'ref.npz'}",
              "metrics.num_samples=20", "metrics.allow_small=true", "metrics.block_size=20", "neon.n_synthetic=20", "neon.batch_size=10",
              "neon.budget_steps=[2,4]", "neon.lr_warmup_steps=3", "neon.w=[0.0,0.5,1.0]",
              "task.cfg_values=[1.5,2.0]", "task.final_num_samples=40", "sampler.num_steps=3",
              "metrics.sampler.num_steps=3", "neon.synthetic.block_size=10", "neon.synthetic.shard_size=20",
              "trainer.enable_progress_bar=false"], tmp_path)
    summary = summary_of(tmp_path)
    assert summary["task"] == "search" and summary["cfg_key"] == "cfg"
    # the pick is the best of the coarse grid and its ±0.1 refinement, scored again at final_num_samples
    coarse = check_search_summary(summary, [0.0, 0.5, 1.0], refine_step=0.1, final_num_samples=40)
    assert {(p["cfg"], p["budget_steps"]) for p in coarse} == {(c, b) for c in (1.5, 2.0) for b in (2, 4)}
    assert {p["num_samples"] for p in summary["points"]} == {20, 40}  # small-sample search, large-sample final

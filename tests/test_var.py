"""The VAR family: the release's layouts, loading, the loss, the sampler's knobs, the merge rule, bad
input, and the pipeline at tiny size (the tiny model on digits, the paper configs from tiny checkpoints)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families.var import VARModule, var_sampler
from neon.families.var.sampler import draw_tokens, filter_top_k_top_p_
from neon.families.var.transformer import VARTransformer
from neon.families.var.vqvae import VQVAE
from neon.merging.extrapolate import extrapolate
from tests.helpers import run_task, summary_of
from tests.summary_checks import check_search_summary

NET = dict(depth=2, embed_dim=64, num_heads=2, num_classes=10, vocab_size=64, vae_channels=8, patch_nums=[1, 2, 4])
VAE = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=[1, 2], num_res_blocks=1, in_channels=3, using_sa=True,
           using_mid_sa=True)


def write_release_files(folder: Path, seed: int = 0, net: dict | None = None, vae: dict | None = None) -> tuple[Path, Path]:
    """Random VAR and VQVAE state dicts saved with torch.save, the release's format."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae_mod, net_mod = VQVAE(**(vae or VAE), patch_nums=(net or NET)["patch_nums"]), VARTransformer(**(net or NET))
    with torch.no_grad():
        for p in [*vae_mod.parameters(), *net_mod.parameters()]:
            p.add_(torch.randn_like(p) * 0.05)
    var_path, vae_path = folder / "var_tiny.pth", folder / "vae_tiny.pth"
    torch.save(net_mod.state_dict(), var_path)
    torch.save(vae_mod.state_dict(), vae_path)
    return var_path, vae_path


@pytest.fixture()
def module(tmp_path: Path) -> VARModule:
    var_path, vae_path = write_release_files(tmp_path)
    m = VARModule(NET, VAE, vae_checkpoint=str(vae_path))
    m.load_checkpoint(var_path)
    return m.eval()


def test_release_layouts_match_the_official_counts():
    # counts printed by the official code (FoundationVision/VAR) for its builders
    with torch.device("meta"):
        vae, d16 = VQVAE(), VARTransformer(depth=16)
        d36 = VARTransformer(depth=36, shared_aln=True, patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(vae), len(vae.state_dict())) == (108_948_355, 324)
    assert (count(d16), len(d16.state_dict())) == (310_283_520, 220)
    assert (count(d36), len(d36.state_dict())) == (2_353_893_904, 446)
    state = d16.state_dict()
    assert tuple(state["class_emb.weight"].shape) == (1001, 1024)
    assert tuple(state["attn_bias_for_masking"].shape) == (1, 1, 680, 680) and state["lvl_1L"].dtype == torch.int64
    assert {"blocks.0.attn.zero_k_bias", "blocks.0.ada_lin.1.weight", "head_nm.ada_lin.1.weight"} <= set(state)
    assert "blocks.0.ada_gss" in d36.state_dict() and "shared_ada_lin.1.weight" in d36.state_dict()
    assert vae.quantize.quant_resi.index == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # float ties at scales 2 and 7


def test_release_files_load_as_they_are(tmp_path: Path, module: VARModule):
    var_path, _ = write_release_files(tmp_path)
    saved = torch.load(var_path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in module.neon_weights().items())
    assert not any(p.requires_grad for p in module.vae.parameters())
    assert module.image_shape == (3, 8, 8)


def test_loss_is_teacher_forced_next_scale_cross_entropy(module: VARModule):
    module.cond_drop_rate = 0.0
    images, labels = torch.rand(4, 3, 8, 8) * 2 - 1, torch.tensor([0, 3, 5, 9])
    loss = module.loss({"x": images, "label": labels}, StepNoise.single(4))
    with torch.no_grad():
        idx = module.vae.encode_indices(images)
        logits = module.net(labels, module.vae.quantize.teacher_inputs(idx))
    expected = F.cross_entropy(logits.reshape(-1, 64), torch.cat(idx, 1).reshape(-1))
    torch.testing.assert_close(loss, expected)
    module.cond_drop_rate = 1.0  # every label dropped: the null class
    dropped = module.loss({"x": images, "label": labels}, StepNoise.single(4))
    with torch.no_grad():
        null = module.net(torch.full((4,), 10), module.vae.quantize.teacher_inputs(idx))
    torch.testing.assert_close(dropped, F.cross_entropy(null.reshape(-1, 64), torch.cat(idx, 1).reshape(-1)))


def test_sampler_is_seeded_per_sample(module: VARModule):
    sampler = partial(var_sampler, cfg=1.5, top_k=20, top_p=0.9)
    a, la = module.generate([1, 2, 3], sampler, torch.tensor([1, 2, 3]))
    b, _ = module.generate([1, 2, 3], sampler, torch.tensor([1, 2, 3]))
    c, _ = module.generate([2], sampler, torch.tensor([2]))
    assert torch.equal(a, b) and a.shape == (3, 3, 8, 8) and torch.equal(la, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(a[1:2], c, atol=1e-5, rtol=0)  # a sample depends on its seed, not its batch
    assert not torch.equal(a[0], a[2])
    _, drawn = module.generate([4, 5], sampler)  # labels drawn per seed when not given
    assert drawn.shape == (2,) and 0 <= drawn.min() and drawn.max() < 10


def test_cfg_zero_is_the_conditional_model(module: VARModule):
    # the release's cfg is the extra weight t in (1 + t)·cond − t·uncond: cfg = 0 means no guidance,
    # the same as running the conditional half alone
    labels = torch.tensor([1, 7])
    guided_off = var_sampler(module.net, module.vae, labels, torch.Generator().manual_seed(3), cfg=0.0, top_k=0, top_p=1.0)

    net, original = module.net, module.net.step

    def conditional_only(tokens, cond):  # answers the null-class rows with the conditional logits
        out = original(tokens, cond)
        half = out.shape[0] // 2
        return torch.cat((out[:half], out[:half]))

    net.step = conditional_only
    try:
        plain = var_sampler(net, module.vae, labels, torch.Generator().manual_seed(3), cfg=7.0, top_k=0, top_p=1.0)
    finally:
        del net.step
    torch.testing.assert_close(guided_off, plain)


def test_top_k_one_is_greedy():
    logits = torch.randn(2, 5, 64)
    filtered = filter_top_k_top_p_(logits.clone(), top_k=1, top_p=1.0)
    for seed in range(3):
        assert torch.equal(draw_tokens(filtered, torch.Generator().manual_seed(seed)), logits.argmax(-1))


def test_top_p_keeps_the_smallest_set_holding_p():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    kept = torch.isfinite(filter_top_k_top_p_(logits.clone(), top_k=0, top_p=0.75))
    assert kept.tolist() == [[[True, True, False, False]]]


def test_merge_copies_the_mask_and_integer_buffers(module: VARModule, tmp_path: Path):
    theta_r = {k: v.clone() for k, v in module.neon_weights().items()}
    theta_s = {k: (v + 0.1 if v.is_floating_point() else v) for k, v in theta_r.items()}
    merged = extrapolate(theta_r, theta_s, 1.0)
    assert torch.equal(merged["attn_bias_for_masking"], theta_r["attn_bias_for_masking"])
    assert torch.isinf(merged["attn_bias_for_masking"]).any()
    assert merged["lvl_1L"].dtype == torch.int64 and torch.equal(merged["lvl_1L"], theta_r["lvl_1L"])
    torch.testing.assert_close(merged["head.weight"], theta_r["head.weight"] - 0.1)


def test_bad_input_names_expected_and_found(tmp_path: Path, module: VARModule):
    deeper, _ = write_release_files(tmp_path / "d3", net=dict(NET, depth=3))
    with pytest.raises(NeonError, match="depth 3 but the config gives 2"):
        module.load_checkpoint(deeper)
    other_scales, _ = write_release_files(tmp_path / "pn", net=dict(NET, patch_nums=[1, 2, 3, 4]))
    with pytest.raises(NeonError, match="number of scales 4 but the config gives 3"):
        module.load_checkpoint(other_scales)
    _, vocab128 = write_release_files(tmp_path / "v", net=dict(NET, vocab_size=128), vae=dict(VAE, vocab_size=128))
    with pytest.raises(NeonError, match="vocabulary of 128 codes"):
        VARModule(NET, VAE, vae_checkpoint=str(vocab128))
    with pytest.raises(NeonError, match="vae_checkpoint '.*nope.pth' does not exist"):
        VARModule(NET, VAE, vae_checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(NeonError, match="class id 10 is out of range"):
        module.generate([0], partial(var_sampler, top_k=0, top_p=1.0), torch.tensor([10]))
    for top_p in (-0.1, 1.5):
        with pytest.raises(NeonError, match=f"top_p must be in \\[0, 1\\].*{top_p}"):
            module.generate([0], partial(var_sampler, top_k=0, top_p=top_p), torch.tensor([1]))
    with pytest.raises(NeonError, match="top_k must be an integer in \\[0, 64\\]"):
        module.generate([0], partial(var_sampler, top_k=900, top_p=1.0), torch.tensor([1]))


TINY_VAR = ["model=var_tiny", "model.vae_pretrain.steps=20", "model.pretrain.steps=30", "neon.n_synthetic=40",
            "neon.budget_steps=3", "neon.batch_size=20", "neon.w=[0.0,1.0]", "neon.control=false",
            "neon.synthetic.block_size=20", "neon.synthetic.shard_size=40", "metrics.num_samples=60", "metrics.allow_small=true",
            "metrics.noise_seed_offset=null", "metrics.block_size=30", "preview_samples=4",
            "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_tiny_var_runs_the_embedded_default(tmp_path: Path, shared_cache: Path):
    # the session's cache: the digits classifier (digits-FID) is trained once for every tiny family's test
    tokenizers = lambda: set((shared_cache / "tokenizer").glob("*/vqvae.safetensors"))  # noqa: E731
    before = tokenizers()
    run_task(TINY_VAR, tmp_path, cache=shared_cache)
    summary = summary_of(tmp_path)
    assert summary["family"] == "neon.families.var.VARModule" and summary["sampler"]["top_k"] == 32
    assert np.isfinite(summary["fid_base"]) and np.isfinite(summary["fid_neon"])
    shard = torch.load(next(Path(summary["artifacts"]["synthetic"]).glob("shard_*.pt")), weights_only=True)
    assert torch.equal(shard["label"], torch.arange(40) % 10)  # class-balanced, labels kept
    codes = (shard["x"] + 1) * 127.5
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the 8-bit grid of the reference's PNGs
    assert tokenizers() and len(tokenizers() - before) <= 1  # the VQVAE trained at most once, for S and scores


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["paper/var_d16_in256", "paper/var_d36_in512"])
def test_paper_experiments_run_at_tiny_size(tmp_path: Path, experiment: str):
    var_path, vae_path = write_release_files(tmp_path, net=dict(NET, num_classes=1000), vae=dict(VAE))
    np.savez(tmp_path / "ref.npz", mu=np.zeros(192), sigma=np.eye(192) * 0.3)
    net = [f"model.network.{k}={v}".replace(" ", "") for k, v in dict(NET, num_classes=1000).items()]
    vae = [f"model.vae.{k}={v}".replace(" ", "") for k, v in VAE.items()]
    run_task([f"experiment={experiment}", f"model.checkpoint={var_path}", f"model.vae_checkpoint={vae_path}",
              *net, "model.network.shared_aln=false", *vae, "metrics=pixel_fd", f"metrics.reference={tmp_path / 'ref.npz'}",
              "metrics.num_samples=20", "metrics.allow_small=true", "metrics.block_size=20", "neon.n_synthetic=20", "neon.batch_size=10",
              "neon.budget_steps=[2,4]", "neon.w=[0.0,0.5,1.0]", "task.cfg_values=[1.5,2.0]",
              "task.final_num_samples=40", "sampler.top_k=50", "neon.synthetic.block_size=10",
              "neon.synthetic.shard_size=20", "trainer.enable_progress_bar=false"], tmp_path)
    summary = summary_of(tmp_path)
    assert summary["task"] == "search" and summary["cfg_key"] == "cfg"
    # the pick is the best of the coarse grid and its ±0.1 refinement, scored again at final_num_samples
    coarse = check_search_summary(summary, [0.0, 0.5, 1.0], refine_step=0.1, final_num_samples=40)
    assert {(p["cfg"], p["budget_steps"]) for p in coarse} == {(c, b) for c in (1.5, 2.0) for b in (2, 4)}
    assert {p["num_samples"] for p in summary["points"]} == {20, 40}  # small-sample search, large-sample final

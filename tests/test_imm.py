"""The IMM family: the release's layout, reading its pickled snapshots without running them, the SD-VAE in
the diffusers layout, the moment-matching loss against a brute-force computation, the sampler's seeding and
step counts, bad input, and the pipeline at tiny size (the tiny model on digits, the paper config)."""

from __future__ import annotations

import pickle
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families.imm import IMMModule, pushforward_sampler
from neon.families.imm.loss import group_weights, imm_loss, time_triples
from neon.families.imm.network import IMMPrecond
from neon.families.latents import KLAutoencoder, PixelLatent, from_diffusers, stable_diffusion_vae
from tests.helpers import run_task, summary_of
from tests.summary_checks import check_search_summary

NET = dict(img_resolution=8, img_channels=4, num_classes=10, model_type=None, hidden_size=32, depth=2, num_heads=2,
           patch_size=2)
LATENT = dict(in_channels=4, image_size=8)


def random_precond(net: dict, seed: int = 0) -> IMMPrecond:
    """A network with non-trivial weights (the adaLN-Zero layers are not zero)."""
    torch.manual_seed(seed)
    model = IMMPrecond(**net)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def write_persistence_pickle(path: Path, state: dict[str, torch.Tensor], kwargs: dict) -> None:
    """A snapshot in the EDM persistence layout: {'ema': <module carrying its source code>, ...}, whose source
    would stop the process if a loader ever executed it."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only needed to pickle; never called when reading
        raise AssertionError("persistent objects must not be rebuilt")

    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package = types.ModuleType("torch_utils")
    package.persistence = persistence

    def tree(prefix: str) -> dict:
        names = sorted({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)
                        and "." in k[len(prefix):]})
        return {"_parameters": {k[len(prefix):]: torch.nn.Parameter(v) for k, v in state.items()
                                if k.startswith(prefix) and "." not in k[len(prefix):]},
                "_buffers": {}, "_non_persistent_buffers_set": set(), "training": False,
                "_modules": {n: Persistent(tree(f"{prefix}{n}.")) for n in names}}

    class Persistent:
        def __init__(self, state_dict: dict, init_kwargs: dict | None = None):
            self.meta = dict(type="class", version=6, class_name="training.preconds.IMMPrecond",
                             module_src="raise SystemExit('the snapshot source was executed')",
                             state={**state_dict, "_init_kwargs": init_kwargs or {}})

        def __reduce__(self):
            return (_reconstruct_persistent_obj, (self.meta,))

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": persistence})
    try:
        with open(path, "wb") as f:
            pickle.dump({"ema": Persistent(tree(""), kwargs), "augment_pipe": None, "dataset_kwargs": {}}, f)
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


@pytest.fixture()
def module(tmp_path: Path) -> IMMModule:
    path = tmp_path / "imm_tiny.pkl"
    write_persistence_pickle(path, random_precond(NET).state_dict(), NET)
    m = IMMModule(NET, PixelLatent(**LATENT))
    m.load_checkpoint(path)
    return m.eval()


def test_release_layout_matches_the_official_counts():
    # counts of the official IMMPrecond(DiT_XL_2) and of diffusers' sd-vae-ft-ema architecture
    with torch.device("meta"):
        xl = IMMPrecond()
        vae = stable_diffusion_vae([0.0] * 4, [1.0] * 4)
    state = xl.state_dict()
    assert (sum(p.numel() for p in xl.parameters()), len(state)) == (676_735_504, 296)
    assert list(state)[:3] == ["model.pos_embed", "model.s_embedder.mlp.0.weight", "model.s_embedder.mlp.0.bias"]
    assert tuple(state["model.y_embedder.embedding_table.weight"].shape) == (1001, 1152)
    assert tuple(state["model.final_layer.linear.weight"].shape) == (16, 1152)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    # the fixed sin-cos table: column then row, sin then cos
    table = IMMPrecond(**NET).model.pos_embed[0]
    assert table[1, 0] == torch.sin(torch.tensor(1.0)) and table[4, 16] == torch.sin(torch.tensor(1.0))


def test_snapshots_load_without_running_their_code(tmp_path: Path, module: IMMModule):
    reference = random_precond(NET).state_dict()
    assert all(torch.equal(module.neon_weights()[k], v) for k, v in reference.items())
    assert "training" not in sys.modules and "torch_utils" not in sys.modules
    state_file = tmp_path / "theta.pt"  # a plain state dict works too
    torch.save(reference, state_file)
    IMMModule(NET, PixelLatent(**LATENT)).load_checkpoint(state_file)


def test_diffusers_vae_names_map_to_ours():
    mapped = from_diffusers({k: torch.zeros(2, 2) if "to_" in k else torch.zeros(1) for k in [
        "encoder.down_blocks.0.downsamplers.0.conv.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid_block.attentions.0.to_out.0.weight", "encoder.mid_block.attentions.0.group_norm.bias",
        "encoder.mid_block.resnets.1.conv2.bias", "encoder.conv_norm_out.weight", "decoder.up_blocks.0.resnets.2.norm1.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up_blocks.1.resnets.0.conv1.weight"]})
    assert set(mapped) == {
        "encoder.down.0.downsample.conv.weight", "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.mid.attn_1.proj_out.weight", "encoder.mid.attn_1.norm.bias", "encoder.mid.block_2.conv2.bias",
        "encoder.norm_out.weight", "decoder.up.1.block.2.norm1.weight", "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.0.conv1.weight"}
    assert mapped["encoder.mid.attn_1.proj_out.weight"].shape == (2, 2, 1, 1)  # linear → 1×1 conv


def test_sd_vae_loads_from_a_diffusers_folder_and_normalises_per_channel(tmp_path: Path):
    from safetensors.torch import save_file

    tiny = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, image_size=16)
    vae = stable_diffusion_vae([1.0, -1.0, 0.5, 0.0], [2.0, 4.0, 1.0, 0.5], **tiny)
    own = vae.state_dict()
    spelled = _diffusers_names(own)
    names = dict(zip(from_diffusers({d: torch.zeros(1) for d in spelled}), spelled, strict=True))  # ours → diffusers
    assert set(names) == set(own)
    folder = tmp_path / "sd-vae-ft-ema"
    folder.mkdir()
    weights = {d: (torch.randn_like(own[ours]) if not d.endswith(("to_q.weight", "to_k.weight", "to_v.weight",
               "to_out.0.weight")) else torch.randn(own[ours].shape[:2])) for ours, d in names.items()}
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    vae.load_release(folder)
    assert torch.equal(vae.state_dict()["encoder.mid.attn_1.q.weight"][:, :, 0, 0],
                       weights[names["encoder.mid.attn_1.q.weight"]])
    z = torch.randn(2, 4, 2, 2)
    scale = np.float32(0.5) / np.asarray([2.0, 4.0, 1.0, 0.5], np.float32)
    raw = z / torch.from_numpy(scale).view(1, 4, 1, 1) + torch.tensor([1.0, -1.0, 0.5, 0.0]).view(1, 4, 1, 1)
    torch.testing.assert_close(vae.decode(z), vae.decoder(vae.post_quant_conv(raw)))


def _diffusers_names(own: dict) -> list[str]:
    # the diffusers spelling of each of our keys (inverse of the documented renaming, for the test's file)
    ups = 1 + max(int(k.split(".")[2]) for k in own if k.startswith("decoder.up."))
    out = []
    for k in own:
        d = k.replace("norm_out.", "conv_norm_out.").replace("mid.block_1.", "mid_block.resnets.0.")
        d = d.replace("mid.block_2.", "mid_block.resnets.1.").replace("mid.attn_1.", "mid_block.attentions.0.")
        d = d.replace("nin_shortcut", "conv_shortcut").replace(".downsample.", ".downsamplers.0.")
        d = d.replace(".upsample.", ".upsamplers.0.")
        for a, b in ((".norm.", ".group_norm."), (".q.", ".to_q."), (".k.", ".to_k."), (".v.", ".to_v."),
                     (".proj_out.", ".to_out.0.")):
            if "attentions" in d:
                d = d.replace(a, b)
        if d.startswith("encoder.down."):
            d = d.replace("encoder.down.", "encoder.down_blocks.").replace(".block.", ".resnets.")
        if d.startswith("decoder.up."):
            parts = d.split(".")
            d = ".".join(["decoder", "up_blocks", str(ups - 1 - int(parts[2]))] + parts[3:]).replace(".block.", ".resnets.")
        out.append(d)
    return out


def test_loss_is_the_group_mmd_of_the_reference(module: IMMModule):
    module.train()
    module.loss_kwargs = dict(label_dropout=0.0)
    z, labels = torch.randn(8, 4, 8, 8) * 0.5, torch.arange(8) % 10
    net = module.net
    loss = imm_loss(net, z, labels, StepNoise.single(8, seed=3), label_dropout=0.0)
    # brute force: the same draws, every kernel pair written out
    again = StepNoise.single(8, seed=3)
    u_t, u_s = again.rand(dtype=torch.float64)[::4], again.rand(dtype=torch.float64)[::4]
    again.rand()
    eps = again.randn(4, 8, 8) * 0.5
    t, r, s = (v.flatten() for v in time_triples(u_t.view(-1, 1, 1, 1), u_s.view(-1, 1, 1, 1), 0.994, 0.0, 12, 1e-4))
    assert ((s <= r) & (r < t) & (t <= 0.994)).all()
    total = 0.0
    with torch.no_grad():
        for g in range(2):
            rows = slice(4 * g, 4 * g + 4)
            ti, ri, si = t[g], r[g], s[g]
            st = net(((1 - ti) * z[rows] + ti * eps[rows]), ti.repeat(4), si.repeat(4), labels[rows])
            tg = net(((1 - ri) * z[rows] + ri * eps[rows]), ri.repeat(4), si.repeat(4), labels[rows])
            w, w_out = group_weights(ti.view(1), si.view(1), 0.5, 2.0, 4.0)

            def k(x, y, w=w):
                return float(torch.exp(-w * ((x - y) ** 2).sum().clamp_min(1e-8).sqrt() / x.numel()))

            mmd = sum(k(st[i], st[j]) + k(tg[i], tg[j]) - 2 * k(st[i], tg[j]) for i in range(4) for j in range(4)) / 16
            total += float(w_out) * mmd / 2
    assert loss.item() == pytest.approx(total, rel=1e-6)


def test_loss_rows_split_like_processes(module: IMMModule):
    module.train()
    batch = {"x": torch.rand(8, 4, 8, 8) * 2 - 1, "label": torch.arange(8)}
    whole = module.loss(batch, StepNoise(5, 1, slice(0, 8), 8))
    halves = [module.loss({k: v[r] for k, v in batch.items()}, StepNoise(5, 1, r, 8)) for r in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2)


def test_sampler_is_seeded_per_sample_and_takes_the_preset_steps(module: IMMModule):
    sampler = partial(pushforward_sampler, num_steps=4, cfg=1.5)
    a, la = module.generate([1, 2, 3], sampler, torch.tensor([1, 2, 3]))
    b, _ = module.generate([1, 2, 3], sampler, torch.tensor([1, 2, 3]))
    c, _ = module.generate([2], sampler, torch.tensor([2]))
    assert torch.equal(a, b) and a.shape == (3, 4, 8, 8) and torch.equal(la, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(a[1:2], c, atol=1e-5, rtol=0)
    calls, net = [], module.sampling_net  # the EMA copy samples
    original = net.network
    net.network = lambda *args: calls.append(args[0].shape[0]) or original(*args)
    try:
        for steps in (1, 2, 4, 8):
            module.generate([0, 1], partial(pushforward_sampler, num_steps=steps, cfg=1.5), torch.tensor([0, 1]))
        module.generate([0, 1], partial(pushforward_sampler, num_steps=2, cfg=None), torch.tensor([0, 1]))
    finally:
        del net.network
    assert calls == [4] * 15 + [2] * 2  # one network call per step; the batch doubled for guidance
    one, _ = module.generate([0, 1], partial(pushforward_sampler, num_steps=2, cfg=1.0), torch.tensor([0, 1]))
    plain, _ = module.generate([0, 1], partial(pushforward_sampler, num_steps=2, cfg=None), torch.tensor([0, 1]))
    torch.testing.assert_close(one, plain, atol=2 / 255, rtol=0)  # cfg 1 is the conditional model


def test_bad_input_names_expected_and_found(tmp_path: Path, module: IMMModule):
    for change, message in ((dict(depth=3), "depth 3 but the config gives 2"),
                            (dict(hidden_size=48, num_heads=3), "width 48 but the config gives 32"),
                            (dict(patch_size=4), "patch size 4 but the config gives 2")):
        path = tmp_path / f"{len(message)}.pt"
        torch.save(random_precond(dict(NET, **change)).state_dict(), path)
        with pytest.raises(NeonError, match=message):
            module.load_checkpoint(path)
    with pytest.raises(NeonError, match="num_steps must be one of \\[1, 2, 4, 8\\].*got 3"):
        module.generate([0], partial(pushforward_sampler, num_steps=3), torch.tensor([1]))
    with pytest.raises(NeonError, match="vae_checkpoint '.*sd-vae' does not exist"):
        IMMModule(dict(NET, img_resolution=2), KLAutoencoder(embed_dim=4, ch=32, ch_mult=[1, 2, 2, 2], image_size=16),
                  vae_checkpoint=str(tmp_path / "sd-vae"))
    with pytest.raises(NeonError, match="needs its VAE"):
        IMMModule(dict(NET, img_resolution=2), KLAutoencoder(embed_dim=4, ch=32, ch_mult=[1, 2, 2, 2], image_size=16))
    with pytest.raises(NeonError, match="batch of 6: make neon.batch_size .* a multiple of 4"):
        module.loss({"x": torch.zeros(6, 4, 8, 8), "label": torch.zeros(6, dtype=torch.long)}, StepNoise.single(6))
    with pytest.raises(NeonError, match="class id 10 is out of range"):
        module.generate([0], partial(pushforward_sampler, num_steps=1), torch.tensor([10]))
    with pytest.raises(NeonError, match="latent space gives 1×8×8 latents but the IMM network expects 4×8×8"):
        IMMModule(NET, PixelLatent(in_channels=1, image_size=8))
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"network": 1}))
    with pytest.raises(NeonError, match="has no 'ema' network"):
        module.load_checkpoint(bad)


TINY_IMM = ["model=imm_tiny", "model.pretrain.steps=30", "neon.n_synthetic=40", "sampler.num_steps=2",
            "neon.budget_steps=3", "neon.batch_size=20", "neon.w=[0.0,1.0]", "neon.control=false",
            "neon.synthetic.block_size=20", "neon.synthetic.shard_size=40", "metrics.num_samples=60", "metrics.allow_small=true",
            "metrics.noise_seed_offset=null", "metrics.block_size=30", "preview_samples=4",
            "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_tiny_imm_runs_the_embedded_default(tmp_path: Path, shared_cache: Path):
    run_task(TINY_IMM, tmp_path, cache=shared_cache)  # the session's digits classifier
    summary = summary_of(tmp_path)
    assert summary["family"] == "neon.families.imm.IMMModule" and summary["sampler"]["num_steps"] == 2
    assert np.isfinite(summary["fid_base"]) and np.isfinite(summary["fid_neon"])
    shard = torch.load(next(Path(summary["artifacts"]["synthetic"]).glob("shard_*.pt")), weights_only=True)
    assert torch.equal(shard["label"], torch.arange(40) % 10)


@pytest.mark.slow
def test_paper_experiment_runs_at_tiny_size(tmp_path: Path):
    net = dict(NET, img_resolution=2, num_classes=1000)
    snapshot = tmp_path / "imagenet256_ts_a2.pkl"
    write_persistence_pickle(snapshot, random_precond(net).state_dict(), net)
    vae = stable_diffusion_vae([0.0] * 4, [1.0] * 4, ch=32, ch_mult=[1, 2, 2, 2], image_size=16)
    torch.save({"state_dict": vae.state_dict()}, tmp_path / "vae.ckpt")  # the LDM layout
    np.savez(tmp_path / "ref.npz", mu=np.zeros(768), sigma=np.eye(768) * 0.3)
    overrides = [f"model.network.{k}={'null' if v is None else v}" for k, v in net.items()]
    overrides += ["model.latent.ch=32", "model.latent.ch_mult=[1,2,2,2]", "model.latent.image_size=16"]
    run_task(["experiment=paper/imm_in256", f"model.checkpoint={snapshot}", f"model.vae_checkpoint={tmp_path / 'vae.ckpt'}",
              *overrides, "metrics=pixel_fd", f"metrics.reference={tmp_path / 'ref.npz'}",
              "metrics.num_samples=20", "metrics.allow_small=true", "metrics.block_size=20", "neon.n_synthetic=20", "neon.batch_size=8",
              "neon.budget_steps=[2,4]", "neon.w=[0.0,0.8,1.2]", "task.cfg_values=[1.6,1.8]",
              "task.final_num_samples=40", "neon.synthetic.block_size=10", "neon.synthetic.shard_size=20",
              "trainer.enable_progress_bar=false"], tmp_path)
    summary = summary_of(tmp_path)
    assert summary["task"] == "search" and summary["cfg_key"] == "cfg"
    # the pick is the best of the coarse grid and its ±0.1 refinement, scored again at final_num_samples
    coarse = check_search_summary(summary, [0.0, 0.8, 1.2], refine_step=0.1, final_num_samples=40)
    assert {(p["cfg"], p["budget_steps"]) for p in coarse} == {(c, b) for c in (1.6, 1.8) for b in (2, 4)}
    assert {p["num_samples"] for p in summary["points"]} == {20, 40}

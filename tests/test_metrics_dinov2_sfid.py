"""FD-DINOv2 and sFID: a tiny DINOv2 in the official key layout loads into timm and matches a forward written
out from docs/upstream/metrics.md; dgm-eval's preprocessing; ADM's spatial features (Mixed_6d.branch1x1, first
7 channels, NHWC order) from the FID pass; both distances against a hand computation; references and wiring."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from neon.core.errors import NeonError
from neon.metrics.build import build_extractor, extractor_key
from neon.metrics.dinov2 import DinoV2Features, dgm_eval_pixels
from neon.metrics.extractors import StackedFeatures
from neon.metrics.images import to_uint8
from neon.metrics.reference import Reference, load_reference, reference_arrays, reference_from_outputs
from neon.metrics.scores import compute_scores
from tests.helpers import run_task, summary_of
from tests.inception_weights import write_random_inception

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
HUB_GRID = 37  # the released ViT-L/14 is built for 518 × 518: a 37 × 37 position grid


def official_state(seed: int = 0, dim: int = 32, depth: int = 2) -> dict[str, torch.Tensor]:
    """Random weights under the names of facebookresearch/dinov2's released state dict (mask_token included)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    sd = {"cls_token": rnd(1, 1, dim), "pos_embed": rnd(1, 1 + HUB_GRID ** 2, dim), "mask_token": rnd(1, dim),
          "patch_embed.proj.weight": rnd(dim, 3, 14, 14, scale=0.05), "patch_embed.proj.bias": rnd(dim),
          "norm.weight": rnd(dim, shift=1.0), "norm.bias": rnd(dim)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": rnd(dim, shift=1.0), b + "norm1.bias": rnd(dim),
                   b + "attn.qkv.weight": rnd(3 * dim, dim), b + "attn.qkv.bias": rnd(3 * dim),
                   b + "attn.proj.weight": rnd(dim, dim), b + "attn.proj.bias": rnd(dim),
                   b + "ls1.gamma": rnd(dim, shift=0.5), b + "norm2.weight": rnd(dim, shift=1.0),
                   b + "norm2.bias": rnd(dim), b + "mlp.fc1.weight": rnd(4 * dim, dim),
                   b + "mlp.fc1.bias": rnd(4 * dim), b + "mlp.fc2.weight": rnd(dim, 4 * dim),
                   b + "mlp.fc2.bias": rnd(dim), b + "ls2.gamma": rnd(dim, shift=0.5)})
    return sd


def hand_dinov2(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """The hub model's forward at 224 × 224, written out from the facts: class token after the final norm."""
    n, dim = len(pixels), sd["cls_token"].shape[-1]
    x = F.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14).flatten(2).mT
    x = torch.cat([sd["cls_token"].expand(n, -1, -1), x], dim=1)
    grid = sd["pos_embed"][:, 1:].reshape(1, HUB_GRID, HUB_GRID, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(16 + 0.1) / HUB_GRID, mode="bicubic", antialias=False)
    x = x + torch.cat([sd["pos_embed"][:, :1], grid.flatten(2).mT], dim=1)
    tokens, head_dim = x.shape[1], dim // heads
    for i in range(depth):
        p = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (dim,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(
            n, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.mT) * head_dim ** -0.5).softmax(dim=-1) @ v
        x = x + p["ls1.gamma"] * F.linear(attn.transpose(1, 2).reshape(n, tokens, dim),
                                          p["attn.proj.weight"], p["attn.proj.bias"])
        h = F.layer_norm(x, (dim,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
        x = x + p["ls2.gamma"] * h
    return F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 0]


def images(n: int, seed: int, h: int = 40, w: int = 36, channels: int = 3) -> torch.Tensor:
    """Float images in [-1, 1] with some structure."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, channels, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear")
    return (x + torch.randn(n, channels, 1, 1, generator=g)).tanh()


def test_official_dinov2_layout_loads_into_timm_and_matches_a_hand_forward(tmp_path: Path):
    sd = official_state()
    torch.save(sd, tmp_path / "dinov2_vitl14_pretrain.pth")
    x = images(3, 1)
    ours = DinoV2Features(str(tmp_path / "dinov2_vitl14_pretrain.pth"), device="cpu", model_kwargs=TINY).extract(x)
    with torch.no_grad():
        hand = hand_dinov2(sd, dgm_eval_pixels(to_uint8(x)), heads=2, depth=2)
    assert ours["pool"].shape == (3, 32) and ours["pool"].dtype == torch.float64
    assert torch.allclose(ours["pool"].float(), hand, atol=1e-5, rtol=1e-5), (ours["pool"].float() - hand).abs().max()


def test_timm_layout_file_gives_the_same_features_and_the_position_rule_is_the_hubs(tmp_path: Path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = official_state(seed=2)
    torch.save(sd, tmp_path / "official.pth")
    save_file({k: v.contiguous() for k, v in sd.items() if k != "mask_token"}, str(tmp_path / "timm.safetensors"))
    x = images(2, 3)
    official = DinoV2Features(str(tmp_path / "official.pth"), device="cpu", model_kwargs=TINY)
    timm_file = DinoV2Features(str(tmp_path / "timm.safetensors"), device="cpu", model_kwargs=TINY)
    assert torch.equal(official(x), timm_file(x))
    # timm's own filter resizes the grid to an output size with antialias: not the hub's scale-factor rule
    net = official.network()
    filtered = checkpoint_filter_fn(dict(sd), net)["pos_embed"]
    assert filtered.shape == net.pos_embed.shape and (filtered - net.pos_embed.detach()).abs().max() > 1e-3


def test_preprocessing_is_dgm_evals_torchvision_transform():
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((224, 224), transforms.InterpolationMode.BICUBIC),
                                    transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for x in (images(2, 4), images(2, 5, h=300, w=250), images(2, 6, channels=1)):
        u8 = to_uint8(x)
        expected = torch.stack([transform(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).convert("RGB"))
                                for im in u8.permute(0, 2, 3, 1).numpy()])
        assert torch.equal(dgm_eval_pixels(u8), expected)


def test_missing_or_wrong_dinov2_weights_are_one_line_errors(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("NEON_DINOV2_WEIGHTS", raising=False)
    with pytest.raises(NeonError, match=r"metrics.dinov2_weights='/nowhere/d.pth'.*'dinov2_vitl14_pretrain.pth'"):
        DinoV2Features("/nowhere/d.pth", device="cpu")(images(1, 0))
    with pytest.raises(NeonError, match="metrics.dinov2_weights=None"):
        DinoV2Features(None, device="cpu").network()
    torch.save(official_state(depth=1), tmp_path / "short.pth")  # one block where the model has two
    with pytest.raises(NeonError, match="do not fit vit_large_patch14_dinov2") as err:
        DinoV2Features(str(tmp_path / "short.pth"), device="cpu", model_kwargs=TINY).network()
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("inception") / "weights.pth")


def test_spatial_features_are_mixed_6d_branch1x1_first_7_channels_in_nhwc_order_from_one_pass(inception: Path):
    from neon.metrics.inception import InceptionFeatures

    x = images(3, 7, h=32, w=32)
    plain = InceptionFeatures(str(inception), batch_size=2, device="cpu")
    with_spatial = InceptionFeatures(str(inception), batch_size=2, device="cpu")
    with_spatial.want_outputs({"spatial"})
    net = with_spatial.network()
    calls, layer_out = [], []
    net.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    net.Mixed_6d.branch1x1.register_forward_hook(lambda module, inputs, out: layer_out.append(out.clone()))
    out = with_spatial.extract(x)
    full = torch.cat(layer_out)  # [3, 192, 17, 17]
    assert len(calls) == 2 and full.shape == (3, 192, 17, 17)  # one forward per batch gives pool and spatial
    spatial = out["spatial"]
    assert spatial.shape == (3, 2023) and spatial.dtype == torch.float64
    n, h, w, c = np.meshgrid(range(3), range(17), range(17), range(7), indexing="ij")
    column = (h * 17 + w) * 7 + c  # TF's NHWC flattening: row, column, channel (fastest)
    assert torch.equal(spatial[n.ravel(), column.ravel()], full[n.ravel(), c.ravel(), h.ravel(), w.ravel()].double())
    reference = plain.extract(x)
    assert "spatial" not in reference and torch.equal(reference["pool"], out["pool"])
    assert with_spatial.extra_outputs() == ("spatial",) and plain.extra_outputs() == ()


def hand_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """ADM's and dgm-eval's formula: np.cov statistics, scipy's matrix square root."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_sfid_and_fd_dinov2_equal_a_hand_frechet_distance():
    rng = np.random.default_rng(0)
    gen = {"pool": rng.normal(size=(80, 4)), "spatial": rng.normal(size=(80, 6)) * 1.3 + 0.2,
           "dinov2": rng.normal(size=(80, 5)) + 0.5}
    real = {"pool": rng.normal(size=(90, 4)), "spatial": rng.normal(size=(90, 6)), "dinov2": rng.normal(size=(90, 5))}
    ref = reference_from_outputs(real, "hand")
    out = compute_scores(gen, ref, ["fid", "sfid", "fd_dinov2"])
    for metric, feature in (("fid", "pool"), ("sfid", "spatial"), ("fd_dinov2", "dinov2")):
        assert out[metric] == pytest.approx(hand_frechet(gen[feature], real[feature]), rel=1e-8), metric
    with pytest.raises(NeonError, match="asks for sfid, but reference 'stats' has no 'spatial' statistics"):
        compute_scores(gen, Reference(ref.mu, ref.sigma, None, "stats"), ["sfid"])
    with pytest.raises(NeonError, match="asks for fd_dinov2, but the extractor gave no 'dinov2' features"):
        compute_scores({"pool": gen["pool"]}, ref, ["fd_dinov2"])


def test_references_keep_adm_spatial_statistics_and_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    outputs = {"pool": rng.normal(size=(20, 3)), "spatial": rng.normal(size=(20, 4)),
               "dinov2": rng.normal(size=(20, 2)), "logits": rng.normal(size=(20, 5))}
    ref = reference_from_outputs(outputs, "real")
    assert set(ref.extra) == {"spatial", "dinov2"}  # logits are no Fréchet feature
    arrays = reference_arrays(ref)
    assert {"mu", "sigma", "pool", "mu_s", "sigma_s", "mu_dinov2", "sigma_dinov2"} == set(arrays)
    np.savez(tmp_path / "ref.npz", **arrays)
    back = load_reference(tmp_path / "ref.npz")
    for name in ("spatial", "dinov2"):
        assert np.allclose(back.extra[name][0], ref.extra[name][0]) and np.allclose(back.extra[name][1], ref.extra[name][1])
    # an ADM reference batch: mu/sigma and mu_s/sigma_s stored, read as they are
    np.savez(tmp_path / "adm.npz", mu=np.zeros(3), sigma=np.eye(3), mu_s=np.ones(4), sigma_s=2 * np.eye(4))
    adm = load_reference(tmp_path / "adm.npz")
    assert np.array_equal(adm.statistics("spatial", "sfid")[1], 2 * np.eye(4))


def test_extractor_is_built_for_the_metrics_asked_and_keys_name_it():
    m = OmegaConf.create({
        "extractor": {"_target_": "neon.metrics.inception.InceptionFeatures", "weights": "/w/inception.pth"},
        "extra_extractors": {"dinov2": {"_target_": "neon.metrics.dinov2.DinoV2Features", "weights": "/w/d.pth"}}})
    fid_only = build_extractor(m.extractor, m.extra_extractors, ["fid", "isc"])
    assert not isinstance(fid_only, StackedFeatures) and fid_only.extra_outputs() == ()
    assert extractor_key(m.extractor, m.extra_extractors, ["fid", "isc"]) == {"extractor": {"_target_": m.extractor._target_, "weights": "/w/inception.pth"}}
    both = build_extractor(m.extractor, m.extra_extractors, ["fid", "sfid", "fd_dinov2"])
    assert isinstance(both, StackedFeatures) and both.extra_outputs() == ("spatial", "dinov2")
    key = extractor_key(m.extractor, m.extra_extractors, ["fid", "sfid", "fd_dinov2"])
    assert key["outputs"] == ["dinov2", "spatial"] and key["extra_extractors"]["dinov2"]["weights"] == "/w/d.pth"
    assert extractor_key(m.extractor, m.extra_extractors, ["sfid"]) != extractor_key(m.extractor, m.extra_extractors, ["fid"]) != extractor_key(m.extractor, m.extra_extractors, ["fd_dinov2"])
    identity = OmegaConf.create({"extractor": {"_target_": "neon.metrics.extractors.IdentityFeatures"}})
    with pytest.raises(NeonError, match="asks for sfid, which needs 'spatial' features.*metrics.extractor \\(identity\\)"):
        build_extractor(identity.extractor, None, ["fid", "sfid"])


@pytest.mark.slow
def test_evaluate_task_scores_an_adm_sample_file_with_every_metric(inception: Path, tmp_path: Path):
    # `task=evaluate samples=S.npz` against an ADM batch: FID, ISC, precision/recall, sFID and FD-DINOv2 from one
    # Inception pass (plus the DINOv2 one), each score traceable to the networks that made it
    u8 = lambda x: to_uint8(x).permute(0, 2, 3, 1).numpy()  # noqa: E731
    np.savez(tmp_path / "samples.npz", arr_0=u8(images(12, 8, 32, 32)))
    np.savez(tmp_path / "real.npz", arr_0=u8(images(12, 9, 32, 32)))
    torch.save(official_state(), tmp_path / "dinov2.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_task(["task=evaluate", f"samples={tmp_path / 'samples.npz'}", "metrics=fid50k",
                  f"metrics.inception_weights={inception}", f"metrics.dinov2_weights={tmp_path / 'dinov2.pth'}",
                  "+metrics.extra_extractors.dinov2.model_kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
                  "+metrics.extra_extractors.dinov2.device=cpu", "metrics.compute=[fid,isc,pr,sfid,fd_dinov2]",
                  f"metrics.reference={tmp_path / 'real.npz'}", "metrics.block_size=12", "metrics.allow_small=true"],
                 tmp_path)
    summary = summary_of(tmp_path)
    scores = summary["scores"][str(tmp_path / "samples.npz")]
    assert scores["num_samples"] == 12 and scores["fid"] > 0 and scores["sfid"] > 0 and scores["fd_dinov2"] > 0
    assert scores["isc_mean"] > 0 and 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
    assert summary["metric"]["extractor"]["weights"] == str(inception)
    assert summary["metric"]["extra_extractors"]["dinov2"]["weights"] == str(tmp_path / "dinov2.pth")

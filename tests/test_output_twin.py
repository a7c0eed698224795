"""The output-space twin (neon.compare=output): each family's combined output at one call against the hand
computation (1 + w)·f(θ_r) − w·f(θ_s), weight-space Neon reproduced exactly at w = 0, the network
evaluations counted, and the settings refused in one line."""

from __future__ import annotations

import copy
import csv
from functools import partial
from pathlib import Path

import pytest
import torch

from neon.analysis.output_twin import CountedNet, OutputTwin, build_twin, timed_generate
from neon.analysis.run_report import w_table
from neon.core.io import StateDict
from neon.core.seeding import PerSampleRNG
from neon.families.ar2d import ARToy, temperature_sampler
from neon.families.edm import EDMModule, heun_sampler
from neon.families.toy2d import ToyDiffusion, ddim
from neon.merging.extrapolate import extrapolate
from tests.helpers import TINY_TOY, cli_error, run_task, summary_of

W = 0.7
EDM_DIGITS = dict(precond="EDMPrecond", img_resolution=8, img_channels=1, label_dim=10, model_type="ResMLP", hidden=16,
                  num_blocks=1, noise_channels=8, label_dropout=0.1)


def perturbed(state: StateDict, seed: int, scale: float = 0.05) -> StateDict:
    """θ_s stand-in: every float tensor moved by seeded noise."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def twin_of(module, w: float = W, seed: int = 1) -> tuple[OutputTwin, torch.nn.Module, torch.nn.Module]:
    """The module's twin at θ_r (its weights) and a perturbed θ_s, plus plain copies of both networks."""
    theta_r = module.neon_weights()
    theta_s = perturbed(theta_r, seed)
    twin = build_twin(module.own_sampling_net, theta_r, theta_s, w, module.twin_outputs, module.twin_state)
    ref, aux = copy.deepcopy(module.own_sampling_net), copy.deepcopy(module.own_sampling_net)
    ref.load_state_dict(theta_r)
    aux.load_state_dict(theta_s)
    return twin, ref.eval(), aux.eval()


def toy() -> ToyDiffusion:
    torch.manual_seed(0)
    return ToyDiffusion().eval()


def test_toy_twin_call_is_the_hand_combination():
    twin, ref, aux = twin_of(toy())
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    with torch.no_grad():
        hand = (1 + W) * ref(x, t).double() - W * aux(x, t).double()  # in float64, by hand
        out = twin(x, t)
    assert torch.allclose(out.double(), hand, atol=1e-6)
    assert not torch.allclose(out, ref(x, t))  # θ_s does enter
    assert twin.calls == 2  # both networks evaluated once


def test_toy_twin_samples_are_ddim_on_the_combined_epsilon():
    module = toy()
    twin, ref, aux = twin_of(module)
    with module.sampling_through(twin):
        got, _ = module.generate(list(range(64)), partial(ddim, steps=5))
    noise = PerSampleRNG(list(range(64)), "cpu").randn(2)  # the noise `generate` draws for these seeds
    hand = ddim(lambda x, t: (1 + W) * ref(x, t) - W * aux(x, t), noise, steps=5)
    assert torch.allclose(got, hand, atol=1e-6)
    assert not torch.allclose(got, ddim(ref, noise, steps=5))
    assert "_sampling_stand_in" not in module.__dict__ and module.sampling_net is module.net  # restored


def test_twin_at_w0_reproduces_weight_space_neon_exactly():
    module = toy()
    theta_r = {k: v.clone() for k, v in module.neon_weights().items()}
    theta_s = perturbed(theta_r, 2)
    sampler, seeds = partial(ddim, steps=8), list(range(100))
    module.load_neon_weights(extrapolate(theta_r, theta_s, 0.0))
    weight_space, _ = module.generate(seeds, sampler)
    twin = build_twin(module.own_sampling_net, theta_r, theta_s, 0.0, module.twin_outputs)
    with module.sampling_through(twin):
        output_space, _ = module.generate(seeds, sampler)
    assert torch.equal(weight_space, output_space)
    # and the two differ at w ≠ 0: a nonlinear network's output is no linear function of its weights
    module.load_neon_weights(extrapolate(theta_r, theta_s, 1.0))
    weight_space, _ = module.generate(seeds, sampler)
    with module.sampling_through(build_twin(module.own_sampling_net, theta_r, theta_s, 1.0, module.twin_outputs)):
        output_space, _ = module.generate(seeds, sampler)
    assert not torch.allclose(weight_space, output_space)


def test_edm_twin_combines_the_denoiser_and_counts_network_evaluations():
    torch.manual_seed(0)
    module = EDMModule(EDM_DIGITS, ema_halflife_kimg=None).eval()
    twin, ref, aux = twin_of(module)
    x, sigma = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64)
    labels = module.one_hot(torch.tensor([0, 3, 5, 9]))
    with torch.no_grad():
        hand = (1 + W) * ref(x, sigma, labels).double() - W * aux(x, sigma, labels).double()
        assert torch.allclose(twin(x, sigma, labels).double(), hand, atol=1e-6)
    assert twin.round_sigma is not None and twin.sigma_max == ref.sigma_max  # constants read from θ_r's copy
    # Heun with 4 steps: 2·4 − 1 = 7 evaluations per network, per image of the batch
    sampler, seeds = partial(heun_sampler, num_steps=4), list(range(6))
    _, single = timed_generate(module, sampler, seeds, CountedNet(module.own_sampling_net, module.twin_outputs))
    _, both = timed_generate(module, sampler, seeds, twin)
    assert (single, both) == (7, 14)


def test_edm_twin_at_w0_equals_theta_r_samples():
    torch.manual_seed(0)
    module = EDMModule(EDM_DIGITS, ema_halflife_kimg=None).eval()
    theta_r = {k: v.clone() for k, v in module.neon_weights().items()}
    sampler, seeds = partial(heun_sampler, num_steps=5), list(range(20))
    base, labels = module.generate(seeds, sampler)
    with module.sampling_through(build_twin(module.own_sampling_net, theta_r, perturbed(theta_r, 3), 0.0,
                                            module.twin_outputs)):
        twin, twin_labels = module.generate(seeds, sampler)
    assert torch.equal(base, twin) and torch.equal(labels, twin_labels)


def test_imm_twin_combines_the_network_output_with_and_without_guidance():
    from neon.families.imm import IMMModule
    from tests.test_imm import NET, random_precond

    net = random_precond(NET).eval()
    theta_s = perturbed(net.state_dict(), 4, 0.02)
    twin = build_twin(net, net.state_dict(), theta_s, W, IMMModule.twin_outputs)
    aux = copy.deepcopy(net)
    aux.load_state_dict(theta_s)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    t, s, labels = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), torch.tensor([1, 2, 10])
    with torch.no_grad():
        assert torch.allclose(twin(x, t, s, labels), (1 + W) * net(x, t, s, labels) - W * aux(x, t, s, labels), atol=1e-9)
        hand = (1 + W) * net.cfg_forward(x, t, s, labels, 1.5) - W * aux.cfg_forward(x, t, s, labels, 1.5)
        assert torch.allclose(twin.cfg_forward(x, t, s, labels, 1.5), hand, atol=1e-9)
    assert twin.T == net.T and twin.calls == 4


def test_xar_twin_combines_the_velocity_and_clears_both_caches():
    from neon.families.xar import XARModule
    from tests.test_xar import NET, random_xar

    net = random_xar(NET).eval()
    theta_s = perturbed(net.state_dict(), 5, 0.02)
    twin = build_twin(net, net.state_dict(), theta_s, W, XARModule.twin_outputs, XARModule.twin_state)
    ref, aux = copy.deepcopy(net), copy.deepcopy(net)
    aux.load_state_dict(theta_s)
    tokens, labels = torch.randn(4, NET["cluster_grid"] ** 2, NET["channels"]), torch.tensor([1, 2, 10, 10])
    t = torch.full((4,), 0.6)
    with torch.no_grad():
        hand = (1 + W) * ref.sample_step(tokens, labels, t, 0, True) - W * aux.sample_step(tokens, labels, t, 0, True)
        out = twin.sample_step(tokens, labels, t, 0, True)
    assert torch.allclose(out, hand, atol=1e-6)
    assert all(b.attn.cache is not None for b in twin._self_trained.encoder_blocks)  # θ_s kept its own cache
    twin.clear_cache()
    for copy_ in (twin._net, twin._self_trained):
        assert all(b.attn.cache is None for b in (*copy_.encoder_blocks, *copy_.decoder_blocks))


def test_ar_toy_twin_combines_each_gaussian_parameter():
    torch.manual_seed(0)
    module = ARToy().eval()
    twin, ref, aux = twin_of(module)
    x1 = torch.randn(5)
    with torch.no_grad():
        for got, r, a in zip(twin.second(x1), ref.second(x1), aux.second(x1), strict=True):
            assert torch.allclose(got, (1 + W) * r - W * a, atol=1e-6)
        mu, log_std = twin.first(5)
    assert torch.allclose(mu, (1 + W) * ref.mu1 - W * aux.mu1)
    assert log_std.shape == (5,)
    with module.sampling_through(twin):
        module.generate(list(range(5)), temperature_sampler)


def test_var_twin_combines_each_scales_logits_with_separate_caches():
    from neon.families.var import VARModule
    from neon.families.var.transformer import VARTransformer
    from tests.test_var import NET

    torch.manual_seed(0)
    net = VARTransformer(**NET).eval()
    theta_s = perturbed(net.state_dict(), 6, 0.02)
    twin = build_twin(net, net.state_dict(), theta_s, W, VARModule.twin_outputs, VARModule.twin_state)
    ref, aux = copy.deepcopy(net), copy.deepcopy(net)
    aux.load_state_dict(theta_s)
    labels, inputs = torch.tensor([1, 7]), torch.randn(2, 4, NET["vae_channels"])
    for model in (twin, ref, aux):
        model.set_caching(True)
    with torch.no_grad():
        for scale, given in ((0, None), (1, inputs)):  # the second scale attends to each network's own cache
            hand = (1 + W) * ref.scale_logits(labels, scale, given) - W * aux.scale_logits(labels, scale, given)
            assert torch.allclose(twin.scale_logits(labels, scale, given), hand, atol=1e-6)
    twin.set_caching(False)
    assert all(b.attn.cache is None and not b.attn.caching for b in (*twin._net.blocks, *twin._self_trained.blocks))
    assert twin.calls == 4


class NoTwin(ToyDiffusion):
    """A family that declares no output-space twin."""

    twin_outputs = ()


def test_compare_settings_are_refused_in_one_line(tmp_path: Path):
    from neon.core.errors import NeonError
    from neon.stages.front import check_settings
    from tests.helpers import task_config

    assert "neon.compare must be null or one of ['output'], got 'outputs'" in cli_error(["neon.compare=outputs"])
    cfg, _ = task_config(["experiment=toy2d", "neon.compare=output", f"model._target_={__name__}.NoTwin"], tmp_path)
    with pytest.raises(NeonError, match="the diffusion toy family has no output-space twin") as info:
        check_settings(cfg)
    assert "\n" not in str(info.value)
    assert "not a block-wise mapping" in cli_error(["experiment=toy2d", "neon.compare=output", "neon.w=null",
                                                    r"neon.w={model\.blocks: 1.0, default: 0.5}"])  # as the command replaces a list
    assert "not a block-wise mapping" in cli_error(["experiment=toy2d", "neon.compare=output", "neon.w=auto",
                                                    "neon.auto.groups={mid: blocks}"])


def test_neon_compare_output_scores_the_twin_beside_weight_space(tmp_path: Path, shared_cache: Path):
    summary = run_task([*TINY_TOY, "neon.compare=output", "preview_samples=0"], tmp_path, cache=shared_cache)
    out = summary["output_space"]
    weight = {p["w"]: p["fid"] for p in summary["w_curve"]}
    assert [p["w"] for p in out["w_curve"]] == list(weight) == ["0", "0.5", "1"]
    # the same θ_r, sampler and seeds: at w = 0 both are θ_r's samples, the same number
    assert out["w_curve"][0]["fid"] == weight["0"] == summary["fid_base"]
    assert all(p["fid_weight_space"] == weight[p["w"]] for p in out["w_curve"])
    assert out["w_curve"][1]["fid"] != weight["0.5"]
    assert out["fid_best"] == min(p["fid"] for p in out["w_curve"])
    # DDIM with the toy's 20 steps: 20 evaluations per image, twice that for the twin
    assert (out["weight_space"]["nfe_per_image"], out["nfe_per_image"]) == (20, 40)
    assert out["seconds_per_image"] > 0 and out["weight_space"]["seconds_per_image"] > 0
    assert out["budget_steps"] == summary["budget_steps"]
    # the twin's pick, scored on the held-out seeds like θ_neon's: at w = 0 it is θ_r's held-out figure
    assert out["fid_heldout"] != out["fid_best"]
    if out["w"] == 0.0:
        assert out["fid_heldout"] == summary["fid_base_heldout"]
    assert out["relative_difference_heldout"] == pytest.approx(
        out["fid_heldout"] / summary["fid_neon_heldout"] - 1)
    assert "output-space twin on the held-out seeds" in w_table(summary)
    assert summary_of(tmp_path)["output_space"] == out
    assert "FID output-space" in w_table(summary)
    assert next(csv.DictReader((tmp_path / "run" / "w_curve.csv").open()))["fid_output"] == repr(weight["0"])

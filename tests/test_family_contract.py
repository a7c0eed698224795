"""Every model config under conf/model/ against the family contract (neon.core.contract.NeonModule): it composes;
its family declares its samplers and refuses another family's in one line; it builds (tiny models fully,
release-size ones on the meta device); and the tiny ones have a finite loss with gradients, per-seed
deterministic and batch-independent generation, merge at w = 0 as the identity (and the output-space twin at
w = 0, where the family has one), export → reload equal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neon.analysis.output_twin import build_twin
from neon.core.contract import NeonModule, check_sampler, check_samplers, family_of
from neon.core.errors import NeonError
from neon.core.io import save_state_dict
from neon.core.seeding import StepNoise
from neon.launch.cli import CONF_DIR
from neon.merging.extrapolate import extrapolate
from neon.stages.run import model_spec
from tests.helpers import random_batch

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml"))
# built and run in full; every other model is release-size and is built on the meta device
TINY = {"toy2d", "ar2d", "edm_digits", "imm_tiny", "var_tiny", "xar_tiny", "diffusers_tiny", "example_flow", "lm_tiny"}
# small release networks without a VAE that need a checkpoint: tests/test_pixel_configs.py samples them
PIXELS = {"imm_pixels", "xar_pixels"}
# built from a local folder (tests/test_diffusers.py and tests/test_hf_causal_lm.py build and load tiny ones)
FOLDERS = {"diffusers", "hf_causal_lm"}
# fewer sampler steps where the family's sampler takes many (the contract does not depend on the count)
QUICK_SAMPLER = {"edm_digits": ["sampler.num_steps=4"], "xar_tiny": ["sampler.num_steps=4"],
                 "imm_tiny": ["sampler.num_steps=2"], "diffusers_tiny": ["sampler.num_inference_steps=4"]}


def compose_model(name: str, tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"model={name}", f"paths.cache_dir={tmp_path}", *overrides])


def test_every_model_config_is_covered():
    assert TINY <= set(MODELS) and len(MODELS) > len(TINY)


@pytest.mark.parametrize("name", MODELS)
def test_family_declares_its_samplers_and_refuses_the_others(name: str, tmp_path: Path):
    cfg = compose_model(name, tmp_path)
    family = family_of(cfg.model)
    assert family.family != NeonModule.family and family.samplers  # named, and with its own samplers
    assert set(family.samplers) <= set(SAMPLERS)  # each is a config under conf/sampler/
    check_sampler(cfg.model, cfg.sampler)  # the model config brings one of its family's samplers
    for own in family.samplers:
        check_sampler(cfg.model, OmegaConf.load(CONF_DIR / "sampler" / f"{own}.yaml"))
    for other in sorted(set(SAMPLERS) - set(family.samplers)):
        wrong = {"model": cfg.model, "metrics": cfg.metrics,
                 "sampler": OmegaConf.load(CONF_DIR / "sampler" / f"{other}.yaml")}
        with pytest.raises(NeonError) as err:
            check_samplers(wrong, {"model": name, "sampler": other})
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"sampler={other} is not a sampler of model {name} ({family.family})")
        assert f"use sampler={next(iter(family.samplers))}" in message


def test_a_wrong_evaluation_sampler_is_refused_too(tmp_path: Path):
    cfg = compose_model("var_tiny", tmp_path, "+metrics.sampler._target_=neon.families.edm.heun_sampler")
    with pytest.raises(NeonError, match="heun_sampler is not a sampler of model var_tiny \\(VAR\\)"):
        check_samplers(cfg, {"model": "var_tiny", "sampler": "var"})


class Unfinished(NeonModule):
    """A family that forgot `generate` and its samplers."""

    family = "unfinished"

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (2,)

    def loss(self, batch, noise):
        return torch.zeros(())


def test_a_family_lacking_a_required_member_is_one_line_naming_it():
    with pytest.raises(NeonError) as err:
        family_of({"_target_": f"{__name__}.Unfinished"})
    message = str(err.value)
    assert "\n" not in message and "lacks the family contract's generate, samplers" in message
    assert sorted(NeonModule.__abstractmethods__) == ["generate", "image_shape", "loss"]
    with pytest.raises(TypeError, match="generate"):  # built directly, Python names the member too
        Unfinished(torch.nn.Linear(2, 2))


def test_optional_capabilities_are_declared_not_inherited_by_default():
    from neon.core.contract import HasNativeExport, HasOutputTwin, HasReleaseSampling, release_sampling
    from neon.families.example_flow import ExampleFlow

    assert not issubclass(ExampleFlow, (HasOutputTwin, HasReleaseSampling, HasNativeExport))
    module = ExampleFlow({"channels": 1, "resolution": 8, "num_classes": 0, "hidden": 8})
    with pytest.raises(NeonError, match="example flow has no release-mode sampling: use sample.rng=per_seed"):
        release_sampling(module)


def test_a_model_target_that_is_no_family_is_one_line(tmp_path: Path):
    with pytest.raises(NeonError, match="'torch.nn.Linear' is not a model family"):
        family_of({"_target_": "torch.nn.Linear"})
    with pytest.raises(NeonError, match="cannot be imported"):
        family_of({"_target_": "neon.families.nothing.Here"})


@pytest.mark.parametrize("name", sorted(set(MODELS) - TINY - PIXELS - FOLDERS))
def test_release_size_model_builds_on_the_meta_device(name: str, tmp_path: Path):
    cfg = compose_model(name, tmp_path)
    family = family_of(cfg.model)
    network = OmegaConf.to_container(cfg.model.network, resolve=True)
    with torch.device("meta"):
        net = family.build_net(network)
        parts = [net]
        if "latent" in cfg.model:
            parts.append(instantiate(cfg.model.latent))
        if "vae" in cfg.model:
            from neon.families.var.vqvae import VQVAE

            parts.append(VQVAE(**{"patch_nums": network["patch_nums"], **cfg.model.vae}))
    for part in parts:  # nothing is allocated but fixed tables (IMM's sin-cos positions)
        params = list(part.parameters())
        allocated = sum(p.numel() for p in params if not p.is_meta)
        assert params and allocated < 0.01 * sum(p.numel() for p in params)
    classes = network.get("num_classes", network.get("label_dim"))
    assert classes == getattr(net, "num_classes", getattr(net, "label_dim", None))


def build_tiny(name: str, tmp_path: Path) -> tuple[NeonModule, object]:
    cfg = compose_model(name, tmp_path, *QUICK_SAMPLER.get(name, []))
    if cfg.model.get("vae_pretrain"):
        cfg.model.vae_pretrain.steps = 2  # the tokenizer is trained on first use: keep it short here
    torch.manual_seed(0)
    module = instantiate(model_spec(cfg))
    return module, cfg


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_keeps_the_contract(name: str, tmp_path: Path):
    module, cfg = build_tiny(name, tmp_path)
    assert isinstance(module, family_of(cfg.model))
    assert all(isinstance(d, int) and d > 0 for d in module.image_shape)
    assert isinstance(module.num_classes, int) and module.num_classes >= 0

    # the loss: finite, with finite gradients that reach θ
    module.train()
    loss = module.loss(random_batch(module), StepNoise.single(4, seed=3))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    module.zero_grad(set_to_none=True)

    # generation: one sample per seed, the same whatever else is in the batch
    module.eval()
    sampler = instantiate(cfg.sampler)
    x, labels = module.generate([5, 6, 7], sampler)
    assert tuple(x.shape) == (3, *module.image_shape) and torch.isfinite(x).all()
    assert (labels is None) == (module.num_classes == 0)
    again, _ = module.generate([5, 6, 7], sampler)
    assert torch.equal(x, again)
    alone, alone_labels = module.generate([6], sampler)
    reordered, _ = module.generate([7, 6], sampler)
    assert torch.allclose(alone[0], x[1], atol=1e-5) and torch.allclose(reordered[1], x[1], atol=1e-5)
    if labels is not None:
        assert torch.equal(alone_labels[0], labels[1])
    assert not torch.equal(x[0], x[1])  # different seeds, different samples

    # merge at w = 0 is θ_r itself, bit for bit, and samples as θ_r does
    theta_r = {k: v.clone() for k, v in module.neon_weights().items()}
    theta_s = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in theta_r.items()}
    merged = extrapolate(theta_r, theta_s, 0.0)
    assert merged.keys() == theta_r.keys() and all(torch.equal(merged[k], theta_r[k]) for k in theta_r)
    module.load_neon_weights(merged)
    assert torch.equal(module.generate([5, 6, 7], sampler)[0], x)

    # the output-space twin (where the family has one) at w = 0 samples as θ_r does, bit for bit
    twin_outputs, twin_state = getattr(module, "twin_outputs", ()), getattr(module, "twin_state", ())
    for name in (*twin_outputs, *twin_state):
        assert callable(getattr(module.own_sampling_net, name)), name
    if twin_outputs:
        twin = build_twin(module.own_sampling_net, theta_r, theta_s, 0.0, twin_outputs, twin_state)
        with module.sampling_through(twin):
            assert torch.equal(module.generate([5, 6, 7], sampler)[0], x)
        assert twin.calls > 0 and twin.calls % 2 == 0

    # export → reload: the weights and the config with the family's overrides rebuild the same sampler
    path = save_state_dict(module.neon_weights(), tmp_path / "model.safetensors")
    spec = {**model_spec(cfg), **module.config_overrides()}
    reloaded = instantiate(spec)
    reloaded.load_checkpoint(path)
    reloaded.eval()
    assert all(torch.equal(reloaded.neon_weights()[k], v) for k, v in module.neon_weights().items())
    assert torch.equal(reloaded.generate([5, 6, 7], sampler)[0], x)


@pytest.mark.parametrize("name", sorted(TINY))
def test_loading_weights_keeps_an_eval_module_in_eval_mode(name: str, tmp_path: Path):
    """A module put in eval mode stays there through load_checkpoint, also where the checkpoint brings its own
    architecture (an EDM snapshot of another shape, with dropout): it samples as a fresh load does."""
    module, cfg = build_tiny(name, tmp_path)
    if name == "edm_digits":  # a snapshot of another width and depth, with dropout live in training mode
        from tests.edm_snapshot import TINY_DDPMPP, write_snapshot

        network = {**TINY_DDPMPP, **{k: cfg.model.network[k] for k in ("img_resolution", "img_channels", "label_dim")}}
        path = tmp_path / "network-snapshot.pkl"
        write_snapshot(path, network)
    else:
        path = save_state_dict(module.neon_weights(), tmp_path / "model.safetensors")
    module.eval()
    module.load_checkpoint(path)
    assert [n for n, m in module.named_modules() if m.training] == []

    fresh, _ = build_tiny(name, tmp_path)
    fresh.load_checkpoint(path)
    fresh.eval()
    sampler = instantiate(cfg.sampler)
    if name == "edm_digits":
        assert fresh.network_kwargs["dropout"] > 0 and fresh.network_kwargs != dict(cfg.model.network)
    assert torch.equal(module.generate([3, 4], sampler)[0], fresh.generate([3, 4], sampler)[0])

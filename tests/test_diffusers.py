"""The diffusers family: a tiny pipeline built and saved here loads as θ_r, samples exactly as the pipeline's
own call with per-image generators, trains with its scheduler's objective, and θ goes back out as a
pipeline folder diffusers loads; bad folders are one-line errors."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import diffusers
import pytest
import torch

from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families.diffusers_family import DiffusersModule, scheduler_sampler
from neon.weights.release_export import folder_sha256


def tiny_unet(classes: int | None = None, **overrides):
    torch.manual_seed(0)
    settings = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                    norm_num_groups=4, num_class_embeds=classes)
    return diffusers.UNet2DModel(**{**settings, **overrides})


def save_pipeline(folder: Path, pipeline_class: str = "DDPMPipeline", classes: int | None = None,
                  prediction: str = "epsilon", shard: int | None = None, **unet) -> Path:
    """A tiny pipeline folder, as save_pretrained writes it."""
    if prediction == "flow":
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=100, shift=3.0)
    else:
        scheduler_cls = diffusers.DDIMScheduler if pipeline_class == "DDIMPipeline" else diffusers.DDPMScheduler
        scheduler = scheduler_cls(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                  prediction_type=prediction)
    pipe = getattr(diffusers, pipeline_class)(unet=tiny_unet(classes, **unet), scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    return folder


def sampler(**kwargs):
    return partial(scheduler_sampler, **kwargs)


@pytest.mark.parametrize("pipeline_class, eta", [("DDPMPipeline", None), ("DDIMPipeline", 0.0),
                                                 ("DDIMPipeline", 0.7)])
def test_samples_equal_the_pipelines_own_call_per_seed(tmp_path: Path, pipeline_class: str, eta):
    folder = save_pipeline(tmp_path / "pipe", pipeline_class)
    module = DiffusersModule(pretrained=str(folder), quantize=False).eval()
    seeds, steps = [3, 11, 5], 6
    kwargs = {"num_inference_steps": steps, **({"eta": eta} if eta is not None else {})}
    with torch.no_grad():
        ours, labels = module.generate(seeds, sampler(**kwargs))
        alone, _ = module.generate([11], sampler(**kwargs))
    pipe = getattr(diffusers, pipeline_class).from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
                  output_type="pt", **kwargs).images
    assert labels is None
    assert torch.allclose((ours + 1) / 2, theirs, atol=1e-6)
    # an image depends on its seed only, not on its batch (up to the convolutions' float rounding, which
    # varies with the batch size)
    assert torch.allclose(alone[0], ours[1], atol=1e-5)


def test_class_conditional_sampling_is_per_seed_and_checks_labels(tmp_path: Path):
    module = DiffusersModule(pretrained=str(save_pipeline(tmp_path / "pipe", classes=10)), quantize=True).eval()
    with torch.no_grad():
        x, labels = module.generate([1, 2, 3, 4], sampler(num_inference_steps=3))
        given, same = module.generate([2], sampler(num_inference_steps=3), labels=labels[1:2])
    assert module.num_classes == 10 and labels.shape == (4,)
    assert torch.allclose(given[0], x[1], atol=1e-5) and same.tolist() == [labels[1].item()]
    grid = (x + 1) * 127.5
    assert torch.allclose(grid, grid.round(), atol=1e-4)  # on the 8-bit grid
    unconditional = DiffusersModule(pretrained=str(save_pipeline(tmp_path / "u")))
    with pytest.raises(NeonError, match="unconditional .* but class labels were given"):
        unconditional.generate([0], sampler(num_inference_steps=2), labels=torch.tensor([1]))


def test_a_unets_null_class_guides_sampling_and_takes_the_dropped_labels(tmp_path: Path):
    folder = str(save_pipeline(tmp_path / "pipe", "DDIMPipeline", classes=4))
    module = DiffusersModule(pretrained=folder, null_class=3, quantize=False).eval()
    assert module.num_classes == 3 and module.null_label == 3 and module.label_dropout == 0.1
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        ours, _ = module.generate([5, 6], sampler(num_inference_steps=3, guidance_scale=2.5), labels=labels)
        # by hand: DDIM (η 0) over ε_null + g·(ε_label − ε_null), from the same initial noise
        scheduler = diffusers.DDIMScheduler.from_config(module.scheduler.config)
        scheduler.set_timesteps(3)
        x = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
        for t in scheduler.timesteps:
            cond = module.net(x, t, class_labels=labels).sample
            null = module.net(x, t, class_labels=torch.full_like(labels, 3)).sample
            x = scheduler.step(null + 2.5 * (cond - null), t, x).prev_sample
    assert torch.allclose(ours, (x / 2 + 0.5).clamp(0, 1) * 2 - 1, atol=1e-5)
    # label dropout 1 trains every image as the null class
    batch, noise = {"x": torch.rand(3, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2])}, (7, 1)
    module.label_dropout = 1.0
    dropped = module.loss(batch, StepNoise.single(3, *noise))
    module.label_dropout = 0.0
    as_null = module.loss({**batch, "label": torch.full((3,), 3)}, StepNoise.single(3, *noise))
    assert dropped.item() != 0 and dropped.item() == pytest.approx(as_null.item(), rel=1e-6)
    with pytest.raises(NeonError, match=r"model.null_class=2: .* last row .*num_class_embeds 4.*i.e. 3"):
        DiffusersModule(pretrained=folder, null_class=2)
    without = DiffusersModule(pretrained=folder).eval()
    with pytest.raises(NeonError, match="no null class to guide with"):
        without.generate([0], sampler(num_inference_steps=2, guidance_scale=2.0))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_loss_is_the_schedulers_objective(tmp_path: Path, prediction: str):
    module = DiffusersModule(pretrained=str(save_pipeline(tmp_path / "p", classes=3, prediction=prediction)))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    labels = torch.tensor([0, 2, 1, 0])
    loss = module.loss({"x": x0, "label": labels}, StepNoise.single(4, seed=5, step=2))
    # by hand, from the same draws: t first, then ε
    noise = StepNoise.single(4, seed=5, step=2)
    t, eps = noise.randint(100), noise.randn(1, 8, 8)
    abar = module.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    target = {"epsilon": eps, "sample": x0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]
    with torch.no_grad():
        expected = (module.net(xt, t, class_labels=labels).sample - target).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in module.net.parameters() if p.requires_grad)


def test_theta_goes_back_as_a_pipeline_diffusers_loads(tmp_path: Path):
    folder = save_pipeline(tmp_path / "pipe", shard=60_000)  # sharded input stays sharded
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    module = DiffusersModule(pretrained=str(folder), quantize=False).eval()
    state = {k: v + 0.01 for k, v in module.neon_weights().items()}
    out = module.write_native(state, tmp_path / "theta_neon_pipeline")
    assert (out / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert not list(tmp_path.glob(".theta_neon_pipeline.*"))  # the temporary folder was renamed
    pipe = diffusers.DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert type(pipe).__name__ == "DDPMPipeline"
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, state[k])
    pipe.set_progress_bar_config(disable=True)
    image = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                 output_type="pt").images
    assert image.shape == (1, 1, 8, 8) and torch.isfinite(image).all()
    reread = DiffusersModule(pretrained=str(out))
    assert all(torch.equal(v, state[k]) for k, v in reread.neon_weights().items())


def test_a_module_built_from_settings_exports_a_ddpm_pipeline(tmp_path: Path):
    module = DiffusersModule(network={"sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
                                      "block_out_channels": [8, 16], "norm_num_groups": 4,
                                      "down_block_types": ["DownBlock2D", "DownBlock2D"],
                                      "up_block_types": ["UpBlock2D", "UpBlock2D"]},
                             scheduler={"class_name": "DDPMScheduler", "num_train_timesteps": 50})
    out = module.write_native(module.neon_weights(), tmp_path / "out")
    pipe = diffusers.DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler" and pipe.scheduler.config.num_train_timesteps == 50


def test_export_writes_the_pipeline_with_its_model_card(tmp_path: Path):
    from neon.core.io import digest_state_dict, file_sha256
    from tests.helpers import run_task

    folder = save_pipeline(tmp_path / "pipe", shard=60_000)
    summary = run_task(["task=export", "model=diffusers", f"model.pretrained={folder}"], tmp_path)
    out = Path(summary["pipeline"])
    card = (out / "README.md").read_text()
    assert Path(summary["pipeline_card"]) == out / "README.md" and card.startswith("---\nlibrary_name: diffusers")
    shards = sorted((out / "unet").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1
    for shard in shards:  # every weight file, by its path in the folder and its digest
        assert f"| `unet/{shard.name}` | `{file_sha256(shard)}` |" in card
    assert f"Exported from `{folder}` (sha256 `{folder_sha256(folder)}`)" in card
    module = DiffusersModule(pretrained=str(out))
    assert f"`{digest_state_dict(module.neon_weights())}`" in card
    assert diffusers.DiffusionPipeline.from_pretrained(out, local_files_only=True) is not None


def test_the_tiny_config_builds_through_hydra_and_exports(tmp_path: Path):
    from hydra.utils import instantiate

    from neon.stages.run import model_spec
    from tests.helpers import compose_config

    module = instantiate(model_spec(compose_config(["model=diffusers_tiny"])))  # nested settings as configs
    out = module.write_native(module.neon_weights(), tmp_path / "out")
    pipe = diffusers.DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet.config.num_class_embeds == 10 and list(pipe.unet.config.block_out_channels) == [16, 32]


def _edit_index(folder: Path, **entries) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index.update(entries)
    (folder / "model_index.json").write_text(json.dumps(index))


def test_bad_folders_are_one_line_errors(tmp_path: Path):
    def refused(path, match: str, **kwargs):
        with pytest.raises(NeonError, match=match) as err:
            DiffusersModule(pretrained=str(path), **kwargs)
        assert "\n" not in str(err.value)

    refused(tmp_path / "nope", "is not a local folder: give the folder")
    refused("google/ddpm-cifar10-32", r"a Hub id is not downloaded")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "model index .*model_index.json' does not exist")
    good = save_pipeline(tmp_path / "good")
    dit = tmp_path / "dit"
    shutil.copytree(good, dit)
    _edit_index(dit, _class_name="StableDiffusionPipeline")
    refused(dit, "holds a StableDiffusionPipeline, which is not supported: use a folder of one of DDIMPipeline, "
                 "DDPMPipeline, DiTPipeline")
    euler = tmp_path / "euler"
    shutil.copytree(good, euler)
    _edit_index(euler, scheduler=["diffusers", "EulerDiscreteScheduler"])
    refused(euler, "scheduler EulerDiscreteScheduler has no training objective here")
    learned = save_pipeline(tmp_path / "learned", out_channels=2)
    refused(learned, "predicts 2 channels for 1 input channels")
    with pytest.raises(NeonError, match="DDPMScheduler takes no eta"):
        module = DiffusersModule(pretrained=str(good))
        module.generate([0], sampler(num_inference_steps=2, eta=0.5))


@pytest.mark.slow
def test_neon_runs_end_to_end_on_a_pipeline_folder(tmp_path: Path):
    from tests.helpers import run_task, summary_of

    folder = save_pipeline(tmp_path / "pipe", classes=10)
    run_task(["model=diffusers", f"model.pretrained={folder}", "neon.n_synthetic=64", "neon.budget_steps=2",
              "neon.w=[0.0,1.0]", "neon.control=false", "metrics.num_samples=80", "metrics.block_size=80",
              "metrics.noise_seed_offset=null", "sampler.num_inference_steps=3", "preview_samples=0",
              "trainer.enable_progress_bar=false"], tmp_path)
    summary = summary_of(tmp_path)
    assert summary["family"] == "neon.families.diffusers_family.DiffusersModule"
    assert summary["artifacts"]["theta_r"] == str(folder)
    pipe = diffusers.DiffusionPipeline.from_pretrained(summary["artifacts"]["theta_neon_pipeline"], local_files_only=True)
    from safetensors.torch import load_file

    theta_neon = load_file(tmp_path / "run" / "theta_neon.safetensors")
    assert all(torch.equal(v, theta_neon[k]) for k, v in pipe.unet.state_dict().items())
    # its model card: the diffusers metadata, where θ_neon came from (θ_r the folder, by digest), how it scored
    card = Path(summary["artifacts"]["theta_neon_card"]).read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "# θ_neon: diffusers" in card
    assert f"`{folder}` (sha256 `{folder_sha256(folder)}`)" in card and f"| θ_s | `{summary['artifacts']['theta_s']['2']}`" in card
    assert "merge_recipe.yaml" not in card and "Written by `neon` (task=neon)" in card


def test_two_sharded_pipeline_networks_merge_by_streaming(tmp_path: Path):
    from safetensors.torch import load_file, save_file

    from neon.merging.extrapolate import extrapolate, merge_files
    from neon.weights.readers import open_weights

    base = save_pipeline(tmp_path / "base", shard=60_000)
    aux = save_pipeline(tmp_path / "aux", shard=60_000)
    for p in aux.glob("unet/diffusion_pytorch_model-*.safetensors"):  # a different θ_s
        save_file({k: v * 0.9 for k, v in load_file(p).items()}, p)
    index = "unet/diffusion_pytorch_model.safetensors.index.json"
    seen = []
    out = merge_files(base / index, aux / index, 0.5, tmp_path / "m.safetensors", on_tensor=seen.append)
    with open_weights(base / index) as b, open_weights(aux / index) as a:
        expected = extrapolate({k: b[k] for k in b.keys()}, {k: a[k] for k in a.keys()}, 0.5)
    merged = load_file(out)
    assert len(seen) == len(expected) and all(torch.equal(merged[k], v) for k, v in expected.items())


def save_dit_pipeline(folder: Path, latent_channels: int = 4) -> Path:
    """A tiny DiTPipeline folder: a 1-block DiT with a learned variance over 4×4×4 latents of an 8×8 RGB VAE."""
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                                  out_channels=8, num_layers=1, sample_size=4, patch_size=2,
                                                  num_embeds_ada_norm=1000)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=4, sample_size=8)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100)
    diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_dit_samples_equal_the_pipelines_own_call(tmp_path: Path, guidance: float):
    folder = save_dit_pipeline(tmp_path / "dit")
    module = DiffusersModule(pretrained=str(folder), quantize=False).eval()
    assert module.image_shape == (3, 8, 8) and module.latent_shape == (4, 4, 4) and module.num_classes == 1000
    seeds, labels = [4, 9], torch.tensor([7, 123])
    with torch.no_grad():
        ours, used = module.generate(seeds, sampler(num_inference_steps=4, guidance_scale=guidance), labels=labels)
    pipe = diffusers.DiTPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(class_labels=labels.tolist(), guidance_scale=guidance, num_inference_steps=4, output_type="pt",
                  generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    assert used.tolist() == labels.tolist()
    assert torch.allclose((ours + 1) / 2, theirs, atol=1e-6)


def test_a_vae_whose_latents_do_not_fit_the_network_is_one_line(tmp_path: Path):
    folder = save_dit_pipeline(tmp_path / "dit", latent_channels=3)
    with pytest.raises(NeonError, match=r"the VAE \(vae/\) makes latents of 3 channels but the network takes 4"):
        DiffusersModule(pretrained=str(folder))


def test_dit_trains_in_the_vae_latents_with_its_own_label_dropout(tmp_path: Path):
    module = DiffusersModule(pretrained=str(save_dit_pipeline(tmp_path / "dit")), label_dropout=0.5)
    vae_before = {k: v.clone() for k, v in module.vae.state_dict().items()}
    batch = {"x": torch.rand(6, 3, 8, 8) * 2 - 1, "label": torch.arange(6)}
    module.train()
    # the DiT's own class dropout (its LabelEmbedding's, from the global generator) is off: the module drops
    # labels to the DiT's null class 1000 at model.label_dropout, from the step's noise
    tables = [m for m in module.net.modules() if isinstance(m, diffusers.models.embeddings.LabelEmbedding)]
    assert tables and all(t.dropout_prob == 0 for t in tables)
    seen = []
    hook = module.net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["class_labels"].clone()),
                                                with_kwargs=True)
    with torch.no_grad():
        for rate in (0.0, 0.5, 1.0, 0.5):
            module.label_dropout = rate
            module.loss(batch, StepNoise.single(6, seed=1))
    hook.remove()
    none, half, every, again = (labels.tolist() for labels in seen)
    assert none == list(range(6)) and every == [1000] * 6
    assert all(label in (i, 1000) for i, label in enumerate(half)) and 0 < half.count(1000) < 6 and again == half
    first = module.loss(batch, StepNoise.single(6, seed=1))
    assert torch.equal(first, module.loss(batch, StepNoise.single(6, seed=1)))  # every draw from the step
    first.backward()
    assert all(torch.equal(v, module.vae.state_dict()[k]) for k, v in vae_before.items())
    assert all(p.grad is None for p in module.vae.parameters())  # the VAE is frozen, and not θ
    assert not any(k.startswith("vae.") for k in module.neon_weights())
    out = module.write_native(module.neon_weights(), tmp_path / "theta_neon_pipeline")
    assert type(diffusers.DiffusionPipeline.from_pretrained(out, local_files_only=True)).__name__ == "DiTPipeline"


def test_a_missing_pipeline_folder_is_named_on_the_command_line():
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    from neon.core.errors import user_error
    from neon.stages.run import model_spec
    from tests.helpers import compose_config

    cfg = compose_config(["model=diffusers"])
    for ask in (lambda: cfg.model.checkpoint, lambda: model_spec(cfg)):  # directly, and through the interpolation
        with pytest.raises((MissingMandatoryValue, InterpolationToMissingValueError)) as err:
            ask()
        assert user_error(err.value) == "model.pretrained must be set on the command line (e.g. model.pretrained=PATH)"


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "sigma_sqrt", "cosmap"])
def test_flow_weighting_schemes_are_the_diffusers_scripts(tmp_path: Path, scheme: str):
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    folder = save_pipeline(tmp_path / "flow", prediction="flow")
    module = DiffusersModule(pretrained=str(folder), quantize=False, flow_weighting={"weighting_scheme": scheme})
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = module.loss({"x": x0}, StepNoise.single(4, seed=3))
    # diffusers' own density and weight functions, fed the step noise's generator stream
    generator = StepNoise.single(4, seed=3).generator
    u = compute_density_for_timestep_sampling(scheme, 4, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                              generator=generator)
    index = (u * 100).long()
    eps = torch.randn(4, 1, 8, 8, generator=generator)
    sigma = module.scheduler.sigmas[index].view(-1, 1, 1, 1)
    weight = compute_loss_weighting_for_sd3(scheme, sigma)
    with torch.no_grad():
        pred = module.net((1 - sigma) * x0 + sigma * eps, module.scheduler.timesteps[index]).sample
    expected = torch.mean((weight * (pred - (eps - x0)) ** 2).reshape(4, -1), 1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(NeonError, match="weighting_scheme=cosmap is for flow-matching schedulers"):
        DiffusersModule(pretrained=str(save_pipeline(tmp_path / "ddpm")), flow_weighting={"weighting_scheme": "cosmap"})
    with pytest.raises(NeonError, match="'sqrt' is not one of none, logit_normal"):
        DiffusersModule(pretrained=str(folder), flow_weighting={"weighting_scheme": "sqrt"})


def test_flow_matching_scheduler_trains_on_the_velocity_and_samples_as_the_pipeline(tmp_path: Path):
    folder = save_pipeline(tmp_path / "flow", prediction="flow", classes=3)
    module = DiffusersModule(pretrained=str(folder), quantize=False)
    x0, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 2, 1, 0])
    loss = module.loss({"x": x0, "label": labels}, StepNoise.single(4, seed=2))
    noise = StepNoise.single(4, seed=2)
    index, eps = noise.randint(100), noise.randn(1, 8, 8)
    sigma = module.scheduler.sigmas[index].view(-1, 1, 1, 1)  # the shifted training schedule
    with torch.no_grad():
        pred = module.net((1 - sigma) * x0 + sigma * eps, sigma.flatten() * 100, class_labels=labels).sample
    assert loss.item() == pytest.approx((pred - (eps - x0)).pow(2).mean().item(), rel=1e-5)
    # sampling: the pipeline's loop (Euler steps of the flow), here with labels the pipeline cannot pass
    unconditional = save_pipeline(tmp_path / "flow_u", prediction="flow")
    module = DiffusersModule(pretrained=str(unconditional), quantize=False).eval()
    with torch.no_grad():
        ours, _ = module.generate([1, 8], sampler(num_inference_steps=5))
    pipe = diffusers.DDPMPipeline.from_pretrained(unconditional, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, generator=[torch.Generator().manual_seed(s) for s in (1, 8)], num_inference_steps=5,
                  output_type="pt").images
    assert torch.allclose((ours + 1) / 2, theirs, atol=1e-6)

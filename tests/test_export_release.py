"""`task=export task.format=release`: the family's release layout (the flat `.pth` VAR's and xAR's official
scripts load, safetensors for all), a model card, and for a Neon run's θ_neon a task-arithmetic merge recipe
that remakes it from θ_r and θ_s."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from neon.core.errors import NeonError
from neon.core.io import save_state_dict
from neon.families.var.transformer import VARTransformer
from neon.families.xar.transformer import XARTransformer
from neon.launch.cli import CONF_DIR
from neon.merging.extrapolate import extrapolate
from neon.tasks.export import run_export
from neon.weights.readers import read_weights
from tests import test_var, test_xar
from tests.edm_snapshot import write_snapshot

W = 0.75


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.output_dir={tmp_path / 'export'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _var_arch() -> list[str]:
    return [f"model.{group}.{k}={v}".replace(" ", "") for group, d in (("network", test_var.NET),
                                                                     ("vae", test_var.VAE)) for k, v in d.items()]


def _fine_tuned(theta_r: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """θ_s: θ_r moved a little wherever it is a finite float (masks and integer buffers as they are)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() and bool(torch.isfinite(v).all())
            else v.clone() for k, v in theta_r.items()}


def write_neon_run(tmp_path: Path, *overrides: str, theta_r: Path, model_name: str) -> Path:
    """A finished Neon run folder as task=neon leaves it: .hydra/config.yaml and hydra.yaml, summary.json with the
    pipeline's keys, theta_neon.safetensors = (1 + w)·θ_r − w·θ_s, θ_s in a cache folder."""
    run = tmp_path / "neon_run"
    (run / ".hydra").mkdir(parents=True)
    cfg = _cfg(tmp_path, "task=neon", f"model={model_name}", *overrides, f"model.checkpoint={theta_r}")
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"model": model_name}}}}),
                   run / ".hydra" / "hydra.yaml")
    base = read_weights(theta_r)
    theta_s = save_state_dict(_fine_tuned(base), tmp_path / "cache" / "finetune" / "k1" / "theta_s.safetensors")
    save_state_dict(extrapolate(base, load_file(theta_s), W), run / "theta_neon.safetensors")
    summary = {
        "task": "neon", "family": cfg.model._target_, "fid_base": 10.0, "fid_neon": 8.5, "w": W, "budget_steps": 40,
        "w_curve": [{"w": "0", "fid": 10.0}, {"w": "0.75", "fid": 8.5}, {"w": "1.5", "fid": 9.0}],
        "grid": [], "fid_noise": None, "control": None, "auto_w": None, "n_synthetic": 64,
        "synthetic_source": "theta_r", "sampler": {"cfg": 1.5, "top_k": 8}, "eval_sampler": {"cfg": 1.5, "top_k": 8},
        "metric": {"num_samples": 128, "seeds": "0-127", "extractor": {"_target_": "x"}, "metrics": ["fid"],
                   "reference": "data"},
        "artifacts": {"theta_r": str(theta_r), "synthetic": "streamed", "theta_s": {"40": str(theta_s)},
                      "theta_neon": str(run / "theta_neon.safetensors")},
        "seed": 0,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _task_arithmetic(recipe: dict) -> dict[str, torch.Tensor]:
    """What a task-arithmetic merge tool computes from the recipe: base + λ·Σ weight·(model − base), keeping the
    base where the difference is not a number to scale (integer buffers, −inf masks)."""
    base = read_weights(recipe["base_model"])
    lam, out = recipe["parameters"]["lambda"], dict(base)
    assert recipe["parameters"]["normalize"] is False
    for entry in recipe["models"]:
        other, weight = read_weights(entry["model"]), entry["parameters"]["weight"]
        for k, b in base.items():
            if b.is_floating_point() and bool(torch.isfinite(b).all()):
                out[k] = out[k] + lam * weight * (other[k] - b)
    return out


def test_var_neon_run_exports_the_release_pth_card_and_recipe(tmp_path: Path):
    var_path, vae_path = test_var.write_release_files(tmp_path / "release")
    run = write_neon_run(tmp_path, *_var_arch(), f"model.vae_checkpoint={vae_path}", theta_r=var_path,
                         model_name="var_tiny")
    summary = run_export(_cfg(tmp_path, "task=export", "task.format=release", f"task.run={run}"))
    out = tmp_path / "export"
    theta_neon = load_file(run / "theta_neon.safetensors")

    # the official loader: torch.load (weights only) and load_state_dict(strict=True) into the release's network
    pth = torch.load(out / "theta_neon.pth", map_location="cpu", weights_only=True)
    VARTransformer(**test_var.NET).load_state_dict(pth, strict=True)
    assert set(pth) == set(theta_neon) and all(torch.equal(pth[k], theta_neon[k]) for k in pth)
    exported = load_file(out / "theta_neon.safetensors")
    assert all(torch.equal(exported[k], theta_neon[k]) for k in theta_neon)

    # the recipe: task arithmetic with base θ_r and θ_s at weight −w remakes θ_neon; its digests are the files'
    text = (out / "merge_recipe.yaml").read_text()
    recipe = yaml.safe_load(text)
    theta_s = Path(summary["recipe"]["theta_s"])
    assert recipe["merge_method"] == "task_arithmetic" and recipe["base_model"] == str(var_path)
    assert recipe["models"] == [{"model": str(theta_s), "parameters": {"weight": -W}}]
    assert recipe["dtype"] == "float32"
    assert f"sha256 {_sha(var_path)}" in text and f"sha256 {_sha(theta_s)}" in text
    assert "(1 + w)·θ_r − w·θ_s" in text and "w = 0.75" in text
    remade = _task_arithmetic(recipe)
    for k, v in theta_neon.items():
        torch.testing.assert_close(remade[k], v, rtol=0, atol=1e-6, equal_nan=False)
    assert bool(torch.isneginf(remade["attn_bias_for_masking"]).any())  # the mask kept, not NaN

    # the card: base and its digest, S sampler and size, budget, w, the metric with seeds and reference, w-curve
    card = (out / "README.md").read_text()
    for needle in (str(var_path), _sha(var_path), _sha(theta_s), "64 samples", '"top_k": 8', "40 optimizer steps",
                   "| w | 0.75 |", "seeds 0-127", "`data`", "θ_r 10.0 → θ_neon 8.5", "model=var_tiny",
                   "theta_neon.pth", _sha(out / "theta_neon.pth"), _sha(out / "theta_neon.safetensors"),
                   "load_state_dict(strict=True)"):
        assert needle in card, needle
    assert re.search(r"\|\s+1\.5 \|\s+9 \|", card)  # the w-curve's rows
    assert summary["files"]["theta_neon.pth"] == _sha(out / "theta_neon.pth")
    assert summary["recipe"]["theta_r_sha256"] == _sha(var_path) and summary["run"] == str(run)


def test_xar_checkpoint_exports_the_flat_pth_it_was_read_from(tmp_path: Path):
    # a training checkpoint {'model', 'model_ema', 'args', ...} out; the flat dict eval.py loads in
    ckpt_path, vae_path = test_xar.write_release_files(tmp_path / "release")
    flat = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    train = tmp_path / "checkpoint-last.pth"
    torch.save({"model": flat, "model_ema": flat, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}, train)
    arch = [f"model.network.{k}={v}".replace(" ", "") for k, v in test_xar.NET.items()]
    arch += [f"model.latent.{k}={v}".replace(" ", "") for k, v in test_xar.VAE.items()]
    summary = run_export(_cfg(tmp_path, "task=export", "task.format=release", "model=xar_b", *arch,
                              "model.latent.scale_factor=1.0", f"model.checkpoint={train}",
                              f"model.vae_checkpoint={vae_path}"))
    out = tmp_path / "export"
    pth = torch.load(out / "model.pth", map_location="cpu", weights_only=True)
    XARTransformer(**test_xar.NET).load_state_dict(pth, strict=True)
    assert all(torch.equal(pth[k], flat[k]) for k in flat) and set(pth) == set(flat)
    card = (out / "README.md").read_text()
    assert _sha(train) in card and "Not a Neon run" in card and "eval.py" in card
    assert not (out / "merge_recipe.yaml").exists() and summary["format"] == "release"


def test_families_without_a_flat_release_get_safetensors_and_the_note(tmp_path: Path):
    snap = tmp_path / "network-snapshot-000100.pkl"
    write_snapshot(snap)
    summary = run_export(_cfg(tmp_path, "task=export", "task.format=release", "model=edm_digits",
                              f"model.checkpoint={snap}"))
    out = tmp_path / "export"
    assert not list(out.glob("*.pth")) and (out / "model.safetensors").is_file()
    assert "persistence pickles" in (out / "README.md").read_text()
    assert set(summary["files"]) == {"model.safetensors", "model.yaml"}


def test_bad_format_and_run_folders_are_one_line_errors(tmp_path: Path):
    with pytest.raises(NeonError, match=r"task.format must be one of \['neon', 'release'\], got 'pth'"):
        run_export(_cfg(tmp_path, "task=export", "task.format=pth"))
    with pytest.raises(NeonError, match="is not a folder"):
        run_export(_cfg(tmp_path, "task=export", f"task.run={tmp_path / 'nowhere'}"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "summary.json").write_text("{}")
    with pytest.raises(NeonError, match=r"has no \.hydra/config\.yaml"):
        run_export(_cfg(tmp_path, "task=export", f"task.run={tmp_path / 'half'}"))


@pytest.mark.slow
def test_a_real_toy_run_exports_with_its_recorded_provenance(tiny_toy_run: Path, tmp_path: Path):
    run = tiny_toy_run / "run"
    recorded = json.loads((run / "summary.json").read_text())
    summary = run_export(_cfg(tmp_path, "task=export", "task.format=release", f"task.run={run}"))
    out = tmp_path / "export"
    theta_neon = load_file(run / "theta_neon.safetensors")
    exported = load_file(out / "theta_neon.safetensors")
    assert set(exported) == set(theta_neon) and all(torch.equal(exported[k], theta_neon[k]) for k in theta_neon)
    assert not list(out.glob("*.pth"))  # the toy has no release of its own
    theta_s = recorded["artifacts"]["theta_s"][str(recorded["budget_steps"])]
    recipe = yaml.safe_load((out / "merge_recipe.yaml").read_text())
    assert recipe["base_model"] == recorded["artifacts"]["theta_r"] and recipe["models"][0]["model"] == theta_s
    assert recipe["models"][0]["parameters"]["weight"] == -recorded["w"]
    remade = _task_arithmetic(recipe)
    for k, v in theta_neon.items():
        torch.testing.assert_close(remade[k], v, rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert _sha(recorded["artifacts"]["theta_r"]) in card and f"seeds {recorded['metric']['seeds']}" in card
    assert summary["recipe"]["theta_s_sha256"] == _sha(theta_s)

"""S from elsewhere: another family's model draws it (cross-architecture S), or a finished run supplies it."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from neon.core.errors import NeonError
from neon.stages.run import model_spec
from neon.stages.synthetic_source import check_fits, source_folder
from tests.helpers import cli_error, compose_config, run_cli, run_task, seeded_cache, summary_of

# the EDM digits model, tiny, fine-tuned on S; the xAR digits model, tiny, draws S
TINY_EDM = ["model.pretrain.steps=30", "neon.n_synthetic=40", "neon.budget_steps=2", "neon.batch_size=20",
            "neon.w=[0.0,1.0]", "neon.control=false", "neon.synthetic.block_size=20", "neon.synthetic.shard_size=40",
            "metrics.num_samples=40", "metrics.allow_small=true", "metrics.block_size=40", "metrics.noise_seed_offset=null", "sampler.num_steps=4",
            "preview_samples=0", "trainer.enable_progress_bar=false"]
XAR_DRAWS = ["neon.synthetic.source_model=xar_tiny",
             "neon.synthetic.source_overrides=['model.pretrain.steps=20','sampler.num_steps=3']"]


def finetune_keys(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "finetune").glob("*/key.json"))]


@pytest.mark.slow
def test_another_family_draws_s_for_edm(tmp_path: Path, shared_cache: Path, caplog):
    seeded_cache(tmp_path, shared_cache, TINY_EDM)  # EDM's θ_r; xAR's is pretrained by this run
    run_task([*TINY_EDM, *XAR_DRAWS], tmp_path, "cross")
    summary = summary_of(tmp_path, "cross")
    assert summary["family"] == "neon.families.edm.EDMModule" and summary["synthetic_source"].startswith("model=xar_tiny")
    assert summary["sampler"]["num_steps"] == 3 and "cfg" in summary["sampler"]  # the sampler that drew S
    s_dir = Path(summary["artifacts"]["synthetic"])
    key = json.loads((s_dir / "key.json").read_text())
    assert key["family"] == "neon.families.xar.XARModule" and key["sampler"]["num_steps"] == 3
    shard = torch.load(next(s_dir.glob("shard_*.pt")), weights_only=True)
    assert tuple(shard["x"].shape) == (40, 1, 8, 8) and torch.equal(shard["label"], torch.arange(40) % 10)
    # two θ_r: EDM's and xAR's, each pretrained once
    assert len(list((tmp_path / "cache" / "pretrain").glob("*/theta_r.safetensors"))) == 2

    # the EDM's own S gives another S and another θ_s; the same cross run again redoes nothing
    run_task(TINY_EDM, tmp_path, "own")
    assert summary_of(tmp_path, "own")["artifacts"]["synthetic"] != str(s_dir)
    assert len(finetune_keys(tmp_path / "cache")) == 2
    cache = tmp_path / "cache"
    before = sorted(str(p.relative_to(cache)) for p in cache.glob("*/*") if not p.name.endswith(".lock"))
    caplog.clear()  # count this run's lines only: an earlier test may have left the neon logger at INFO
    with caplog.at_level(logging.INFO, logger="neon"):
        run_task([*TINY_EDM, *XAR_DRAWS], tmp_path, "again")
    again = summary_of(tmp_path, "again")
    assert again["fid_neon"] == summary["fid_neon"] and again["w_curve"] == summary["w_curve"]
    # both θ_r, xAR's S and EDM's θ_s come from the cache: nothing pretrained, drawn, fine-tuned or scored anew
    log = caplog.text
    assert log.count("θ_r: reusing") == 2 and "pretrained into" not in log
    assert re.search(r"S \(drawn by model=xar_tiny.*\): reusing ", log) and ": wrote" not in log
    assert "θ_s: reusing" in log and "fine-tuned" not in log
    assert sorted(str(p.relative_to(cache)) for p in cache.glob("*/*") if not p.name.endswith(".lock")) == before


@pytest.mark.slow
def test_a_synthesize_run_supplies_s(tmp_path: Path, shared_cache: Path):
    seeded_cache(tmp_path, shared_cache, TINY_EDM)
    run_task(["task=synthesize", *TINY_EDM], tmp_path, "synth")
    run_task([*TINY_EDM, f"neon.synthetic.source={tmp_path / 'synth'}"], tmp_path, "neon")
    summary = summary_of(tmp_path, "neon")
    assert summary["artifacts"]["synthetic"] == str(tmp_path / "synth" / "synthetic")
    (key,) = finetune_keys(tmp_path / "cache")
    assert key["synthetic"]["source"] == json.loads((tmp_path / "synth" / "synthetic" / "key.json").read_text())


def test_bad_sources_are_named(tmp_path: Path):
    with pytest.raises(NeonError, match="nowhere' does not exist"):
        source_folder(tmp_path / "nowhere")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(NeonError, match="neon.synthetic.source_model"):
        source_folder(ckpt)
    # S of 2-d toy points cannot fine-tune an 8×8 image model
    toy_s = tmp_path / "toy"
    toy_s.mkdir()
    torch.save({"x": torch.randn(50, 2), "seed": torch.arange(50)}, toy_s / "shard_00000.pt")
    edm = instantiate(model_spec(compose_config(TINY_EDM)))
    with pytest.raises(NeonError) as info:
        check_fits(edm, source_folder(toy_s), f"'{toy_s}'")
    assert "images of shape (2,)" in str(info.value) and "(1, 8, 8)" in str(info.value)
    assert "nosuch" in cli_error([*TINY_EDM, "neon.synthetic.source_model=nosuch"])


@pytest.mark.slow
def test_a_pretrain_run_of_another_family_draws_s(tmp_path: Path, shared_cache: Path):
    # the pretrain run through the command: its folder keeps Hydra's .hydra/config.yaml, which names the model
    proc = run_cli(["task=pretrain", "model=xar_tiny", "model.pretrain.steps=20", "sampler.num_steps=3",
                    "trainer.enable_progress_bar=false"], tmp_path, "xar")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_task([*TINY_EDM, f"neon.synthetic.source={tmp_path / 'xar'}"], tmp_path, "edm", shared_cache)
    summary = summary_of(tmp_path, "edm")
    assert summary["synthetic_source"] == f"the model of run {tmp_path / 'xar'}"
    key = json.loads((Path(summary["artifacts"]["synthetic"]) / "key.json").read_text())
    assert key["family"] == "neon.families.xar.XARModule" and key["sampler"]["num_steps"] == 3

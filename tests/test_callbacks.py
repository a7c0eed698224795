"""NeonMerge inside a real Trainer.fit: the θ_neon files it writes are exactly extrapolate(θ_r, θ_s, w)."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from neon.data.gaussian2d import Gaussian2DDataModule
from neon.families.toy2d import ToyDiffusion
from neon.merging.callback import NeonMerge, merged_name
from neon.merging.extrapolate import extrapolate
from neon.stages.training import LightningNeon

WS = [0.5, -1.0, {r"^blocks\.0\.": 2.0, "out": 0.25, "default": 1.0}]  # scalar, negative and block-wise w


def fit(callback: NeonMerge, steps: int) -> ToyDiffusion:
    L.seed_everything(0, verbose=False)
    module = ToyDiffusion(hidden=16, blocks=2, optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    data = Gaussian2DDataModule(mean=[0.0, 0.0], cov=[[2.0, 1.0], [1.0, 2.0]], n_train=256, batch_size=64, seed=0)
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(LightningNeon(module), datamodule=data)
    return module


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_end_writes_the_merge_of_the_fitted_network_for_each_w(tmp_path: Path):
    L.seed_everything(0, verbose=False)
    theta_r = {k: v.clone() for k, v in ToyDiffusion(hidden=16, blocks=2).neon_weights().items()}  # same init
    merge = NeonMerge(WS, tmp_path)
    theta_s = fit(merge, steps=3).neon_weights()
    assert_same(merge.base, theta_r)  # θ_r remembered when fitting started, untouched by training
    assert not torch.equal(theta_s["out.weight"], theta_r["out.weight"])
    assert sorted(merge.paths) == sorted(merged_name(w) for w in WS)
    for w in WS:
        assert_same(load_file(tmp_path / merged_name(w)), extrapolate(theta_r, theta_s, w))
    blockwise = load_file(tmp_path / merged_name(WS[2]))
    scalar_one = extrapolate(theta_r, theta_s, 1.0)
    assert torch.equal(blockwise["blocks.1.weight"], scalar_one["blocks.1.weight"])  # 'default'
    assert not torch.equal(blockwise["blocks.0.weight"], scalar_one["blocks.0.weight"])  # its own w


def test_budget_snapshots_hand_over_theta_s_and_write_theta_neon_at_each(tmp_path: Path):
    kept: dict[int, dict] = {}
    merge = NeonMerge(WS, tmp_path, budgets=[2, 4], keep_theta_s=lambda step, theta: kept.setdefault(step, theta))
    final = fit(merge, steps=4).neon_weights()
    assert sorted(kept) == [2, 4] and merge.taken == [2, 4]
    assert_same(kept[4], final)  # the last snapshot is the fitted network
    assert not torch.equal(kept[2]["out.weight"], kept[4]["out.weight"])
    for budget in (2, 4):
        for w in WS:
            assert_same(load_file(tmp_path / merged_name(w, budget)), extrapolate(merge.base, kept[budget], w))
    # a θ_s from elsewhere (the cache) goes through the same merge
    assert_same(merge.merged(kept[2], 0.5), extrapolate(merge.base, kept[2], 0.5))


def test_merging_before_any_theta_r_is_a_bug_not_a_silent_result():
    with pytest.raises(RuntimeError, match="no θ_r"):
        NeonMerge([1.0]).merged({"a": torch.zeros(1)}, 1.0)

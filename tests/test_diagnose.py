"""The anti-alignment diagnostic: its estimator against a closed-form case, and the task end to end."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from neon.analysis.alignment import gradient_alignment, parameter_groups, prediction
from neon.analysis.sweep_table import write_sweep_table
from neon.core.contract import NeonModule, diversity_warning
from neon.core.errors import NeonError
from neon.stages.front import validate
from tests.helpers import TINY_TOY, run_task, seeded_cache, summary_of, task_config


class GaussianMean(NeonModule):
    """L(μ) = ½·mean‖x − μ‖² over the batch: the expected gradient on data with mean m is μ − m."""

    def __init__(self, mu: torch.Tensor):
        net = nn.Module()
        net.mu = nn.Parameter(mu.clone())
        super().__init__(net)

    @property
    def image_shape(self):
        return tuple(self.net.mu.shape)

    def loss(self, batch, noise):
        return 0.5 * ((batch["x"] - self.net.mu) ** 2).sum(-1).mean()

    def generate(self, seeds, sampler, labels=None):
        raise NotImplementedError("the estimator's test draws no samples")


def batches(mean: torch.Tensor, std: torch.Tensor, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield {"x": mean + std * torch.randn(size, len(mean), generator=g)}


def test_estimator_matches_the_closed_form_gaussian_case():
    mu = torch.tensor([0.0, 0.0, 0.0, 0.0])
    m_real, m_syn = torch.tensor([1.0, 0.0, 0.5, 0.0]), torch.tensor([-0.8, 0.3, 0.2, 0.0])
    std, size = torch.tensor([1.0, 1.0, 2.0, 0.5]), 64
    result = gradient_alignment(GaussianMean(mu), batches(m_real, std, size, 0), batches(m_syn, std, size, 1),
                                num_batches=2000, blocks=10)
    g_real, g_syn = mu - m_real, mu - m_syn
    exact = float(g_real @ g_syn / (g_real.norm() * g_syn.norm()))
    # Adam's second moment of the real batch gradients at μ: E g² = (μ − m)² + σ²/B; P = 1/√v weights the
    # inner product once: ⟨g_d, P g_s⟩ / (‖g_d‖_P ‖g_s‖_P)
    p = 1 / (g_real ** 2 + std ** 2 / size).sqrt()
    exact_pre = float((g_real * p * g_syn).sum() / ((g_real * p * g_real).sum() * (g_syn * p * g_syn).sum()).sqrt())
    assert exact < 0 and abs(result["cosine"] - exact) < 0.03
    assert abs(result["cosine_preconditioned"] - exact_pre) < 0.03
    assert result["cosine_ci95"][0] < exact < result["cosine_ci95"][1]
    assert prediction(result).startswith("anti-aligned")
    same = gradient_alignment(GaussianMean(mu), batches(m_real, std, size, 2), batches(m_real, std, size, 3),
                              num_batches=400, blocks=8)
    assert same["cosine"] > 0.9 and prediction(same).startswith("aligned")


def test_groups_split_the_parameters():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert parameter_groups(net) == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    assert parameter_groups(net, patterns={"first": r"^0\."}) == {"first": ["0.weight", "0.bias"],
                                                                   "other": ["2.weight", "2.bias"]}


@pytest.mark.slow
def test_diagnose_task_writes_its_json(tmp_path: Path, shared_cache: Path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="neon"):
        run_task(["experiment=toy2d", "task=diagnose", "model.pretrain.steps=100", "neon.n_synthetic=200",
                  "task.num_batches=20", "task.blocks=4", "task.real_data={seed: 1, n_train: 2000}",
                  "trainer.enable_progress_bar=false"], tmp_path, cache=shared_cache)
    result = json.loads((tmp_path / "run" / "diagnosis.json").read_text())
    for key in ("cosine", "cosine_preconditioned"):
        assert -1 <= result[key] <= 1 and len(result[f"{key}_ci95"]) == 2
    assert set(result["groups"]) == {"inp", "blocks", "out"} and result["num_batches"] == 20  # the toy's modules
    assert not math.isnan(result["groups"]["out"]["cosine"])
    assert "gradient cosine" in capsys.readouterr().out + caplog.text


def test_diversity_seeking_samplers_are_named_by_their_family():
    toy, ar, edm, var = ({"_target_": f"neon.families.{t}"} for t in
                         ("toy2d.ToyDiffusion", "ar2d.ARToy", "edm.EDMModule", "var.VARModule"))
    assert diversity_warning(toy, {"score_scale": 1.1, "num_steps": 20}) is None
    assert diversity_warning(var, {"cfg": 2.0, "top_k": 900}) is None
    warning = diversity_warning(toy, {"score_scale": 0.9})
    assert "score_scale = 0.9" in warning and "neon task=diagnose" in warning
    assert "temperature = 1.2" in diversity_warning(ar, {"temperature": 1.2})
    assert diversity_warning(ar, {"temperature": 0.5}) is None
    assert "S_churn = 80" in diversity_warning(edm, {"S_churn": 80, "num_steps": 18})
    assert diversity_warning(edm, {"S_churn": 49.0}) is None
    # a rule is its family's: another family's setting of the same name is not judged by it
    assert diversity_warning(edm, {"temperature": 1.2}) is None and diversity_warning(toy, {"S_churn": 80}) is None


def test_the_pipeline_warns_before_fine_tuning_on_a_diversity_seeking_s(tmp_path: Path, caplog):
    # the warning comes from the pipeline's validation, before θ_r is pretrained: check it there
    cfg, _ = task_config(["experiment=toy2d", "sampler.score_scale=0.9"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="neon"):
        validate(cfg)
    assert "diversity-seeking settings (score_scale = 0.9" in caplog.text
    caplog.clear()
    cfg, _ = task_config(["experiment=toy2d"], tmp_path)  # ζ = 1.1: mode-seeking, no warning
    with caplog.at_level(logging.WARNING, logger="neon"):
        validate(cfg)
    assert "diversity-seeking" not in caplog.text


def test_neon_diagnose_records_the_task_s_cosine_once_per_s(tmp_path: Path, shared_cache: Path, caplog):
    # inside task=neon the diagnostic measures at θ_r on the run's S what task=diagnose measures, is cached per
    # (θ_r, S, settings) so a second job with the same S reuses it, and becomes the sweep table's cosine column
    cache = seeded_cache(tmp_path, shared_cache, TINY_TOY)
    settings = ["task.num_batches=8", "task.blocks=4"]
    alone = run_task([*TINY_TOY, "task=diagnose", *settings], tmp_path, "diag", cache)
    inside = ["neon.diagnose={num_batches: 8, blocks: 4}", "neon.w=[0.0]"]  # θ_r's one score, shared
    with caplog.at_level(logging.INFO, logger="neon"):
        run_task([*TINY_TOY, *inside], tmp_path, "0", cache)
    first = summary_of(tmp_path, "0")["diagnosis"]
    assert first["cosine"] == alone["cosine"] and first["cosine_ci95"] == alone["cosine_ci95"]
    assert first["cosine_preconditioned"] == alone["cosine_preconditioned"]
    assert "gradient cosine real vs S at θ_r" in caplog.text
    assert len(list((cache / "diagnosis").glob("*/diagnosis.json"))) == 1
    run_task([*TINY_TOY, *inside, "neon.budget_steps=3"], tmp_path, "1", cache)  # same S: the cached diagnosis
    assert summary_of(tmp_path, "1")["diagnosis"] == first
    assert len(list((cache / "diagnosis").glob("*/diagnosis.json"))) == 1
    run_task([*TINY_TOY, *inside, "neon.n_synthetic=100"], tmp_path, "2", cache)  # another S: measured anew
    assert len(list((cache / "diagnosis").glob("*/diagnosis.json"))) == 2
    write_sweep_table(tmp_path)
    table = list(csv.DictReader(io.StringIO((tmp_path / "sweep.csv").read_text())))
    assert [float(r["cosine"]) for r in table[:2]] == [first["cosine"]] * 2
    assert float(table[2]["cosine"]) != first["cosine"]


def test_neon_diagnose_names_its_missing_setting(tmp_path: Path, shared_cache: Path):
    cache = seeded_cache(tmp_path, shared_cache, TINY_TOY)
    with pytest.raises(NeonError, match=r"neon.diagnose.num_batches must be a positive integer, got None"):
        run_task([*TINY_TOY, "neon.diagnose={blocks: 4}"], tmp_path, "run", cache)

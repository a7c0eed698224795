"""The paper's autoregressive toy: likelihood, temperature sampling, and the sign flip of Neon and of the
gradient cosine between τ < 1 and τ > 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neon.families.ar2d import ARToy, temperature_sampler
from tests.helpers import run_task, summary_of


def random_toy(seed: int = 0) -> ARToy:
    torch.manual_seed(seed)
    toy = ARToy(hidden=8)
    with torch.no_grad():
        toy.net.mu1.fill_(0.5)
        toy.net.log_std1.fill_(0.7)
    return toy


def test_nll_is_the_gaussian_chain_rule():
    toy = random_toy()
    x = torch.randn(16, 2)
    mu2, log_std2 = toy.net.head2(x[:, :1]).unbind(-1)
    expected = -(torch.distributions.Normal(0.5, torch.tensor(0.7).exp()).log_prob(x[:, 0])
                 + torch.distributions.Normal(mu2, log_std2.exp()).log_prob(x[:, 1]))
    torch.testing.assert_close(toy.net.nll(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(toy.loss({"x": x}, None), expected.mean(), rtol=1e-5, atol=1e-5)


def test_temperature_scales_both_standard_deviations():
    toy = random_toy()
    noise = torch.randn(32, 2)
    for tau in (0.5, 1.0, 1.6):
        x = temperature_sampler(toy.net, noise, temperature=tau)
        torch.testing.assert_close(x[:, 0], 0.5 + torch.tensor(0.7).exp() * tau * noise[:, 0])
        mu2, log_std2 = toy.net.head2(x[:, :1]).unbind(-1)
        torch.testing.assert_close(x[:, 1], mu2 + log_std2.exp() * tau * noise[:, 1])
    # one seed per sample: a sample does not depend on its batch
    sampler = lambda net, noise: temperature_sampler(net, noise, 0.7)  # noqa: E731
    a, _ = toy.generate([3, 4, 5], sampler)
    b, _ = toy.generate([5], sampler)
    assert torch.equal(a[2:], b)


SMALL = ["experiment=ar2d", "neon.n_synthetic=20000", "metrics.num_samples=20000", "metrics.block_size=20000",
         "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_the_gradient_cosine_flips_sign_with_the_temperature(tmp_path: Path, shared_cache: Path):
    cosines = {}
    for tau in (0.6, 1.4):
        run_task([*SMALL, "task=diagnose", f"sampler.temperature={tau}", "task.num_batches=40", "task.blocks=4",
                  "task.real_data={seed: 1, n_train: 50000}"], tmp_path, f"diag{tau}", shared_cache)
        cosines[tau] = json.loads((tmp_path / f"diag{tau}" / "diagnosis.json").read_text())
    # the paper's figure: ≈ −0.5 for τ < 1 and ≈ +0.5 for τ > 1 (P-weighted); measured −0.48 / +0.53 at full size
    assert cosines[0.6]["cosine_preconditioned"] < -0.25 and cosines[0.6]["cosine_preconditioned_ci95"][1] < 0
    assert cosines[1.4]["cosine_preconditioned"] > 0.25 and cosines[1.4]["cosine_preconditioned_ci95"][0] > 0
    assert cosines[0.6]["prediction"].startswith("anti-aligned") and cosines[1.4]["prediction"].startswith("aligned")


@pytest.mark.slow
def test_neon_helps_at_low_temperature_and_flips_at_high(tmp_path: Path, shared_cache: Path):
    best = {}
    for tau in (0.5, 1.6):
        run_task([*SMALL, f"sampler.temperature={tau}", "neon.budget_steps=300", "neon.w=[-0.4,-0.2,0.0,0.2,0.4]"],
                 tmp_path, f"t{tau}", shared_cache)
        best[tau] = summary_of(tmp_path, f"t{tau}")
    assert best[0.5]["w"] > 0 and best[0.5]["fid_neon"] < 0.8 * best[0.5]["fid_base"]
    assert best[1.6]["w"] < 0

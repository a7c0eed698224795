"""The EDM family against outputs recorded before it was rewritten from docs/upstream/edm.md (bit for bit):
seeded init, forward in eval and train mode, loss and gradients, Heun samples with and without churn, for
every backbone option and preconditioning, and the module's per-seed generation."""

from __future__ import annotations

import pytest
import torch

from tests.data.record_edm_regression import NETWORKS, OUT, record_module_generate, record_network

RECORD = torch.load(OUT, weights_only=False)


@pytest.fixture(autouse=True)
def one_thread():
    """The record was made with one CPU thread; convolution gradients sum in a thread-dependent order, so
    bit for bit holds at that count only (the suite's process may run with more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def differing(got, want, prefix: str = "") -> list[str]:
    """Names of the recorded entries that are not identical (tensors bit for bit, digests, values)."""
    if isinstance(want, dict):
        if set(got) != set(want):
            return [f"{prefix}keys {sorted(set(got) ^ set(want))}"]
        return [d for k in want for d in differing(got[k], want[k], f"{prefix}{k}.")]
    if isinstance(want, torch.Tensor):
        same = isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want)
        return [] if same else [prefix.rstrip(".")]
    return [] if got == want else [prefix.rstrip(".")]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_matches_record(name):
    assert not differing(record_network(name, NETWORKS[name]), RECORD[name])


def test_module_generate_matches_record():
    assert not differing(record_module_generate(), RECORD["module_generate"])

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


# The record is bit for bit on the CPU that made it; another CPU's float kernels round differently (seen on an
# AMD EPYC: up to 9e-5 of an entry's largest magnitude, in a VP loss). There the float tensors may differ by
# FLOAT_SHARE of their scale (far below what a wrong formula, constant or order of random draws changes). The
# gradients' digests cannot be compared there; their facts (record_edm_regression.gradient_facts: max |g|,
# rms and 10 entries of each gradient) are, each within GRAD_SHARE of its tensor's max |g|.
FLOAT_SHARE = 2e-4
# GRAD_SHARE (FLOAT_SHARE where a network is not named) is set from how far float32 gradients are from exact
# (float64, measured here for every tensor): within 3e-6 of the tensor's scale for ddpmpp, skipenc_ve and adm.
# Scalar against AVX-512 kernels (ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41): the facts within
# 5e-6 for those and resmlp. Another CPU's gradients, as ours, lie within float32's own error of the exact
# ones, so FLOAT_SHARE leaves a 30-fold margin. ncsnpp_vp is the exception: its Fourier embedding of VP's
# c_noise (up to 999: sin arguments near 1e5 rad, where one float32 step is ~1e-2 rad) leaves its float32
# gradients within 5.2e-2 of their scale of exact (scalar against AVX-512 kernels: 2.2e-3 apart); two CPUs
# may be twice that apart. A wrong formula, constant or draw order moves the gradients by far more.
GRAD_SHARE = {"ncsnpp_vp": 0.1}


def differing(got, want, prefix: str = "", share: float = 0.0, digests: bool = True) -> list[str]:
    """Names of the recorded entries that differ: float tensors by more than `share` of their scale (0: bit for
    bit), digests (strings) unless `digests` is off, other tensors and values exactly."""
    if isinstance(want, dict):
        if set(got) != set(want):
            return [f"{prefix}keys {sorted(set(got) ^ set(want))}"]
        return [d for k in want for d in differing(got[k], want[k], f"{prefix}{k}.", share, digests)]
    if isinstance(want, torch.Tensor):
        same = isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape and (
            torch.equal(got, want) or (share > 0 and want.is_floating_point() and bool(
                (got.double() - want.double()).abs().max() <= share * want.double().abs().max())))
        return [] if same else [prefix.rstrip(".")]
    if isinstance(want, str) and not digests:
        return []
    return [] if got == want else [prefix.rstrip(".")]


def matches_record(got, want, grad_share: float = FLOAT_SHARE) -> list[str]:
    """Bit for bit, digests included; or, where some tensor differs in its bits (another CPU), the tensors
    within FLOAT_SHARE of their scale and the gradient facts within `grad_share` of their tensor's scale."""
    if not differing(got, want, digests=False):
        return differing(got, want)
    rest = [k for k in want if k != "grad_facts"]
    return [*differing({k: got.get(k) for k in rest}, {k: want[k] for k in rest}, share=FLOAT_SHARE, digests=False),
            *(differing(got["grad_facts"], want["grad_facts"], "grad_facts.", share=grad_share)
              if "grad_facts" in want else [])]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_matches_record(name):
    assert "grad_facts" in RECORD[name]  # what another CPU compares the gradients by
    assert not matches_record(record_network(name, NETWORKS[name]), RECORD[name], GRAD_SHARE.get(name, FLOAT_SHARE))


def test_module_generate_matches_record():
    assert not matches_record(record_module_generate(), RECORD["module_generate"])


def test_another_cpus_rounding_still_compares_the_gradients():
    # as on another CPU: every float tensor a little off its recorded bits, within the tolerances; the gradients'
    # digests then differ and are not compared, their facts are
    want = RECORD["adm"]

    def nudged(entry, share: float):
        if isinstance(entry, dict):
            return {k: nudged(v, share) for k, v in entry.items()}
        if isinstance(entry, torch.Tensor) and entry.is_floating_point():
            return entry + share * entry.abs().max() * torch.linspace(-1, 1, entry.numel()).reshape(entry.shape)
        return entry

    off = {**nudged(want, FLOAT_SHARE / 2), "grads": {k: "0" * 64 for k in want["grads"]}}
    assert differing(off, want, digests=False) and not matches_record(off, want)
    # one gradient's facts off by more than FLOAT_SHARE of its scale are named
    key = sorted(want["grad_facts"])[3]
    bad = {**off, "grad_facts": {**off["grad_facts"], key: off["grad_facts"][key] * (1 + 4 * FLOAT_SHARE)}}
    assert matches_record(bad, want) == [f"grad_facts.{key}"]
    assert matches_record(bad, want, grad_share=0.1) == []  # ncsnpp_vp's wider tolerance lets it through
    # and a wrong output is still named beside it
    bad["out_eval"] = bad["out_eval"] * 1.01
    assert matches_record(bad, want) == ["out_eval", f"grad_facts.{key}"]

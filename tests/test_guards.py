"""Guards that tests/mutation_check.py showed missing: each test fails when the code it names is broken
(the sampler steps of xAR and IMM against closed forms, θ_s reuse only after its checksums pass, the DDP gather
order without starting processes, a snapshot naming an importable global that would run code)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from neon.core.collectives import interleave
from neon.core.errors import NeonError
from neon.families.imm.network import IMMPrecond
from neon.families.imm.sampler import pushforward_sampler
from neon.families.xar.sampler import xar_sampler


class _ConstantVelocityXAR:
    """An xAR network that predicts the velocity `v` everywhere (the sampler's interface, nothing else)."""

    def __init__(self, v: float, clusters: int = 2, cluster_size: int = 3, channels: int = 2):
        self.v, self.num_clusters, self.cluster_size, self.channels, self.num_classes = v, clusters, cluster_size, \
            channels, 10
        self.times: list[torch.Tensor] = []

    def clear_cache(self) -> None:
        pass

    def sample_step(self, tokens, labels, t, cluster, update_cache):
        self.times.append(t)
        return torch.full_like(tokens[:, -self.cluster_size:], self.v)

    def from_sequence(self, tokens):
        return tokens


def test_xar_sampler_step_is_euler_maruyama_on_the_flow_sde():
    # for x_t = (1 − t)·x₀ + t·ε and velocity v, the score is (−(1 − t)·v − x)/t and the drift with diffusion 2t
    # is v − t·score = (2 − t)·v + x; each step but the last: x + drift·dt + √(2t)·ε·√|dt|, the last one Euler
    v, steps, t_min, b = 0.5, 5, 0.04, 2
    net = _ConstantVelocityXAR(v)
    out = xar_sampler(net, SimpleNamespace(decode=lambda z: z), torch.tensor([1, 2]), torch.Generator().manual_seed(3),
                      num_steps=steps, cfg=2.0, t_min=t_min)

    g = torch.Generator().manual_seed(3)
    times = torch.linspace(1.0, t_min, steps, dtype=torch.float64).tolist() + [0.0]
    shape = (b, net.cluster_size, net.channels)
    clusters = []
    for _ in range(net.num_clusters):
        x = torch.randn(shape, generator=g, dtype=torch.float32).double()
        for j in range(steps):
            t, dt = times[j], times[j + 1] - times[j]
            drift = (2 - t) * v + x
            if j < steps - 1:
                eps = torch.randn(shape, generator=g, dtype=torch.float64)
                x = x + drift * dt + (2 * t) ** 0.5 * abs(dt) ** 0.5 * eps
            else:
                x = x + drift * dt
        clusters.append(x.float())
    torch.testing.assert_close(out, torch.cat(clusters, dim=1), rtol=1e-5, atol=1e-6)
    assert [float(t[0]) for t in net.times[:steps]] == pytest.approx(times[:steps])


def test_imm_sampler_jumps_from_each_time_to_the_next():
    # with the network output F = 1 every jump is x_s = x_t − (t − s)·σ_d: the jumps T → … → eps add up to
    # noise − (T − eps)·σ_d, visiting the uniform times in order
    net = IMMPrecond(img_resolution=4, img_channels=1, num_classes=2, model_type=None, hidden_size=8, depth=1,
                     num_heads=1, patch_size=2, T=0.9, eps=0.1)
    seen: list[tuple[float, float]] = []

    def network(x, t, s, labels):
        seen.append((float(t), float(s)))
        return torch.ones_like(x, dtype=torch.float32)

    net.network = network
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for cfg in (None, 1.5):
        for steps in (1, 4):
            seen.clear()
            out = pushforward_sampler(net, SimpleNamespace(decode=lambda z: z), noise, torch.tensor([0, 1]),
                                      num_steps=steps, cfg=cfg)
            times = torch.linspace(0.9, 0.1, steps + 1, dtype=torch.float64).tolist()
            assert [t for pair in seen for t in pair] == pytest.approx(
                [times[i + k] for i in range(steps) for k in (0, 1)]), (cfg, steps)
            torch.testing.assert_close(out, noise - (0.9 - 0.1) * net.sigma_data, rtol=0, atol=1e-6)


class _FineTuned(Exception):
    pass


def _finetune(*args, **kwargs):
    raise _FineTuned


def test_a_corrupt_theta_s_is_fine_tuned_again_not_reused(tmp_path: Path, monkeypatch):
    import neon.stages.finetune as stages
    from neon.core.cache import ArtifactCache
    from neon.core.io import save_state_dict

    monkeypatch.setattr(stages, "finetune_key", lambda run, base_digest, data_key, budget: {"budget": budget})
    monkeypatch.setattr(stages, "finetune_module", _finetune)
    theta_r = {"w": torch.arange(4, dtype=torch.float32)}
    module = SimpleNamespace(load_neon_weights=lambda state, source: None)
    cache = ArtifactCache(tmp_path)
    folder, _ = cache.get_or_build("finetune", {"budget": 3},
                                   lambda work: save_state_dict(theta_r, work / stages.THETA_S))

    def finetuned(job_cache: ArtifactCache) -> dict[int, Path]:
        return stages.finetuned_weights(SimpleNamespace(cache=job_cache), module, lambda: None, theta_r, "digest",
                                        {}, [3])

    assert finetuned(ArtifactCache(tmp_path)) == {3: folder / stages.THETA_S}  # intact: reused, not trained
    theta_s = folder / stages.THETA_S
    # a flipped value that still loads and is finite: only the checksums can tell
    theta_s.write_bytes(theta_s.read_bytes()[:-4] + struct.pack("<f", 7.0))
    with pytest.warns(UserWarning, match="fails its checksums"), pytest.raises(_FineTuned):
        finetuned(ArtifactCache(tmp_path))  # a new job: nothing verified yet in this process


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_strided_shares_interleave_back_into_item_order(world: int):
    # rank r holds items r, r + W, ... (the last ranks one item fewer when W does not divide n)
    items = {"x": torch.arange(10).numpy(), "y": torch.arange(20).reshape(10, 2).numpy()}
    shares = [{k: v[r::world] for k, v in items.items()} for r in range(world)]
    out = interleave(shares)
    assert all((out[k] == v).all() and out[k].shape == v.shape for k, v in items.items())


RAN: list[str] = []


def _payload(text: str) -> dict:
    """What a malicious snapshot would call while it is unpickled (here it only leaves a note)."""
    RAN.append(text)
    return {}


class _Malicious:
    def __reduce__(self):
        return _payload, ("ran",)


@pytest.mark.parametrize("spill", [False, True])
def test_a_snapshot_naming_an_importable_global_is_refused_before_it_runs(tmp_path: Path, spill: bool):
    # unlike an unimportable module, a global that imports fine would be called by a plain unpickler
    from neon.weights.persistence import read_snapshot

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _Malicious()}, protocol=4))
    RAN.clear()
    with pytest.raises(NeonError, match=r"'tests\.test_guards\._payload'.*refusing"):
        read_snapshot(path, what="snapshot", spill_dir=tmp_path if spill else None)
    assert RAN == []

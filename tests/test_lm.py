"""The tiny language model family (neon.families.lm): the KV cache gives the full pass's logits; a sequence depends
on its seed alone; greedy, top-k, top-p and the inverse-CDF draw pick what they promise; token_nll and the loss
are the cross-entropy; bad sampler settings are refused in one line; lm_tiny keeps the family contract."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.nn import functional as F

import tests.test_family_contract as contract
from neon.core.contract import diversity_warning
from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families import lm
from neon.families.lm import TinyGPT, TinyLM, check_lm_sampler, sample_tokens

SMALL = {"vocab_size": 257, "context": 16, "width": 32, "depth": 2, "heads": 4, "dropout": 0.0}


def small_module(**changes) -> TinyLM:
    torch.manual_seed(0)
    ema_decay = changes.pop("ema_decay", None)
    return TinyLM({**SMALL, **changes}, ema_decay=ema_decay).eval()


def tokens(n: int, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(256, (n, length), generator=torch.Generator().manual_seed(seed))


def with_bos(x: torch.Tensor, bos: int = 256) -> torch.Tensor:
    return torch.cat([torch.full((len(x), 1), bos), x[:, :-1]], dim=1)


class FixedLogits:
    """A stand-in network whose next-token logits are always `logits` (the last id is BOS)."""

    def __init__(self, logits: list[float]):
        self.logits = torch.tensor(logits)
        self.bos = len(logits) - 1

    def forward_step(self, idx: torch.Tensor, cache=None):
        return self.logits.expand(idx.shape[0], idx.shape[1], -1), cache


def test_kv_cache_logits_equal_the_full_forward():
    net = small_module().net
    idx = torch.cat([torch.full((3, 1), 256), tokens(3)], dim=1)  # BOS + context tokens: every position
    full = net(idx)
    # from an empty cache several at once, then several after a cache (the offset mask), then one at a time
    pieces, cache = [], None
    for a, b in [(0, 5), (5, 9), *((i, i + 1) for i in range(9, 17))]:
        logits, cache = net.forward_step(idx[:, a:b], cache)
        pieces.append(logits)
        assert cache[0][0].shape[2] == b and len(cache) == SMALL["depth"]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(NeonError, match="model.network.context = 16"):
        net.forward_step(idx[:, :1], cache)  # a 18th position does not exist


def test_a_sequence_depends_on_its_seed_not_its_batch():
    module = small_module()
    sampler = instantiate({"_target_": "neon.families.lm.sample_tokens", "_partial_": True, "temperature": 1.0})
    x, labels = module.generate([5, 6, 7], sampler)
    assert labels is None and x.dtype == torch.long and x.shape == (3, 16)
    assert int(x.min()) >= 0 and int(x.max()) < 256  # byte ids, never BOS
    alone, _ = module.generate([7], sampler)
    other_order, _ = module.generate([7, 6], sampler)
    assert torch.equal(alone[0], x[2]) and torch.equal(other_order[0], x[2]) and torch.equal(other_order[1], x[1])
    assert not torch.equal(x[0], x[1])
    assert module.export_samples(x).dtype == np.int64 and np.array_equal(module.export_samples(x), x.numpy())


def test_temperature_zero_and_top_k_one_are_the_greedy_argmax_of_the_full_forward():
    net = small_module().net
    uniforms = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    greedy = sample_tokens(net, uniforms, temperature=0.0)
    expected = net(with_bos(greedy))[..., :256].argmax(-1)  # each token the argmax given the ones before it
    assert torch.equal(greedy, expected)
    assert torch.equal(sample_tokens(net, uniforms, temperature=1.7, top_k=1), greedy)
    assert not torch.equal(sample_tokens(net, uniforms, temperature=1.7), greedy)  # the uniforms do matter


# token probabilities 0.05, 0.4, 0.1, 0.3, 0.15 (by descending probability: 1, 3, 4, 2, 0) and a BOS logit above all
PROBS = [0.05, 0.4, 0.1, 0.3, 0.15]
STUB = FixedLogits([math.log(p) for p in PROBS] + [5.0])


@pytest.mark.parametrize("top_k,top_p,nucleus", [(0, 0.3, {1}), (0, 0.6, {1, 3}), (0, 0.75, {1, 3, 4}),
                                                 (0, 0.9, {1, 3, 4, 2}), (0, 1.0, {0, 1, 2, 3, 4}),
                                                 (2, 0.5, {1})])  # top-k first: 0.4 of the kept 0.7 reaches 0.5
def test_top_p_keeps_exactly_the_nucleus(top_k: int, top_p: float, nucleus: set[int]):
    grid = ((torch.arange(2000) + 0.5) / 2000).view(-1, 1)
    drawn = set(sample_tokens(STUB, grid, temperature=1.0, top_k=top_k, top_p=top_p).flatten().tolist())
    assert drawn == nucleus


def test_ties_go_to_the_lower_id():
    tied = FixedLogits([0.0, 2.0, 2.0, 2.0, 0.0, 9.0])
    grid = ((torch.arange(999) + 0.5) / 999).view(-1, 1)
    assert set(sample_tokens(tied, grid, temperature=0).flatten().tolist()) == {1}
    assert set(sample_tokens(tied, grid, top_k=2).flatten().tolist()) == {1, 2}
    assert set(sample_tokens(tied, grid, top_p=0.4).flatten().tolist()) == {1, 2}  # each of the three holds < 0.33


def filtered(logits: list[float], temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The sampler's distribution computed here on its own: softmax(l / τ), the k largest, the nucleus."""
    p = np.exp(np.array(logits) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    if top_k:
        p[order[top_k:]] = 0
        p /= p.sum()
    before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
    p[order[before >= top_p]] = 0
    return p / p.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 4, 0.9), (1.5, 3, 1.0), (0.5, 0, 0.8),
                                                     (1.3, 3, 0.8)])
def test_inverse_cdf_draws_follow_the_filtered_distribution(temperature: float, top_k: int, top_p: float):
    n = 20000
    grid = ((torch.arange(n) + 0.5) / n).view(-1, 1)  # evenly spread uniforms: frequencies within 1/n of p
    drawn = sample_tokens(STUB, grid, temperature=temperature, top_k=top_k, top_p=top_p).flatten()
    freq = np.bincount(drawn.numpy(), minlength=5) / n
    expected = filtered([math.log(p) for p in PROBS], temperature, top_k, top_p)
    np.testing.assert_allclose(freq, expected, atol=2 / n)


def test_token_nll_is_the_summed_cross_entropy_in_eval_mode(monkeypatch):
    module = small_module(dropout=0.5).train()
    modes = []
    module.net.register_forward_hook(lambda net, args, out: modes.append(net.training))
    monkeypatch.setattr(lm, "NLL_BATCH", 2)  # 5 sequences in 3 passes
    x = tokens(5)
    nll, count = module.token_nll(x)
    assert modes == [False] * 3 and module.net.training  # scored in eval mode, its mode restored after
    module.eval()
    expected = F.cross_entropy(module.net(with_bos(x)).reshape(-1, 257), x.reshape(-1), reduction="sum")
    assert nll.dtype == torch.float64 and nll.dim() == 0 and count == x.numel()
    torch.testing.assert_close(nll, expected.double(), rtol=1e-6, atol=1e-4)
    assert torch.equal(module.token_nll(x)[0], nll)


def test_token_nll_is_the_log_of_torchmetrics_perplexity():
    from torchmetrics.functional.text import perplexity

    module = small_module()
    x = tokens(6)
    nll, count = module.token_nll(x)
    with torch.no_grad():
        reference = perplexity(module.net(with_bos(x)).double(), x)
    assert float(nll) / count == pytest.approx(math.log(float(reference)), rel=1e-6)


def test_token_nll_scores_the_ema_copy_that_samples():
    module = small_module(ema_decay=0.9)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.1)
    x = tokens(3)
    expected = F.cross_entropy(module.ema(with_bos(x)).reshape(-1, 257), x.reshape(-1), reduction="sum")
    torch.testing.assert_close(module.token_nll(x)[0], expected.double(), rtol=1e-6, atol=1e-4)


def test_the_loss_is_the_mean_token_nll():
    module = small_module().train()
    x = tokens(4)
    nll, count = module.token_nll(x)
    loss = module.loss({"x": x}, StepNoise.single(4))
    torch.testing.assert_close(loss.double(), nll / count, rtol=1e-6, atol=1e-6)
    assert math.isclose(float(loss.detach()), math.log(257), rel_tol=0.05)  # an untrained net is near uniform


def test_batches_that_are_no_byte_tokens_are_refused():
    module = small_module()
    with pytest.raises(NeonError, match="integer tensor"):
        module.loss({"x": torch.rand(2, 16)}, StepNoise.single(2))
    with pytest.raises(NeonError, match=r"token ids must lie in \[0, 256\)"):
        module.token_nll(torch.full((2, 16), 256))
    with pytest.raises(NeonError, match="model.network.context = 16"):
        module.token_nll(tokens(2, length=17))


@pytest.mark.parametrize("key,value", [("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0),
                                       ("top_p", 1.5), ("top_k", -1), ("top_k", 2.5), ("top_k", True)])
def test_bad_sampler_settings_are_refused_before_any_work(key: str, value):
    with pytest.raises(NeonError) as err:
        check_lm_sampler({key: value})
    assert str(err.value).startswith(f"sampler.{key}=") and "\n" not in str(err.value) and "use " in str(err.value)

    class Untouchable:
        bos = 256

        def forward_step(self, idx, cache=None):
            raise AssertionError("the network ran")

    with pytest.raises(NeonError, match=f"sampler.{key}="):
        sample_tokens(Untouchable(), torch.rand(1, 4), **{key: value})


def test_good_sampler_settings_pass():
    check_lm_sampler({"_target_": "neon.families.lm.sample_tokens", "temperature": 0, "top_k": 40, "top_p": 1})


def test_only_a_temperature_above_one_is_diversity_seeking():
    found = TinyLM.diversity_seeking({"temperature": 1.2, "top_k": 0, "top_p": 1.0})
    assert found == ["temperature = 1.2 (temperature > 1)"]
    assert TinyLM.diversity_seeking({"temperature": 0.8, "top_k": 0, "top_p": 1.0}) == []
    model = {"_target_": "neon.families.lm.TinyLM"}
    assert diversity_warning(model, {"temperature": 1.0}) is None
    assert "temperature = 1.5" in diversity_warning(model, {"temperature": 1.5})


def test_weight_decay_spares_norms_and_biases():
    module = small_module()
    plain, decayed = module.optimizer_params()
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert len(plain["params"]) + len(decayed["params"]) == len(list(module.net.parameters()))
    assert any(p is module.net.tokens.weight for p in decayed["params"])


def token_batch(module, n: int = 4) -> dict[str, torch.Tensor]:
    return {"x": tokens(n, module.image_shape[0], seed=1)}


# lm_tiny at a smaller size: the contract does not depend on it
SMALL_OVERRIDES = ["model.network.width=32", "model.network.depth=2", "model.network.context=16"]


def test_lm_tiny_keeps_the_family_contract(monkeypatch, tmp_path: Path):
    # the contract test's own checks; its random batch is of images, a language model's is of byte ids
    monkeypatch.setattr(contract, "random_batch", token_batch)
    monkeypatch.setitem(contract.QUICK_SAMPLER, "lm_tiny", SMALL_OVERRIDES)
    contract.test_tiny_model_keeps_the_contract("lm_tiny", tmp_path)
    contract.test_loading_weights_keeps_an_eval_module_in_eval_mode("lm_tiny", tmp_path)


def test_lm_tiny_config_builds_the_configured_network(tmp_path: Path):
    cfg = contract.compose_model("lm_tiny", tmp_path)
    assert cfg.sampler._target_ == "neon.families.lm.sample_tokens" and cfg.sampler.temperature < 1
    module = instantiate({k: v for k, v in cfg.model.items() if k not in ("checkpoint", "pretrain")})
    net = module.net
    assert isinstance(net, TinyGPT) and module.image_shape == (64,) and module.ema is None
    assert (net.vocab_size, net.width, net.depth, net.heads, net.bos) == (257, 128, 4, 4, 256)
    assert net.positions.shape == (65, 128) and net.tokens.weight.shape == (257, 128)
    assert module.config_overrides() == {"network": dict(cfg.model.network)}


def test_the_cpu_sort_is_torchs_stable_descending_sort():
    from neon.families.lm import descending, next_tokens

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        x = torch.randn(3, int(torch.randint(1, 900, (1,), generator=g)), generator=g) * 10
        if trial % 3 == 1:
            x = x.round()  # ties
        if trial % 5 == 2:
            x[:, ::3], x[:, 1::5] = -0.0, 0.0  # −0.0 ties with 0.0
        if trial % 7 == 3:
            x[:, ::4], x[:, 2::9] = float("-inf"), float("inf")
        x = x.to((torch.float32, torch.bfloat16, torch.float16)[trial % 3])
        values, order = x.sort(dim=-1, descending=True, stable=True)
        ours = descending(x)
        assert torch.equal(ours[1], order) and torch.equal(ours[0], values) and ours[0].dtype == x.dtype, trial
    # the tokens are those of the float64 sort of logits / τ, filtered or not
    logits, u = torch.randn(64, 300, generator=g).round(decimals=1), torch.rand(64, generator=g)
    for temperature, top_k, top_p in ((0.8, 0, 1.0), (1.3, 20, 0.9), (0.5, 0, 0.7)):
        ordered, idx = (logits.double() / temperature).sort(dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(ordered, dtype=torch.bool)
        keep[:, :top_k or None] = True
        probs = ordered.softmax(-1) * keep
        kept = probs / probs.sum(-1, keepdim=True)
        keep &= torch.cat([torch.zeros_like(kept[:, :1]), kept.cumsum(-1)[:, :-1]], -1) < top_p
        mass = (ordered.softmax(-1) * keep).cumsum(-1)
        at = torch.searchsorted(mass, (u.double()[:, None] * mass[:, -1:]), right=True)
        expected = idx.gather(-1, at.clamp(max=keep.sum(-1, keepdim=True) - 1)).squeeze(-1)
        assert torch.equal(next_tokens(logits, u, temperature, top_k, top_p), expected)

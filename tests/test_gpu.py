"""The CUDA paths, on one GPU (every test here is marked `gpu` and skipped without CUDA): per-sample generators
on the device, each family's mixed-precision path (EDM use_fp16, xAR's autocast sampling, IMM and VAR under
Lightning's bf16-mixed / 16-mixed), the scaled-dot-product attention kernels against a float64 CPU result,
and a one-process NCCL group (our collectives, and a Lightning DDP fit). Each test takes seconds on a GPU;
`bench/gpu_check.py` runs them first (`pytest -m gpu`)."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from neon.core.collectives import broadcast, gather_strided, interleave, rank_world
from neon.core.contract import NeonModule
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.edm import heun_sampler
from neon.families.imm.network import Attention as IMMAttention
from neon.families.var.transformer import SelfAttention as VARAttention
from neon.families.xar import xar_sampler
from neon.families.xar.transformer import Attention as XARAttention
from neon.launch.cli import CONF_DIR
from neon.launch.distributed import free_port, init_process_group
from neon.stages.run import model_spec
from neon.stages.training import LightningNeon
from tests.helpers import random_batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")
# fewer sampler steps where a family's sampler takes many (what is tested does not depend on the count)
QUICK = {"edm_digits": ["sampler.num_steps=4"], "xar_tiny": ["sampler.num_steps=4"], "imm_tiny": ["sampler.num_steps=2"],
         "var_tiny": ["model.vae_pretrain.steps=2"]}  # VAR's tokenizer is trained on first use: keep it short
ONE_LEVEL = 1 / 127.5  # one step of the 8-bit grid generated images are rounded to, in [-1, 1] units


def tiny(name: str, tmp_path: Path, *overrides: str) -> tuple[NeonModule, object]:
    """A tiny model config's module (fresh weights, built on the CPU) and its sampler."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", f"paths.cache_dir={tmp_path}", *QUICK.get(name, []),
                                           *overrides])
    torch.manual_seed(0)
    return instantiate(model_spec(cfg)), instantiate(cfg.sampler)


def perturbed(module: NeonModule, scale: float = 0.02) -> NeonModule:
    """Move the weights off their initial values (zero-initialised output layers would hide every path)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    if module.ema is not None:
        module.ema.load_state_dict(module.net.state_dict())
    return module


@pytest.fixture()
def exact_float32(monkeypatch):
    """float32 references without TF32 (cuDNN allows it by default, which rounds like fp16's mantissa)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


# ------------------------------------------------------------------ per-sample generators on the device


def test_cuda_generators_give_each_sample_its_own_stream():
    batch = PerSampleRNG([3, 4, 5], DEVICE).randn(2, 8)
    assert batch.device.type == DEVICE.type
    assert torch.equal(PerSampleRNG([4], DEVICE).randn(2, 8)[0], batch[1])  # the same, whatever its company
    assert torch.equal(PerSampleRNG([3, 4, 5], DEVICE).randn(2, 8), batch)
    assert not torch.equal(batch[0], batch[1])
    noise = StepNoise(seed=7, step=3, rows=slice(2, 4), global_size=4, device=DEVICE)
    whole = StepNoise(seed=7, step=3, rows=slice(0, 4), global_size=4, device=DEVICE)
    assert torch.equal(noise.randn(5), whole.randn(5)[2:4])  # a rank's rows of the global batch's noise


@pytest.mark.parametrize("name", ["toy2d", "edm_digits", "var_tiny", "xar_tiny", "imm_tiny"])
def test_generation_on_cuda_is_per_seed(name: str, tmp_path: Path):
    module, sampler = tiny(name, tmp_path)
    module = module.to(DEVICE).eval()
    x, labels = module.generate([5, 6, 7], sampler)
    assert x.device.type == DEVICE.type and torch.isfinite(x).all()
    again, _ = module.generate([5, 6, 7], sampler)
    assert torch.equal(x, again)  # same seeds, same batch: bit for bit
    alone, alone_labels = module.generate([6], sampler)
    reordered, _ = module.generate([7, 6], sampler)
    if labels is not None:
        assert torch.equal(alone_labels[0], labels[1])
    assert not torch.equal(x[0], x[1])
    # Another batch size may pick other GPU kernels, which round differently (~1e-6): for images rounded to
    # the 8-bit grid that moves at most a rare pixel lying at a rounding boundary by one level.
    for single in (alone[0], reordered[1]):
        diff = (single - x[1]).abs()
        if x.dim() == 2:  # the toy's points are not rounded
            assert diff.max() < 1e-4
        else:
            assert diff.max() <= ONE_LEVEL + 1e-6 and (diff > 0).float().mean() < 0.01


# ------------------------------------------------------------------ mixed precision


def test_edm_fp16_network_is_close_to_float32(tmp_path: Path, exact_float32):
    # a narrow CIFAR-10 DDPM++ (the release's layer types, attention at 16×16)
    module, _ = tiny("edm_cifar10_ddpmpp_cond", tmp_path, "model.network.model_channels=32",
                     "model.network.channel_mult=[1,2,2]", "+model.network.num_blocks=1", "model.network.dropout=0.0")
    net32 = perturbed(module).net.to(DEVICE).eval()
    net16 = copy.deepcopy(net32)
    net16.use_fp16 = True
    seen = {}
    for tag, net in (("32", net32), ("16", net16)):
        net.model.register_forward_pre_hook(lambda _m, args, tag=tag: seen.update({tag: args[0].dtype}))
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.002, 0.05, 0.2, 0.5, 1.0, 2.0, 10.0, 80.0], device=DEVICE)
    x = torch.randn(8, 3, 32, 32, generator=g).to(DEVICE) * sigma.view(-1, 1, 1, 1)
    labels = torch.nn.functional.one_hot(torch.arange(8, device=DEVICE) % 10, 10).float()
    with torch.no_grad():
        d32, d16 = net32(x, sigma, labels), net16(x, sigma, labels)
    assert seen == {"32": torch.float32, "16": torch.float16} and d16.dtype == torch.float32
    # Compared on the network's share c_out·F of D (c_skip·x is exact in both). fp16 rounds at 4.9e-4; on
    # the CPU the same network with an fp16 backbone is off by 2.1e-3 overall (6.4e-3 at σ = 0.002), a
    # bfloat16 one by 1.7e-2: the bounds leave 5× room and still fail a path that loses bits to bf16.
    own = d32 - net32.scalings(sigma.view(-1, 1, 1, 1))[0] * x
    assert ((d16 - d32).norm() / own.norm()).item() < 1e-2
    per_sample = (d16 - d32).flatten(1).norm(dim=1) / own.flatten(1).norm(dim=1)
    assert per_sample.max().item() < 3e-2
    images = heun_sampler(net16, torch.randn(4, 3, 32, 32, device=DEVICE), labels[:4], num_steps=4)
    assert torch.isfinite(images).all()


def test_xar_amp_sampling_is_close_to_float32(tmp_path: Path, exact_float32):
    module, _ = tiny("xar_tiny", tmp_path)
    module = perturbed(module).to(DEVICE).eval()
    seen: set[torch.dtype] = set()
    module.net.encoder_blocks[0].attn.qkv.register_forward_hook(lambda _m, _a, out: seen.add(out.dtype))
    labels = torch.arange(6, device=DEVICE) % 10
    settings = dict(num_steps=8, cfg=1.5)
    ref = xar_sampler(module.net, module.latent, labels, PerSampleRNG(range(6), DEVICE), **settings)
    assert seen == {torch.float32}
    amp = xar_sampler(module.net, module.latent, labels, PerSampleRNG(range(6), DEVICE), amp=True, **settings)
    assert torch.float16 in seen and amp.dtype == torch.float32 and torch.isfinite(amp).all()
    # on the CPU, this model sampled with an fp16 network is off by 4.0e-4 (relative L2), with a bfloat16 one
    # by 4.2e-3: the bound leaves 5× room over fp16
    assert ((amp - ref).norm() / ref.norm()).item() < 2e-3


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", ["imm_tiny", "var_tiny", "xar_tiny"])
def test_lightning_mixed_precision_training_steps(name: str, precision: str, tmp_path: Path):
    module, _ = tiny(name, tmp_path)
    module = perturbed(module)
    before = {k: p.detach().clone() for k, p in module.net.named_parameters()}
    losses: list[float] = []
    dtypes: set[torch.dtype] = set()
    first_linear = next(m for m in module.net.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda _m, _a, out: dtypes.add(out.dtype))

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    # 12 steps: under 16-mixed the gradient scaler starts at 2^16 and may skip the first steps on overflow
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_steps=12, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[Losses()], default_root_dir=str(tmp_path))
    trainer.fit(LightningNeon(module), DataLoader([random_batch(module, 8)] * 12, batch_size=None))
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert dtypes == {torch.bfloat16 if precision == "bf16-mixed" else torch.float16}  # autocast was on
    after = {k: p.detach().cpu() for k, p in module.net.named_parameters()}
    assert all(torch.isfinite(p).all() for p in after.values())
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2  # the optimizer steps went through (not all skipped by the scaler)


# ------------------------------------------------------------------ attention kernels


def captured_attention(name: str, tmp_path: Path) -> tuple[torch.nn.Module, tuple, dict]:
    """The first attention layer of a tiny family and the inputs it gets in a training step (on the CPU)."""
    module, _ = tiny(name, tmp_path)
    module = perturbed(module).train()
    kinds = (VARAttention, XARAttention, IMMAttention)
    layer = next(m for m in module.net.modules() if isinstance(m, kinds))
    calls: list = []
    handle = layer.register_forward_pre_hook(lambda _m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    with torch.no_grad():
        module.loss(random_batch(module, 8), StepNoise.single(8, seed=3))
    handle.remove()
    return layer, *copy.deepcopy(calls[0])


def moved(value, device: torch.device, dtype: torch.dtype | None = None):
    """Tensors among call arguments moved (and floating ones cast) for another run of the same call."""
    if isinstance(value, torch.Tensor):
        value = value.to(device)
        return value.to(dtype) if dtype is not None and value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(moved(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: moved(v, device, dtype) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", ["var_tiny", "xar_tiny", "imm_tiny"])
def test_attention_kernels_match_the_cpu(name: str, tmp_path: Path, exact_float32):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    layer, args, kwargs = captured_attention(name, tmp_path)
    with torch.no_grad():
        ref = copy.deepcopy(layer).double()(*moved(args, torch.device("cpu"), torch.float64),
                                            **moved(kwargs, torch.device("cpu"), torch.float64))
        scale = ref.abs().max().item()
        cuda = copy.deepcopy(layer).to(DEVICE)
        cuda_args, cuda_kwargs = moved(args, DEVICE), moved(kwargs, DEVICE)
        # float32 on the GPU, as dispatched by default and with the math kernel: float32 rounding only
        for backends in ([SDPBackend.MATH], [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                             SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]):
            with sdpa_kernel(backends):
                out = cuda(*cuda_args, **cuda_kwargs)
            assert (out.double().cpu() - ref).abs().max().item() < 1e-4 * scale
        # half precision under autocast (as training and amp sampling run), each fused kernel that takes these
        # inputs. On the CPU these layers under autocast are off by ≤ 1.0e-3 of the output's scale in fp16 and
        # ≤ 7.6e-3 in bf16 (math and flash kernels alike): the bounds leave 5× room; a wrong mask or scale is O(1)
        ran = []
        for dtype, bound in ((torch.float16, 5e-3), (torch.bfloat16, 4e-2)):
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
                try:
                    with sdpa_kernel([backend]), torch.autocast("cuda", dtype=dtype):
                        out = cuda(*cuda_args, **cuda_kwargs)
                except RuntimeError as err:  # this kernel does not take these inputs (mask, head size, GPU)
                    if "No available kernel" not in str(err) and "No viable backend" not in str(err):
                        raise
                    continue
                ran.append((dtype, backend))
                assert (out.double().cpu() - ref).abs().max().item() < bound * scale, (dtype, backend)
        assert {dtype for dtype, _ in ran} == {torch.float16, torch.bfloat16}  # a fused kernel ran for each


# ------------------------------------------------------------------ NCCL in one process


@pytest.fixture()
def dist_env(monkeypatch):
    """torch.distributed's rendezvous variables, restored afterwards; no group is left behind."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_one_process_nccl_group_runs_our_collectives(dist_env):
    layout = {"rank": 0, "world": 1, "local_rank": 0, "local_world": 1, "node": 0, "addr": "127.0.0.1",
              "port": free_port()}
    init_process_group(layout, "gpu")
    assert dist.get_backend() == "nccl" and rank_world() == (0, 1)
    total = torch.full((3,), 2.0, device=DEVICE)
    dist.all_reduce(total)
    assert torch.equal(total.cpu(), torch.full((3,), 2.0))
    local = {"x": np.arange(6, dtype=np.float32).reshape(3, 2), "label": np.array([4, 5, 6])}
    assert gather_strided(local) is local and broadcast("rank 0's") == "rank 0's"  # one rank: no traffic
    # the object collectives those helpers use with more ranks, through NCCL
    shares: list = [None]
    dist.all_gather_object(shares, local)
    gathered = interleave(shares)
    assert all(np.array_equal(gathered[k], local[k]) for k in local)
    box = [{"out": "run"}]
    dist.broadcast_object_list(box, src=0)
    assert box == [{"out": "run"}]


def test_lightning_ddp_fit_on_one_gpu(tmp_path: Path, dist_env):
    module, _ = tiny("edm_digits", tmp_path)
    seen = {}

    class Backend(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(backend=dist.get_backend(), world=dist.get_world_size(), device=pl_module.device.type)

    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = L.Trainer(accelerator="gpu", devices=1, strategy="ddp", max_steps=3, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[Backend()], default_root_dir=str(tmp_path), use_distributed_sampler=False)
    trainer.fit(LightningNeon(module), DataLoader([random_batch(module, 16)] * 3, batch_size=None))
    assert seen == {"backend": "nccl", "world": 1, "device": DEVICE.type}
    after = module.net.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before if before[k].is_floating_point())

"""The merge: formula, copy rules, mismatch errors, streaming equals in memory, peak memory."""

from __future__ import annotations

import gc
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from neon.core.errors import NeonError
from neon.merging.extrapolate import extrapolate, merge_files, w_for
from tests.helpers import rss_anon_mb


def make_pair(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    base = {
        "w": torch.randn(4, 3, generator=g),
        "half": torch.randn(5, generator=g).to(torch.bfloat16),
        "double": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "count": torch.tensor([3, 4], dtype=torch.int64),
        "mask": torch.tensor([[0.0, -math.inf], [0.0, 0.0]]),
        "flag": torch.tensor([True, False]),
    }
    aux = {k: (v + 0.1 * torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v + 1 if v.dtype == torch.int64 else ~v)
           for k, v in base.items()}
    aux["mask"] = base["mask"].clone()
    aux["mask"][1, 1] = 0.5  # differs, but -inf elsewhere makes the tensor non-finite: must be copied
    return base, aux


def test_formula_on_float_tensors():
    base, aux = make_pair()
    merged = extrapolate(base, aux, 0.8)
    torch.testing.assert_close(merged["w"], 1.8 * base["w"] - 0.8 * aux["w"])
    torch.testing.assert_close(merged["double"], 1.8 * base["double"] - 0.8 * aux["double"])
    assert merged["double"].dtype == torch.float64
    # bf16 is merged in float32 and cast back
    expect = (1.8 * base["half"].float() - 0.8 * aux["half"].float()).to(torch.bfloat16)
    assert merged["half"].dtype == torch.bfloat16 and torch.equal(merged["half"], expect)


def test_w_zero_is_base_and_w_minus_one_is_aux():
    base, aux = make_pair()
    assert all(torch.equal(extrapolate(base, aux, 0.0)[k], base[k]) for k in base)
    torch.testing.assert_close(extrapolate(base, aux, -1.0)["w"], aux["w"])


def test_integer_bool_and_nonfinite_entries_are_copied_from_base():
    base, aux = make_pair()
    merged = extrapolate(base, aux, 1.5)
    for key in ("count", "flag", "mask"):
        assert torch.equal(merged[key], base[key]), key


def test_blockwise_w_uses_first_matching_pattern_then_default():
    base, aux = make_pair()
    w = {"^w$": 2.0, "dou": -1.0, "default": 0.5}
    assert w_for("w", w) == 2.0 and w_for("double", w) == -1.0 and w_for("half", w) == 0.5
    with pytest.raises(NeonError, match="has no 'default'"):
        extrapolate(base, aux, {"^w$": 2.0})  # the rest's w is stated, never silently 0
    merged = extrapolate(base, aux, w)
    torch.testing.assert_close(merged["w"], 3 * base["w"] - 2 * aux["w"])
    torch.testing.assert_close(merged["double"], aux["double"])


@pytest.mark.parametrize("w", ["0.8", "abc", None, float("nan"), True])
def test_non_numeric_w_is_refused(w):
    base, aux = make_pair()
    with pytest.raises(NeonError, match="neon.w"):
        extrapolate(base, aux, w)


def test_key_and_shape_mismatch_name_the_key():
    base, aux = make_pair()
    extra = dict(aux, surplus=torch.zeros(1))
    with pytest.raises(NeonError, match="only in aux: surplus"):
        extrapolate(base, extra, 1.0)
    bad = dict(aux, w=torch.zeros(3, 4))
    with pytest.raises(NeonError, match=re.escape("key 'w' has shape (4, 3)")):
        extrapolate(base, bad, 1.0)


def test_streaming_safetensors_equals_in_memory(tmp_path: Path):
    base, aux = make_pair()
    save_file(base, tmp_path / "base.safetensors")
    save_file(aux, tmp_path / "aux.safetensors")
    for w in (0.7, {"w": 1.0, "default": 0.3}):
        out = merge_files(tmp_path / "base.safetensors", tmp_path / "aux.safetensors", w, tmp_path / "m.safetensors")
        streamed, expect = load_file(out), extrapolate(base, aux, w)
        assert set(streamed) == set(base)
        for k in base:
            assert streamed[k].dtype == expect[k].dtype and torch.equal(streamed[k], expect[k]), k


def test_streaming_lightning_checkpoint_keeps_layout(tmp_path: Path):
    base, aux = make_pair()
    for name, sd in (("base", base), ("aux", aux)):
        torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 3,
                    "optimizer_states": [{"junk": 1}], "pytorch-lightning_version": "2.0"}, tmp_path / f"{name}.ckpt")
    out = merge_files(tmp_path / "base.ckpt", tmp_path / "aux.ckpt", 1.2, tmp_path / "m.ckpt")
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["epoch"] == 3 and "optimizer_states" not in ckpt
    expect = extrapolate(base, aux, 1.2)
    for k in base:
        assert torch.equal(ckpt["state_dict"][f"net.{k}"], expect[k])
    # and a Lightning checkpoint can be streamed into safetensors
    st = load_file(merge_files(tmp_path / "base.ckpt", tmp_path / "aux.ckpt", 1.2, tmp_path / "m.safetensors"))
    assert torch.equal(st["net.w"], expect["w"])


def test_streaming_shape_mismatch_and_missing_file(tmp_path: Path):
    base, aux = make_pair()
    save_file(base, tmp_path / "base.safetensors")
    save_file(dict(aux, w=torch.zeros(2, 6)), tmp_path / "aux.safetensors")
    with pytest.raises(NeonError, match="key 'w' has shape"):
        merge_files(tmp_path / "base.safetensors", tmp_path / "aux.safetensors", 1.0, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()  # nothing half-written
    with pytest.raises(NeonError, match="does not exist"):
        merge_files(tmp_path / "nope.safetensors", tmp_path / "aux.safetensors", 1.0, tmp_path / "m.safetensors")



@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read memory")
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".safetensors.index.json"])
def test_streaming_holds_about_one_tensor(tmp_path: Path, suffix: str):
    # 16 tensors of 16 MiB each: two models are 512 MiB; streaming must stay near one tensor. The index is a
    # sharded checkpoint as diffusers and transformers write it (four shards of four tensors each).
    n, numel = 16, 4 * 1024 * 1024
    for name, fill in (("base", 1.0), ("aux", 2.0)):
        sd = {f"t{i}": torch.full((numel,), fill + i) for i in range(n)}
        if suffix == ".pt":
            torch.save(sd, tmp_path / f"{name}{suffix}")
        elif suffix == ".safetensors":
            save_file(sd, tmp_path / f"{name}{suffix}")
        else:
            weight_map = {}
            for shard in range(4):
                file = f"{name}-{shard + 1:05d}-of-00004.safetensors"
                keys = [f"t{i}" for i in range(4 * shard, 4 * shard + 4)]
                save_file({k: sd[k] for k in keys}, tmp_path / file)
                weight_map.update(dict.fromkeys(keys, file))
            (tmp_path / f"{name}{suffix}").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        del sd
    gc.collect()  # what earlier tests in this worker left behind is not the merge's
    start = rss_anon_mb()
    peak = [start]
    merge_files(tmp_path / f"base{suffix}", tmp_path / f"aux{suffix}", 1.0, tmp_path / "m.safetensors",
                on_tensor=lambda key: peak.append(rss_anon_mb()))
    tensor_mb = numel * 4 / 2**20
    # two models would be 32 tensors; the merge itself holds 3 to 6, and an xdist worker's allocator adds a few
    assert max(peak) - start < 12 * tensor_mb, f"peak grew by {max(peak) - start:.0f} MiB"
    merged = load_file(tmp_path / "m.safetensors")
    assert torch.equal(merged["t3"], torch.full((numel,), 2.0 * 4 - 5.0))


@pytest.mark.slow
def test_neon_merge_command(tmp_path: Path):
    base, aux = make_pair()
    save_file(base, tmp_path / "base.safetensors")
    save_file(aux, tmp_path / "aux.safetensors")
    cmd = [sys.executable, "-m", "neon.merging.merge_command", str(tmp_path / "base.safetensors"),
           str(tmp_path / "aux.safetensors")]
    ok = subprocess.run([*cmd, "--w", "0.8", "-o", str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert torch.equal(load_file(tmp_path / "out.safetensors")["w"], extrapolate(base, aux, 0.8)["w"])
    bad = subprocess.run([*cmd, "--w", "abc", "-o", str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "'abc'" in bad.stderr

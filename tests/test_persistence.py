"""The one persistence-pickle reader (neon.weights.persistence): a persistent network holding plain torch layers and
timm layers (as IMM's DiT does) loads as data with no layer class imported; any other global is refused."""

from __future__ import annotations

import enum
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from neon.core.errors import NeonError
from neon.weights.persistence import read_snapshot
from tests.helpers import rss_anon_mb


def _fake_module(name: str, added: list[str], **attrs) -> None:
    # pickle names globals by module and attribute; these stand-ins (and any missing parent package) exist
    # only while writing, so the real packages are never imported
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            sys.modules[parent] = types.ModuleType(parent)
            added.append(parent)
    module = types.ModuleType(name)
    for key, value in attrs.items():
        value.__module__, value.__qualname__ = name, key
        setattr(module, key, value)
    sys.modules[name] = module
    added.append(name)


class Mlp(nn.Module):
    """Stands in for timm's Mlp while writing (fc1, act, fc2) and carries an enum, as timm's layers do."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(3, 5), nn.GELU(approximate="tanh"), nn.Linear(5, 3)
        self.fmt = Format.NCHW


class Format(str, enum.Enum):
    NCHW = "NCHW"


class Evil:
    """A class no network holds."""


def _reconstruct_persistent_obj(meta):  # never called: it only names the global in the pickle
    raise RuntimeError("writer stand-in")


def write_pickle(path: Path, child: object, protocol: int) -> nn.Module:
    """{'ema': <persistent network>} whose state holds a torch Sequential and `child` (pickled plainly)."""
    added: list[str] = []
    _fake_module("torch_utils.persistence", added, _reconstruct_persistent_obj=_reconstruct_persistent_obj)
    _fake_module("timm.layers.mlp", added, Mlp=Mlp)
    _fake_module("timm.layers.format", added, Format=Format)
    _fake_module("training.evil", added, Evil=Evil)
    torch.manual_seed(0)
    net = nn.Module()
    net.body = nn.Sequential(nn.Linear(3, 4), nn.SiLU())
    net.register_buffer("scale", torch.arange(3.0))
    net.register_buffer("cache", torch.ones(2), persistent=False)
    net.mlp = child if isinstance(child, nn.Module) else Mlp()
    reference = net.state_dict()
    state = dict(net.__dict__, _init_kwargs={"hidden": 4}, _init_args=())
    if not isinstance(child, nn.Module):
        state["extra"] = child

    class Persistent:
        def __reduce__(self):
            return _reconstruct_persistent_obj, (dict(type="class", version=6, class_name="DiT",
                                                      module_src="raise SystemExit('source ran')", state=state),)
    try:
        with open(path, "wb") as f:
            pickle.dump({"ema": Persistent(), "augment_pipe": None}, f, protocol=protocol)
    finally:
        for name in added:
            del sys.modules[name]
    return reference


@pytest.mark.parametrize("protocol", [3, pickle.HIGHEST_PROTOCOL])  # snapshots use the default, 4
def test_torch_and_timm_layers_load_as_inert_records(tmp_path: Path, protocol: int):
    reference = write_pickle(tmp_path / "snap.pkl", Mlp(), protocol)
    imported = set(sys.modules)
    snap = read_snapshot(tmp_path / "snap.pkl")
    assert snap.class_name == "DiT" and snap.init_kwargs == {"hidden": 4}
    assert list(snap.state_dict) == list(reference)  # the module tree's order; non-persistent buffers left out
    assert all(torch.equal(snap.state_dict[k], v) for k, v in reference.items())
    assert not any(m.startswith(("timm", "training", "torch_utils")) for m in set(sys.modules) - imported)


def test_a_global_outside_the_network_layers_is_refused(tmp_path: Path):
    write_pickle(tmp_path / "evil.pkl", Evil(), 4)
    with pytest.raises(NeonError, match="'training.evil.Evil'.*refusing"):
        read_snapshot(tmp_path / "evil.pkl", what="IMM snapshot")
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "evil.pkl").read_bytes()[:50])
    with pytest.raises(NeonError, match="cannot read snapshot '.*cut.pkl'"):
        read_snapshot(tmp_path / "cut.pkl")



@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read memory")
def test_merging_two_snapshots_streams_their_storages(tmp_path: Path):
    import gc

    from safetensors.torch import load_file

    from neon.merging.extrapolate import merge_files

    # two snapshots of 16 layers × 16 MiB: a model is 256 MiB; the merge should hold a few layers at a time
    n, width = 16, 2048
    for name, fill in (("base", 1.0), ("aux", 2.0)):
        child = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(n)])
        with torch.no_grad():
            for i, layer in enumerate(child):
                layer.weight.fill_(fill + i)
        write_pickle(tmp_path / f"{name}.pkl", child, pickle.HIGHEST_PROTOCOL)
        del child
    gc.collect()
    start = rss_anon_mb()
    peak = [start]
    merge_files(tmp_path / "base.pkl", tmp_path / "aux.pkl", 1.0, tmp_path / "m.safetensors",
                on_tensor=lambda key: peak.append(rss_anon_mb()))
    layer_mb = width * width * 4 / 2**20
    assert max(peak) - start < 8 * layer_mb, f"peak grew by {max(peak) - start:.0f} MiB (a layer is {layer_mb} MiB)"
    merged = load_file(tmp_path / "m.safetensors")
    assert torch.equal(merged["mlp.3.weight"], torch.full((width, width), 2.0 * 4 - 5.0))
    assert not list(tmp_path.glob(".neon-spill-*"))  # the spilled storages are gone

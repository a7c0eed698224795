"""Write small EDM snapshots in the official pickle layout, with random weights.

Official snapshots cannot be downloaded here, so tests make their own: a dict {'ema': network,
'loss_fn': ..., 'augment_pipe': ..., 'dataset_kwargs': ...} where each network object is pickled as
NVIDIA's persistence hook does it, i.e. as a call of `torch_utils.persistence._reconstruct_persistent_obj`
with {'type', 'version', 'module_src', 'class_name', 'state'} and the module's __dict__ as state.

  python tests/edm_snapshot.py OUT.pkl    # a tiny class-conditional DDPM++ snapshot
"""

from __future__ import annotations

import copy
import pickle
import sys
import types
from pathlib import Path

import torch
from torch import nn

from neon.families.edm.blocks import (
    Dense,
    GroupNormFloor,
    RandomFourierEmbedding,
    ResamplingConv,
    ResBlock,
    SinusoidalEmbedding,
)
from neon.families.edm.module import build_network
from neon.families.edm.res_mlp import ResMLP
from neon.families.edm.unets import ADMUNet, DDPMppUNet

# the class name each of our modules has in a released pickle
RELEASE_NAMES = {DDPMppUNet: "SongUNet", ADMUNet: "DhariwalUNet", ResMLP: "ResMLP", ResBlock: "UNetBlock",
                 ResamplingConv: "Conv2d", Dense: "Linear", GroupNormFloor: "GroupNorm",
                 SinusoidalEmbedding: "PositionalEmbedding", RandomFourierEmbedding: "FourierEmbedding"}

TINY_DDPMPP = dict(
    precond="EDMPrecond", img_resolution=8, img_channels=3, label_dim=10, model_type="SongUNet", augment_dim=9,
    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13,
    embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
    resample_filter=[1, 1],
)


def _fake_module(name: str, **attrs) -> types.ModuleType:
    # pickle names globals by module and attribute; these stand-ins exist only while writing
    parent = name.rpartition(".")[0]
    if parent and parent not in sys.modules:
        sys.modules[parent] = types.ModuleType(parent)
    module = types.ModuleType(name)
    for key, value in attrs.items():
        value.__module__ = name
        setattr(module, key, value)
    sys.modules[name] = module
    return module


def _reconstruct_persistent_obj(meta):  # never called: it only names the global in the pickle
    raise RuntimeError("writer stand-in")


class EasyDict(dict):
    """Stands in for dnnlib.util.EasyDict."""


class _PersistentPickler(pickle.Pickler):
    """Pickles our EDM modules the way the persistence hook does; torch containers stay as they are."""

    def __init__(self, file, class_names: dict[int, str], init_kwargs: dict[int, dict]):
        super().__init__(file, protocol=pickle.DEFAULT_PROTOCOL)
        self.class_names, self.init_kwargs = class_names, init_kwargs

    def reducer_override(self, obj):
        if id(obj) in self.class_names:
            state = dict(obj.__dict__)
            state["_init_args"] = ()
            state["_init_kwargs"] = copy.deepcopy(self.init_kwargs.get(id(obj), {}))
            meta = dict(type="class", version=6, module_src="# source omitted\n", class_name=self.class_names[id(obj)],
                        state=state)
            return _reconstruct_persistent_obj, (meta,)
        return NotImplemented


def write_snapshot(path: str | Path, network: dict | None = None, seed: int = 0, with_ema: bool = True,
                   extra_globals: bool = False) -> nn.Module:
    """Write an official-layout snapshot of a random network built from `network`; return the network."""
    network = dict(network or TINY_DDPMPP)
    torch.manual_seed(seed)
    net = build_network(network).eval().requires_grad_(False)
    with torch.no_grad():  # zero-initialised output layers would make every test image identical
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    _fake_module("torch_utils.persistence", _reconstruct_persistent_obj=_reconstruct_persistent_obj)
    _fake_module("dnnlib.util", EasyDict=EasyDict)
    kwargs = {k: v for k, v in network.items() if k != "precond"}
    names = {id(m): RELEASE_NAMES.get(type(m), type(m).__name__) for m in net.modules()
             if not isinstance(m, (nn.ModuleDict, nn.ModuleList, nn.Sequential))}
    names[id(net)] = network.get("precond", "EDMPrecond")
    loss = types.SimpleNamespace(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    names[id(loss)] = "EDMLoss"
    data = {"loss_fn": loss, "augment_pipe": None,
            "dataset_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset", path="datasets/x.zip")}
    if with_ema:
        data = {"ema": net, **data}
    if extra_globals:
        data["payload"] = print  # a global no snapshot needs: the reader must refuse it
    with open(path, "wb") as f:
        _PersistentPickler(f, names, {id(net): kwargs}).dump(data)
    return net


if __name__ == "__main__":
    write_snapshot(sys.argv[1])
    print(sys.argv[1])

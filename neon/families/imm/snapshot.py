"""Reading the parameters out of IMM's released snapshots (`imagenet256_ts_a2.pkl`) without running them.

The snapshots are pickles in the EDM persistence format: each network module carries its defining source
code, which a plain `pickle.load` executes, and its tensors are legacy `torch.save` blobs. Here every class
is replaced by an inert stand-in that only records its state, the embedded source is dropped unread, and
tensors are decoded by torch's weights-only loader; the module tree is then walked into a state dict."""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from neon.errors import NeonError
from neon.io import StateDict


class Stub(dict):
    """Any pickled object: keeps its constructor arguments and state, runs nothing."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self["state"] = state


def _stub_class(qualified_name: str) -> type:
    return type("Stub", (Stub,), {"qualified_name": qualified_name})


def _persistent(meta: dict) -> Stub:
    # the persistence format's reconstructor: keep the class name and state, never the module source
    obj = _stub_class(str(meta.get("class_name", "?")))()
    obj["state"] = meta.get("state", {})
    return obj


def _storage(blob: bytes):
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _reconstructor(cls: type, base: type, state: Any = None) -> Any:
    return cls.__new__(cls)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("copyreg", "_reconstructor"): _reconstructor,
}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _stub_class(f"{module}.{name}")


def _state_of(obj: Any) -> dict:
    return obj.get("state", {}) if isinstance(obj, Stub) else {}


def module_state_dict(obj: Any, prefix: str = "") -> StateDict:
    """The state dict of a pickled nn.Module stand-in: parameters, persistent buffers, then submodules."""
    state = _state_of(obj)
    out: StateDict = {}
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in skip:
            out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def read_snapshot_pickle(path: str | Path, entry: str = "ema") -> tuple[StateDict, dict]:
    """(state dict, recorded constructor kwargs) of the network under `entry` of a persistence pickle."""
    try:
        with open(path, "rb") as f:
            data = _InertUnpickler(f).load()
    except Exception as exc:  # truncated, foreign or corrupt files
        raise NeonError(f"cannot read IMM snapshot '{path}': {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or entry not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise NeonError(f"'{path}' has no '{entry}' network (it holds {keys}): give an IMM snapshot .pkl")
    state = module_state_dict(data[entry])
    if not state:
        raise NeonError(f"'{path}': the '{entry}' entry holds no parameters")
    kwargs = _state_of(data[entry]).get("_init_kwargs") or {}
    return state, dict(kwargs) if isinstance(kwargs, dict) else {}

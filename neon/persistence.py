"""Read a network out of an NVIDIA persistence pickle (EDM's `network-snapshot-*.pkl`, IMM's
`imagenet256_ts_a2.pkl`) without running any code inside it.

Such a pickle rebuilds each persistent network by executing the source it embeds. Here the persistence
hook is answered by an inert record of the class name and pickled state (the source is dropped unread);
tensors are rebuilt by torch's own routines, their storages by torch's weights-only loader; the torch and
timm layers a persistent network holds (nn.Linear, timm's Attention, ...) become inert records of their
state, named after their class and never imported. Every other global is refused. The weights are then
walked out of the records into a state dict, for our own classes to load."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neon.errors import NeonError
from neon.io import StateDict, first_line

# Where the layers inside a persistent network come from: their classes are stood in for, never imported.
LAYER_MODULES = ("torch.nn.modules.", "timm.layers.", "timm.models.")


class Record:
    """A pickled object of class `class_name`: its constructor arguments and state; no code of it runs."""

    class_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.state = args, {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {}


def _persistent(meta: dict) -> Record:
    # the persistence hook's reconstructor: keep the class name and state, never the embedded source
    record = Record()
    record.class_name = str(meta.get("class_name", "?"))
    record.state = dict(meta.get("state") or {})
    return record


_LAYER_RECORDS: dict[str, type] = {}


def _layer_record(qualified_name: str) -> type:
    """The inert stand-in class of one layer class (one per name, so NEWOBJ and BUILD find the same one)."""
    if qualified_name not in _LAYER_RECORDS:
        _LAYER_RECORDS[qualified_name] = type("LayerRecord", (Record,), {"class_name": qualified_name})
    return _LAYER_RECORDS[qualified_name]


class _EasyDict(dict):
    """dnnlib's attribute dict, as a plain dict."""


def _storage(data: bytes):
    # the nested bytes are a torch.save'd storage: read them with torch's weights-only loader
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, what: str):
        super().__init__(file)
        self.path, self.what = path, what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(LAYER_MODULES) and name[:1].isupper():
            return _layer_record(f"{module}.{name}")
        raise NeonError(f"{self.what} '{self.path}' refers to '{module}.{name}', which a network snapshot does not "
                        "need; refusing to load it (a pickle can run code): use an official snapshot or a "
                        ".safetensors file")


def _state_dict(node: Record, prefix: str, out: StateDict) -> None:
    state = node.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if value is not None and not (kind == "_buffers" and name in skip):
                out[prefix + name] = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Record):
            _state_dict(child, f"{prefix}{name}.", out)


@dataclass
class Snapshot:
    """One network of a persistence pickle: its class name, recorded constructor kwargs and weights."""

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: StateDict


def read_snapshot(path: str | Path, entry: str = "ema", what: str = "snapshot") -> Snapshot:
    """The network under `entry` of a persistence pickle, as data; `what` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise NeonError(f"{what} '{path}' does not exist: give the path of the release's .pkl file")
    with open(path, "rb") as f:
        try:
            data = _SafeUnpickler(f, path, what).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError,
                ValueError, RuntimeError) as exc:  # truncated, corrupt or foreign files
            raise NeonError(f"cannot read {what} '{path}': {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(data, dict) or entry not in data:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise NeonError(f"{what} '{path}' has no '{entry}' network (found: {found}): give a training snapshot "
                        "that holds one")
    net = data[entry]
    if not isinstance(net, Record):
        raise NeonError(f"{what} '{path}': '{entry}' is not a pickled network")
    if net.state.get("_init_args"):
        raise NeonError(f"{what} '{path}': positional constructor arguments are not supported")
    state: StateDict = {}
    _state_dict(net, "", state)
    if not state:
        raise NeonError(f"{what} '{path}': the '{entry}' network holds no parameters")
    kwargs = net.state.get("_init_kwargs") or {}
    return Snapshot(net.class_name, dict(kwargs) if isinstance(kwargs, dict) else {}, state)

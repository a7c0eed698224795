"""Read an official EDM snapshot (`network-snapshot-*.pkl`) without running the code inside it.

The snapshots are pickles written through NVIDIA's persistence hook, which embeds each network's
source and rebuilds it by executing that source. Here the hook is answered by a stand-in that keeps
only the class name and the pickled state; tensors are rebuilt by torch's own safe routines; every
other global is refused. The network is then rebuilt from our own classes."""

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


class _Persistent:
    """A pickled object of a persistent class: its class name and state, no code run."""

    def __init__(self, meta: dict):
        self.class_name = meta.get("class_name")
        self.state = dict(meta.get("state") or {})


class _Container:
    """A pickled torch container (ModuleDict, ModuleList, Sequential): its state only."""

    def __setstate__(self, state: dict) -> None:
        self.state = dict(state)


class _EasyDict(dict):
    """dnnlib's attribute dict, as a plain dict."""


def _bytes_to_storage(data: bytes):
    # the nested bytes are a torch.save'd storage: read them with torch's weights-only loader
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _bytes_to_storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Persistent,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch.nn.modules.container", "ModuleDict"): _Container,
    ("torch.nn.modules.container", "ModuleList"): _Container,
    ("torch.nn.modules.container", "Sequential"): _Container,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise NeonError(
                f"snapshot '{self.path}' refers to '{module}.{name}', which a network snapshot does not need; "
                "refusing to load it (a pickle can run code): use an official EDM snapshot or a .safetensors file"
            ) from None


def _flatten(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = node.state
    for kind in ("_parameters", "_buffers"):
        skip = state.get("_non_persistent_buffers_set", set()) if kind == "_buffers" else set()
        for name, value in (state.get(kind) or {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _flatten(child, f"{prefix}{name}.", out)


@dataclass
class Snapshot:
    """The `ema` network of an official snapshot: its class, constructor kwargs and weights."""

    class_name: str
    init_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def read_snapshot(path: str | Path, key: str = "ema") -> Snapshot:
    """Parse an official snapshot pickle and return its `ema` network as data."""
    path = Path(path)
    if not path.is_file():
        raise NeonError(f"snapshot '{path}' does not exist; give the path of a network-snapshot-*.pkl file")
    try:
        with open(path, "rb") as f:
            data = _SafeUnpickler(f, path).load()
    except NeonError:
        raise
    except Exception as exc:
        raise NeonError(f"cannot read snapshot '{path}': {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or key not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise NeonError(f"snapshot '{path}' has no '{key}' network (found: {found}): expected an EDM training snapshot")
    net = data[key]
    if not isinstance(net, _Persistent):
        raise NeonError(f"snapshot '{path}': '{key}' is not a persistent network object")
    if net.state.get("_init_args"):
        raise NeonError(f"snapshot '{path}': positional constructor arguments are not supported")
    state: dict[str, torch.Tensor] = {}
    _flatten(net, "", state)
    return Snapshot(net.class_name, dict(net.state.get("_init_kwargs") or {}), state)

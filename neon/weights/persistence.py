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

from neon.core.errors import NeonError
from neon.core.io import StateDict, first_line

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


class _SafeGlobals:
    """The globals a snapshot may name: the allow-list, torch dtypes and inert layer records; nothing else."""

    path: Path
    what: str

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


class _SafeUnpickler(_SafeGlobals, pickle.Unpickler):
    def __init__(self, file, path: Path, what: str):
        super().__init__(file)
        self.path, self.what = path, what


class _SpilledBytes:
    """A bytes payload of the pickle, left in a file instead of memory."""

    def __init__(self, path: Path):
        self.path = path


SPILL_BYTES = 1 << 20  # payloads from this size on go to disk; smaller ones stay in memory


class _SpillingUnpickler(_SafeGlobals, pickle._Unpickler):
    """The safe unpickler in Python (so its bytes opcodes can be redirected): each large bytes payload (a
    storage) is copied to a file under `folder` as it is read, and its storage is rebuilt mapped from disk.
    A pickle keeps every payload it read until the end (its memo), so in memory that would be the whole model;
    this way it holds about one storage's worth."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path, what: str, folder: Path):
        super().__init__(file)
        self.path, self.what, self.folder, self.count = path, what, folder, 0

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._mapped_storage
        return super().find_class(module, name)

    def _bytes(self, size: int) -> None:
        if size < SPILL_BYTES:
            self.append(self.read(size))
            return
        self.count += 1
        target = self.folder / f"payload-{self.count}.pt"
        with open(target, "wb") as out:
            left = size
            while left:  # in small chunks: a large bytes object would leave the allocator holding its size
                chunk = self.read(min(left, SPILL_BYTES))
                if not chunk:
                    raise EOFError("the pickle ends inside a bytes payload")
                out.write(chunk)
                left -= len(chunk)
        self.append(_SpilledBytes(target))

    def _binbytes(self) -> None:
        self._bytes(int.from_bytes(self.read(4), "little"))

    def _binbytes8(self) -> None:
        self._bytes(int.from_bytes(self.read(8), "little"))

    dispatch[pickle.BINBYTES[0]] = _binbytes
    dispatch[pickle.BINBYTES8[0]] = _binbytes8

    def _mapped_storage(self, data: bytes | _SpilledBytes):
        return _storage(data) if isinstance(data, bytes) else _map_legacy_storage(data.path)

class _StorageHeader(pickle.Unpickler):
    """Reads the small pickles in front of a legacy torch.save of one storage; names only storage classes."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"a storage payload names '{module}.{name}'")

    def persistent_load(self, pid: Any) -> Any:
        return pid


def _map_legacy_storage(path: Path):
    """The storage of a legacy torch.save file (the payload a pickled storage carries), mapped from the file.
    That format is: pickled magic number, format version and system info; the pickled storage, a persistent
    id ('storage', class, key, location, numel[, view]); the pickled list of keys; then per key an int64
    element count and the raw bytes, which end the file."""
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, format version, system info
            _StorageHeader(f).load()
        pid = _StorageHeader(f).load()
        keys = _StorageHeader(f).load()
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and len(keys) == 1):
            raise pickle.UnpicklingError("a storage payload does not hold exactly one storage")
        numel = int.from_bytes(f.read(8), "little")
        offset = f.tell()
    kind = pid[1]
    typed = kind is not torch.UntypedStorage
    dtype = kind._dtype if typed else torch.uint8  # (`.dtype` warns that typed storages are deprecated)
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    if offset + nbytes != path.stat().st_size:
        raise pickle.UnpicklingError("a storage payload's size does not match its element count")
    if nbytes == 0:
        raw = torch.UntypedStorage(0)
    else:  # copy-on-write mapping: pages stay on disk until read, and nothing is written back
        raw = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,)))
        raw = raw.untyped_storage()
    return torch.TypedStorage(wrap_storage=raw, dtype=dtype, _internal=True) if typed else raw


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


def read_snapshot(path: str | Path, entry: str = "ema", what: str = "snapshot",
                  spill_dir: str | Path | None = None) -> Snapshot:
    """The network under `entry` of a persistence pickle, as data; `what` names the file in errors. With
    `spill_dir` (an existing folder that outlives the weights), each storage is written there and mapped back
    instead of held in memory."""
    path = Path(path)
    if not path.is_file():
        raise NeonError(f"{what} '{path}' does not exist: give the path of the release's .pkl file")
    with open(path, "rb") as f:
        try:
            reader = (_SafeUnpickler(f, path, what) if spill_dir is None
                      else _SpillingUnpickler(f, path, what, Path(spill_dir)))
            data = reader.load()
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

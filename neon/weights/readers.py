"""The one reader of weights files, behind `model.checkpoint`, `neon-merge` and `task=merge`: every format a
family reads, whole (`read_weights`) or a tensor at a time (`open_weights`).

Formats, told apart by content (the suffix only separates persistence pickles from legacy torch pickles):
- NVIDIA persistence pickles (EDM's `network-snapshot-*.pkl`, IMM's releases): their `ema` network, read
  by `neon.weights.persistence` without running any code;
- torch files, read by torch's weights-only loader with the globals training checkpoints hold
  (`argparse.Namespace`, as in xAR's): a flat state dict (VAR's and xAR's releases), a Lightning checkpoint
  (`state_dict`, its `ema.`/`net.` network), a training checkpoint `{'model', 'model_ema', ...}` or the
  Neon authors' fine-tune layout `{'model_ema', 'epoch'}` (`weights` picks the EMA or the raw weights);
- safetensors, and sharded safetensors through their `*.safetensors.index.json` (or its folder)."""

from __future__ import annotations

import argparse
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from neon.core.errors import NeonError
from neon.core.io import UNREADABLE, StateDict, read_error, torch_mmap_able

# Globals a training checkpoint holds besides tensors: harmless data classes only.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
WEIGHTS = ("ema", "model")
FORMATS = ("an NVIDIA .pkl snapshot, a torch state dict, a Lightning .ckpt, a training checkpoint with "
           "'model'/'model_ema', .safetensors or a sharded *.safetensors.index.json")

_ST_TO_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise NeonError(f"{what} '{path}' does not exist; give the path of an existing file")


def shard_index(path: Path) -> Path | None:
    """The index file of a sharded safetensors checkpoint given as the index or its folder, else None."""
    if path.is_file() and path.name.endswith(".index.json"):
        return path
    if path.is_dir():
        found = sorted(path.glob("*.safetensors.index.json"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise NeonError(f"folder '{path}' holds {len(found)} safetensors index files "
                            f"({', '.join(p.name for p in found)}): give the one to read")
    return None


def format_of(path: str | os.PathLike) -> str:
    """'snapshot', 'torch', 'safetensors' or 'sharded', from the file's first bytes (and '.pkl')."""
    path = Path(path)
    if shard_index(path) is not None:
        return "sharded"
    if path.is_dir():
        raise NeonError(f"checkpoint '{path}' is a folder without a *.safetensors.index.json: give a weights file")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "torch"  # torch's zip archive
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < path.stat().st_size:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if head[:1] == b"\x80" and path.suffix == ".pkl":
        return "snapshot"
    if path.suffix == ".safetensors":
        return "safetensors"  # let the safetensors reader say what is wrong
    return "torch"


def unwrap(obj: Any, path: str | os.PathLike, weights: str = "ema") -> StateDict:
    """The network's weights inside a loaded torch checkpoint (see the module docstring for the layouts)."""
    if weights not in WEIGHTS:
        raise NeonError(f"weights must be one of {list(WEIGHTS)} (model.weights), got {weights!r}")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        full = obj["state_dict"]
        # a Lightning checkpoint of a NeonModule holds `net.*` and maybe `ema.*`
        for prefix in (("ema.", "net.") if weights == "ema" else ("net.",)):
            inner = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
            if inner:
                return inner
        obj = full
    elif isinstance(obj, Mapping) and ("model" in obj or "model_ema" in obj):
        key = "model_ema" if weights == "ema" else "model"
        if key not in obj:
            other = "model" if key == "model_ema" else "model_ema"
            raise NeonError(f"checkpoint '{path}' has no '{key}' entry (it has '{other}'): set "
                            f"model.weights={'model' if weights == 'ema' else 'ema'}")
        obj = obj[key]
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    found = ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
    raise NeonError(f"checkpoint '{path}' holds no state dict (found: {found}): give {FORMATS}")


def _torch_load(path: Path, what: str, mmap: bool) -> Any:
    # mapped only where the file allows it (an uncompressed zip): torch maps a DEFLATE-compressed archive without
    # complaint and hands back its compressed bytes as tensors, and cannot map a legacy non-zip file at all
    mmap = mmap and torch_mmap_able(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UNREADABLE as exc:
        raise read_error(path, exc, what) from None


def read_weights(path: str | os.PathLike, what: str = "checkpoint", weights: str = "ema") -> StateDict:
    """All the weights of the network in a file of any supported format, on the CPU."""
    with open_weights(path, what, weights) as lazy:
        return {k: lazy[k] for k in lazy.keys()}


class LazyWeights:
    """Read-one-tensor-at-a-time access to the weights of a checkpoint (see `open_weights`)."""

    def __init__(self, path: str | os.PathLike, what: str = "checkpoint", weights: str = "ema",
                 spill_dir: str | os.PathLike | None = None, keep_layout: bool = False):
        self.path, self.what = Path(path), what
        _require(self.path, what)
        self.container: dict[str, Any] | None = None  # a Lightning checkpoint's other entries
        self._handles: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        self._tensors: StateDict | None = None
        self._spill: tempfile.TemporaryDirectory | None = None
        kind = format_of(self.path)
        if kind == "sharded":
            index = shard_index(self.path)
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise NeonError(f"{what} index '{index}' is not a safetensors index ({type(exc).__name__}: {exc}): "
                                "it needs a 'weight_map' of tensor name → shard file") from None
            for key, shard in weight_map.items():
                self._where[key] = index.parent / shard
            for shard in sorted(set(self._where.values())):
                _require(shard, f"shard of {what} '{index}'")
        elif kind == "safetensors":
            self._open(self.path)
            self._where = {k: self.path for k in self._handles[self.path].keys()}
        elif kind == "snapshot":
            # a pickle cannot be mapped: its storages are spilled to files as it is read and mapped back
            from neon.weights.persistence import read_snapshot  # persistence reads StateDict from neon.core.io

            self._spill = tempfile.TemporaryDirectory(prefix=".neon-spill-", dir=spill_dir)
            self._tensors = read_snapshot(self.path, what=what, spill_dir=self._spill.name).state_dict
        else:
            # mmap keeps tensors on disk until touched, so a big checkpoint costs no memory here (a compressed
            # or legacy file cannot be mapped and is read whole)
            obj = _torch_load(self.path, what, mmap=True)
            if keep_layout and isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
                # merging a Lightning checkpoint: keep its layout (net.* and ema.*) and its other entries
                self.container = {k: v for k, v in obj.items() if k != "state_dict"}
                self._tensors = dict(obj["state_dict"])
            else:
                self._tensors = unwrap(obj, self.path, weights)
        self._keys = list(self._tensors) if self._tensors is not None else list(self._where)

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except UNREADABLE as exc:
                raise read_error(path, exc, self.what) from None
        return self._handles[path]

    def keys(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        return self._open(self._where[key]).get_tensor(key)

    def meta(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """dtype and shape of one tensor, without reading its data where the format allows."""
        if self._tensors is not None:
            t = self._tensors[key]
            return t.dtype, tuple(t.shape)
        sl = self._open(self._where[key]).get_slice(key)
        return _ST_TO_TORCH[sl.get_dtype()], tuple(sl.get_shape())

    def close(self) -> None:
        """Drop the file handles and any spilled copy."""
        self._handles.clear()
        self._tensors = None
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None

    def __enter__(self) -> "LazyWeights":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_weights(path: str | os.PathLike, what: str = "checkpoint", weights: str = "ema",
                 spill_dir: str | os.PathLike | None = None, keep_layout: bool = False) -> LazyWeights:
    """The weights of a file, a tensor at a time, as a context manager: safetensors and uncompressed torch zip
    files are mapped, not read (compressed and legacy non-zip torch files are read whole); a pickle snapshot's
    storages are spilled as it is read, one at a time, to files in `spill_dir` (the system's temporary folder when
    None) and mapped back. With `keep_layout` (the merge), a Lightning checkpoint keeps its whole `state_dict` and
    its other entries (`container`)."""
    return LazyWeights(path, what, weights, spill_dir, keep_layout)

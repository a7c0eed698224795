"""Files: atomic writes, state-dict reading and writing, content digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from neon.errors import NeonError

StateDict = dict[str, torch.Tensor]

# What reading a corrupt, truncated or foreign weights file raises (torch's zip and pickle readers, the
# weights-only unpickler, safetensors); anything else is a bug and keeps its traceback.
UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, KeyError, SafetensorError)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, indented, keys in a stable order."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def digest_config(obj: Any) -> str:
    """A short stable hash of a JSON-able object (a resolved config section)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def digest_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save tensors as safetensors (atomically)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def dim_of(state: Mapping[str, torch.Tensor], key: str, axis: int) -> int | None:
    """The size of `state[key]` along `axis` (None when the key or the axis is absent): for checking a
    checkpoint's architecture against a config before loading it."""
    return int(state[key].shape[axis]) if key in state and state[key].dim() > axis else None


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise NeonError(f"{what} '{path}' does not exist; give the path of an existing file")


def unwrap_state_dict(obj: Any, path: Path) -> StateDict:
    """Find the weights inside a loaded checkpoint: a plain state dict or a Lightning checkpoint."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        full = obj["state_dict"]
        # A Lightning checkpoint of a NeonModule holds `net.*` and maybe `ema.*`; sampling uses EMA.
        for prefix in ("ema.", "net."):
            inner = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
            if inner:
                return inner
        return dict(full)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise NeonError(
        f"'{path}' holds no state dict (expected tensors, or a Lightning checkpoint with 'state_dict')"
    )


def rename_keys(state: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]]) -> StateDict:
    """The state dict with every key rewritten by the regex rules (pattern, replacement), in order."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint", safe_globals: Sequence[type] = ()) -> Any:
    """A torch file read on the CPU by torch's weights-only loader (plus `safe_globals`); a file that
    cannot be read is a one-line NeonError naming it."""
    path = Path(path)
    _require_file(path, what)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as exc:
        raise NeonError(f"cannot read {what} '{path}': {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def load_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> StateDict:
    """Read weights from .safetensors, a torch state dict, or a Lightning checkpoint, on the CPU."""
    path = Path(path)
    _require_file(path, what)
    if path.suffix != ".safetensors":
        return unwrap_state_dict(read_torch_file(path, what), path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except UNREADABLE as exc:
        raise NeonError(f"cannot read {what} '{path}': {type(exc).__name__}: {exc}") from None


def check_state_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                     target: str, hint: str) -> None:
    """Refuse weights from `source` whose keys or shapes differ from `own` (those of `target`), naming the
    first few missing and unexpected keys or the first misshapen one, and `hint`: the settings to check."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

        detail = ([f"missing {some(missing)}"] if missing else []) + \
            ([f"unexpected {some(unexpected)}"] if unexpected else [])
        raise NeonError(f"{source} does not fit {target} ({'; '.join(detail)}): {hint}")
    for key, value in own.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise NeonError(f"{source}: key '{key}' has shape {tuple(state[key].shape)} but {target} expects "
                            f"{tuple(value.shape)}: {hint}")

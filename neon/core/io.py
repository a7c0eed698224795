"""Files: atomic writes, state-dict reading and writing, content digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from neon.core.errors import NeonError

StateDict = dict[str, torch.Tensor]

# What reading a corrupt, truncated or foreign weights file raises (torch's zip and pickle readers, the
# weights-only unpickler, which meets garbage opcodes with IndexError or TypeError, safetensors); anything
# else is a bug and keeps its traceback.
UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError,
              struct.error, SafetensorError)


def _umask() -> int:
    # the process umask can only be read by setting it; set it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. The file
    gets the mode a plain open() would give it (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A folder written under a temporary name beside `path`, renamed into place (replacing what was there) when
    the block ends without error; a failed block leaves no partial folder."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield work
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# Where a written object held non-finite numbers: {dotted path: "inf" | "-inf" | "nan"}; they are null
# in the file (strict JSON has no Infinity or NaN), and read_json puts them back.
NON_FINITE = "non_finite"


def _finite_only(obj: Any, path: str, flags: dict[str, str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        flags[path] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    if isinstance(obj, Mapping):
        return {k: _finite_only(v, f"{path}.{k}" if path else str(k), flags) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_only(v, f"{path}.{i}" if path else str(i), flags) for i, v in enumerate(obj)]
    return obj


def strict_json(obj: Any) -> Any:
    """`obj` with non-finite floats as null, listed under 'non_finite' (top-level mappings)."""
    flags: dict[str, str] = {}
    out = _finite_only(obj, "", flags)
    if flags and isinstance(out, dict):
        out[NON_FINITE] = flags
    return out


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write strict JSON atomically, indented, keys in a stable order (non-finite numbers: see NON_FINITE)."""
    write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read what write_json wrote, with its non-finite numbers restored."""
    obj = json.loads(Path(path).read_text())
    flags = obj.pop(NON_FINITE, None) if isinstance(obj, dict) else None
    for dotted, value in (flags or {}).items():
        *parents, last = dotted.split(".")
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = float(value)
        else:
            node[last] = float(value)
    return obj


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


def save_torch_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save tensors as a flat torch state dict (`torch.save`, readable with weights_only=True), atomically;
    a tensor that views a larger storage is copied, so the file holds only the tensors' own bytes."""
    path = Path(path)
    tensors = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        tensors[k] = v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (what `sha256sum` prints), read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def read_error(path: Path, exc: BaseException, what: str = "checkpoint") -> NeonError:
    """One line saying why a weights file could not be read: empty, not a checkpoint at all, a pickle
    holding more than tensors (refused: reading it could run code), or the reader's own first line."""
    size = path.stat().st_size if path.is_file() else -1
    if size == 0:
        return NeonError(f"{what} '{path}' is empty (0 bytes): not a checkpoint; write it again or give another file")
    with open(path, "rb") as f:
        head = f.read(8)
    looks_torch = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # a zip archive, or a pickle
    if path.suffix != ".safetensors" and not looks_torch:
        return NeonError(f"{what} '{path}' is not a checkpoint file (neither a torch zip archive nor a pickle; it "
                         f"starts with {head!r}): give a .safetensors, .pt or Lightning .ckpt file")
    if "Weights only load failed" in str(exc):
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        return NeonError(f"{what} '{path}' holds Python objects besides tensors"
                         f"{f' ({found.group(1)})' if found else ''}: reading it could run code, so neon refuses it; "
                         "save the weights as .safetensors or as a torch state dict of tensors")
    return NeonError(f"cannot read {what} '{path}' (truncated or corrupt?): {type(exc).__name__}: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    """The first line of a reader's message, never torch's advice to load with weights_only=False (that
    would run the file's code)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return "(torch's advice to lift the weights-only check left out)" if "weights_only" in first else first


def torch_mmap_able(path: str | os.PathLike) -> bool:
    """Whether `torch.load(path, mmap=True)` reads this file right, decided from the file: a torch zip archive
    whose entries are all stored uncompressed. A DEFLATE entry's bytes on disk are not the tensor's (torch maps
    them anyway and returns garbage, or fails to resize the storage) and a legacy non-zip file has no records."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # torch's own zip test: the first local file header
                return False
        with zipfile.ZipFile(path) as archive:  # reads only the central directory, not the data
            return all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False  # not mappable; the plain load says what is wrong with the file


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint", safe_globals: Sequence[type] = ()) -> Any:
    """A torch file read on the CPU by torch's weights-only loader (plus `safe_globals`); a file that
    cannot be read is a one-line NeonError naming it."""
    path = Path(path)
    _require_file(path, what)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as exc:
        raise read_error(path, exc, what) from None


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
        raise read_error(path, exc, what) from None


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

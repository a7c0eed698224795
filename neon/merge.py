"""The Neon merge: θ_neon = (1 + w)·θ_r − w·θ_s, over state dicts in memory or streamed from files."""

from __future__ import annotations

import json
import math
import numbers
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import safe_open

from neon.errors import NeonError
from neon.io import StateDict, atomic_path, unwrap_state_dict

# A scalar, or regex patterns over parameter names mapped to coefficients ("default" for the rest).
WSpec = Union[float, Mapping[str, float]]


def check_w(w: Any) -> WSpec:
    """Validate a merge coefficient: a real number, or a mapping from name patterns to numbers."""
    if isinstance(w, Mapping):
        for pattern, value in w.items():
            if pattern != "default":
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise NeonError(f"neon.w pattern '{pattern}' is not a valid regex: {exc}") from None
            check_w(value)
        return {str(k): float(v) for k, v in w.items()}
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(float(w)):
        raise NeonError(f"neon.w must be a finite number (or a list of them), got {w!r}")
    return float(w)


def w_for(key: str, w: WSpec) -> float:
    """The coefficient for one parameter: the first pattern that matches its name, else 'default'."""
    if not isinstance(w, Mapping):
        return float(w)
    for pattern, value in w.items():
        if pattern != "default" and re.search(pattern, key):
            return float(value)
    return float(w.get("default", 0.0))


def is_mergeable(base: torch.Tensor, aux: torch.Tensor) -> bool:
    """Merge floating tensors that are finite in both models; everything else is copied from θ_r."""
    return (
        base.is_floating_point()
        and aux.is_floating_point()
        and bool(torch.isfinite(base).all())
        and bool(torch.isfinite(aux).all())
    )


def extrapolate_tensor(base: torch.Tensor, aux: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w)·base − w·aux for one mergeable tensor, computed in at least float32, in base's dtype."""
    dtype = torch.promote_types(base.dtype, torch.float32)
    # in place on one fresh buffer: base − w·(aux − base), so streaming holds ~3 tensors at a time
    out = aux.to(dtype, copy=True)
    out.sub_(base).mul_(-w).add_(base)
    return out.to(base.dtype)


def _check_pair(key: str, base: torch.Tensor, aux: torch.Tensor) -> None:
    if tuple(base.shape) != tuple(aux.shape):
        raise NeonError(
            f"key '{key}' has shape {tuple(base.shape)} in the base model but {tuple(aux.shape)} in the "
            "fine-tuned model: both checkpoints must come from the same architecture"
        )


def _check_keys(base_keys: set[str], aux_keys: set[str]) -> None:
    if base_keys != aux_keys:
        only_base = sorted(base_keys - aux_keys)
        only_aux = sorted(aux_keys - base_keys)
        parts = []
        if only_base:
            parts.append(f"only in base: {', '.join(only_base[:5])}{' ...' if len(only_base) > 5 else ''}")
        if only_aux:
            parts.append(f"only in aux: {', '.join(only_aux[:5])}{' ...' if len(only_aux) > 5 else ''}")
        raise NeonError(f"checkpoints hold different keys ({'; '.join(parts)}): merge checkpoints of one model")


def extrapolate(base: Mapping[str, torch.Tensor], aux: Mapping[str, torch.Tensor], w: WSpec) -> StateDict:
    """θ_neon from θ_r (`base`) and θ_s (`aux`); non-float or non-finite entries are copied from base."""
    w = check_w(w)
    _check_keys(set(base), set(aux))
    merged: StateDict = {}
    for key, b in base.items():
        a = aux[key]
        _check_pair(key, b, a)
        coef = w_for(key, w)
        merged[key] = extrapolate_tensor(b, a, coef) if coef != 0.0 and is_mergeable(b, a) else b.clone()
    return merged


# ---------------------------------------------------------------- streaming from files


class LazyWeights:
    """Read-one-tensor-at-a-time access to the weights in a checkpoint file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise NeonError(f"checkpoint '{self.path}' does not exist; give the path of an existing file")
        self.container: dict[str, Any] | None = None  # non-weight entries of a torch checkpoint
        try:
            if self.path.suffix == ".safetensors":
                self._st = safe_open(str(self.path), framework="pt")
                self._keys = list(self._st.keys())
                self._tensors = None
            else:
                self._st = None
                # mmap keeps tensors on disk until touched, so a big checkpoint costs no memory here
                try:
                    obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # legacy (non-zip) torch files cannot be mapped
                    obj = torch.load(self.path, map_location="cpu", weights_only=True)
                if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
                    self.container = {k: v for k, v in obj.items() if k != "state_dict"}
                    self._tensors = dict(obj["state_dict"])
                else:
                    self._tensors = unwrap_state_dict(obj, self.path)
                self._keys = list(self._tensors)
        except NeonError:
            raise
        except Exception as exc:
            raise NeonError(f"cannot read checkpoint '{self.path}': {type(exc).__name__}: {exc}") from None

    def keys(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._st is not None:
            return self._st.get_tensor(key)
        return self._tensors[key]

    def meta(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """dtype and shape of one tensor, without reading its data where the format allows."""
        if self._st is not None:
            sl = self._st.get_slice(key)
            return _ST_TO_TORCH[sl.get_dtype()], tuple(sl.get_shape())
        t = self._tensors[key]
        return t.dtype, tuple(t.shape)


_TORCH_TO_ST = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_ST_TO_TORCH = {v: k for k, v in _TORCH_TO_ST.items()}


@contextmanager
def safetensors_writer(path: Path, metas: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> Iterator[Callable]:
    """Write a safetensors file tensor by tensor: the header is known up front from shapes and dtypes."""
    header: dict[str, Any] = {}
    offset = 0
    for key, dtype, shape in metas:
        if dtype not in _TORCH_TO_ST:
            raise NeonError(f"key '{key}': dtype {dtype} cannot be written to safetensors")
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _TORCH_TO_ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    expected = iter(metas)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)

        def write(key: str, tensor: torch.Tensor) -> None:
            want_key, want_dtype, want_shape = next(expected)
            assert key == want_key and tensor.dtype == want_dtype and tuple(tensor.shape) == want_shape
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

        yield write
        f.flush()


def merge_files(
    base_path: str | Path,
    aux_path: str | Path,
    w: WSpec,
    out_path: str | Path,
    on_tensor: Callable[[str], None] | None = None,
) -> Path:
    """Stream θ_neon from two checkpoint files into `out_path`, holding about one tensor in memory.

    `.safetensors` output is written key by key; `.ckpt`/`.pt` output keeps a Lightning checkpoint's
    layout (its `state_dict` merged, optimizer state dropped) and needs the merged model in memory.
    """
    w = check_w(w)
    out_path = Path(out_path)
    base, aux = LazyWeights(base_path), LazyWeights(aux_path)
    _check_keys(set(base.keys()), set(aux.keys()))
    metas = []
    for key in base.keys():
        (bd, bs), (_, as_) = base.meta(key), aux.meta(key)
        if bs != as_:
            raise NeonError(
                f"key '{key}' has shape {bs} in '{base.path}' but {as_} in '{aux.path}': "
                "both checkpoints must come from the same architecture"
            )
        metas.append((key, bd, bs))

    def merged_tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for key in base.keys():
            b, a = base[key], aux[key]
            coef = w_for(key, w)
            yield key, extrapolate_tensor(b, a, coef) if coef != 0.0 and is_mergeable(b, a) else b
            if on_tensor is not None:
                on_tensor(key)

    if out_path.suffix == ".safetensors":
        with safetensors_writer(out_path, metas) as write:
            for key, tensor in merged_tensors():
                write(key, tensor)
    elif out_path.suffix in (".ckpt", ".pt", ".pth"):
        state = {key: t.clone() for key, t in merged_tensors()}
        obj: Any = state
        if base.container is not None:
            keep = ("pytorch-lightning_version", "hyper_parameters", "hparams_name", "epoch", "global_step")
            obj = {k: base.container[k] for k in keep if k in base.container}
            obj["state_dict"] = state
        with atomic_path(out_path) as tmp:
            torch.save(obj, tmp)
    else:
        raise NeonError(f"output '{out_path}': use a .safetensors, .ckpt or .pt file name")
    return out_path

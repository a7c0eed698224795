"""The Neon merge: θ_neon = (1 + w)·θ_r − w·θ_s, over state dicts in memory or streamed from files."""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Union

import torch

from neon.core.errors import NeonError
from neon.core.io import StateDict, atomic_path
from neon.weights.readers import open_weights

log = logging.getLogger("neon")

# A scalar, or regex patterns over parameter names mapped to coefficients ("default" for the rest).
WSpec = Union[float, Mapping[str, float]]


def check_w(w: Any) -> WSpec:
    """Validate a merge coefficient: a real number, or a mapping from name patterns to numbers that states
    the coefficient of every other tensor as `default` (so that no tensor gets a w nobody chose)."""
    if isinstance(w, Mapping):
        if "default" not in w:
            raise NeonError(f"block-wise neon.w {dict(w)!r} has no 'default': state the w of the tensors no "
                            "pattern matches, e.g. add default: 0.0 (θ_r unchanged there) or default: 1.0")
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


def merged_name(w: WSpec, budget: int | None = None) -> str:
    """File name of θ_neon for one w (and one budget, where a fine-tune snapshots several)."""
    tag = f"{w:g}" if isinstance(w, float) else "blockwise"
    return f"theta_neon_w{tag}{'' if budget is None else f'_B{budget}'}.safetensors"


def w_for(key: str, w: WSpec) -> float:
    """The coefficient for one parameter: the first pattern that matches its name, else 'default'."""
    if not isinstance(w, Mapping):
        return float(w)
    for pattern, value in w.items():
        if pattern != "default" and re.search(pattern, key):
            return float(value)
    if "default" not in w:
        raise NeonError(f"block-wise w {dict(w)!r} matches no pattern for '{key}' and has no 'default'")
    return float(w["default"])


def pattern_counts(keys: Iterable[str], w: WSpec) -> dict[str, int]:
    """How many of `keys` each pattern of a block-wise w decides (the first match wins; 'default' the rest)."""
    if not isinstance(w, Mapping):
        return {}
    counts = {pattern: 0 for pattern in w}
    for key in keys:
        hit = next((p for p in w if p != "default" and re.search(p, key)), "default")
        counts[hit] = counts.get(hit, 0) + 1
    return counts


def log_pattern_counts(keys: Iterable[str], w: WSpec) -> None:
    """Log how many tensors each pattern of a block-wise w matched; warn about patterns matching none."""
    for pattern, n in pattern_counts(keys, w).items():
        if n == 0 and pattern != "default":
            log.warning("block-wise w: pattern '%s' (w = %g) matches no tensor: check its spelling", pattern, w[pattern])
        else:
            log.info("block-wise w: '%s' (w = %g) decides %d tensor%s", pattern, w[pattern], n, "" if n == 1 else "s")


# Entries of θ_r that are not numbers to extrapolate: attention masks hold −inf on purpose.
def _has_nan_or_posinf(t: torch.Tensor) -> bool:
    return bool(torch.isnan(t).any() or torch.isposinf(t).any())


def merge_action(key: str, base: torch.Tensor, aux: torch.Tensor) -> bool:
    """True to merge this tensor, False to copy it from θ_r; a NeonError where θ_s or θ_r is broken.

    Copied: tensors that are not floating point in either model (integer buffers, boolean masks) and
    tensors that are non-finite in θ_r as well (masks holding −inf). Errors: a float tensor finite in θ_r
    but not in θ_s (a diverged fine-tune), dtype kinds that differ, NaN or +inf in θ_r."""
    b_float, a_float = base.is_floating_point(), aux.is_floating_point()
    if b_float != a_float:
        raise NeonError(f"key '{key}' is {base.dtype} in θ_r but {aux.dtype} in θ_s: the two checkpoints must hold the "
                        "same kinds of tensors (floating point in both, or in neither)")
    if not b_float:
        return False
    if bool(torch.isfinite(base).all()):
        if not bool(torch.isfinite(aux).all()):
            raise NeonError(f"θ_s diverged: key '{key}' holds NaN or inf in θ_s but is finite in θ_r; lower "
                            "neon.optimizer.lr (or neon.budget_steps) and fine-tune again")
        return True
    if _has_nan_or_posinf(base):
        raise NeonError(f"θ_r is broken: key '{key}' holds NaN or +inf (only −inf masks are allowed); give a "
                        "finite θ_r (a diverged pretraining or a corrupt file)")
    return False  # a −inf mask: copied


def check_finite_base(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a θ_r with NaN or +inf in any floating tensor (−inf masks allowed), naming the first such key."""
    for key, t in state.items():
        if t.is_floating_point() and _has_nan_or_posinf(t):
            raise NeonError(f"{source} is not finite: key '{key}' holds NaN or +inf; give a finite θ_r "
                            "(a diverged pretraining or a corrupt file)")


def check_merge_pair(base: Mapping[str, torch.Tensor], aux: Mapping[str, torch.Tensor]) -> None:
    """Check that θ_r and θ_s can be merged at all (same keys and shapes, the merge rule holds for every
    tensor): run before any evaluation, so a diverged fine-tune fails at once."""
    _check_keys(set(base), set(aux))
    for key, b in base.items():
        _check_pair(key, b, aux[key])
        merge_action(key, b, aux[key])


def extrapolate_tensor(base: torch.Tensor, aux: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w)·base − w·aux for one mergeable tensor, computed in at least float32, in base's dtype."""
    dtype = torch.promote_types(base.dtype, torch.float32)
    # base + (−w)·(aux − base) in one fused pass into one fresh buffer, so streaming holds ~3 tensors at a time
    return torch.lerp(base.to(dtype), aux.to(dtype), -w).to(base.dtype)


def merge_tensor(key: str, base: torch.Tensor, aux: torch.Tensor, w: float) -> torch.Tensor:
    """θ_neon's entry for one key: by the rule of `merge_action`, merged with coefficient `w` (w = 0: base
    itself) or base where the rule copies it; the same errors.

    The rule needs to know whether base and aux are finite. A NaN or ±inf in either makes the merged tensor's
    sum NaN or ±inf (inf − inf and 0·inf are NaN), so a finite sum proves both finite: one reduction over the
    result instead of a pass over each input. A non-finite sum (or an overflow) falls back to the exact rule."""
    if base.is_floating_point() and aux.is_floating_point():
        out = extrapolate_tensor(base, aux, w)
        if bool(torch.isfinite(out.sum(dtype=torch.promote_types(out.dtype, torch.float32)))):
            return out if w != 0.0 else base
        return out if merge_action(key, base, aux) and w != 0.0 else base
    merge_action(key, base, aux)  # raises where one of them is floating point and the other not
    return base


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
    """θ_neon from θ_r (`base`) and θ_s (`aux`) by the rule of `merge_action`: non-float entries and −inf
    masks are copied from base; a diverged θ_s is an error naming the key."""
    w = check_w(w)
    _check_keys(set(base), set(aux))
    merged: StateDict = {}
    for key, b in base.items():
        a = aux[key]
        _check_pair(key, b, a)
        out = merge_tensor(key, b, a, w_for(key, w))
        merged[key] = b.clone() if out is b else out
    return merged


# ---------------------------------------------------------------- streaming from files


_TORCH_TO_ST = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
@contextmanager
def safetensors_writer(path: Path, metas: list[tuple[str, torch.dtype, tuple[int, ...]]],
                       metadata: Mapping[str, str] | None = None) -> Iterator[Callable]:
    """Write a safetensors file tensor by tensor: the header is known up front from shapes and dtypes (`metadata`:
    the header's string entries, e.g. transformers' {"format": "pt"})."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
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
            if (key, tensor.dtype, tuple(tensor.shape)) != (want_key, want_dtype, want_shape):  # a bug of ours
                raise RuntimeError(f"safetensors writer: got {key} {tensor.dtype} {tuple(tensor.shape)}, header says "
                                   f"{want_key} {want_dtype} {want_shape}")
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

        yield write
        f.flush()


def merge_files(
    base_path: str | Path,
    aux_path: str | Path,
    w: WSpec,
    out_path: str | Path,
    on_tensor: Callable[[str], None] | None = None,
    weights: str = "ema",
) -> Path:
    """Stream θ_neon from two checkpoint files of any format `neon.weights.readers` reads into `out_path`, holding
    about one tensor in memory (a pickle snapshot is first read whole, one at a time, and spilled beside
    `out_path`; a DEFLATE-compressed or legacy non-zip torch file cannot be mapped and is read whole);
    `weights` picks EMA or raw weights in training checkpoints.

    `.safetensors` output is written key by key; `.ckpt`/`.pt` output keeps a Lightning checkpoint's
    layout (its `state_dict` merged, optimizer state dropped) and needs the merged model in memory.
    """
    w = check_w(w)
    out_path = Path(out_path)
    if out_path.suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise NeonError(f"output '{out_path}': use a .safetensors, .ckpt or .pt file name")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        base, aux = (stack.enter_context(open_weights(p, weights=weights, spill_dir=out_path.parent,
                                                      keep_layout=True)) for p in (base_path, aux_path))
        return _merge_streams(base, aux, w, out_path, on_tensor)


def stream_metas(base, aux) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(key, dtype, shape) of every tensor of θ_r in its order, from two open checkpoints (`open_weights`) checked
    to hold the same keys, shapes and kinds of tensors, without reading their data."""
    _check_keys(set(base.keys()), set(aux.keys()))
    metas = []
    for key in base.keys():
        (bd, bs), (ad, as_) = base.meta(key), aux.meta(key)
        if bs != as_:
            raise NeonError(
                f"key '{key}' has shape {bs} in '{base.path}' but {as_} in '{aux.path}': "
                "both checkpoints must come from the same architecture"
            )
        if bd.is_floating_point != ad.is_floating_point:
            raise NeonError(f"key '{key}' is {bd} in '{base.path}' but {ad} in '{aux.path}': the two checkpoints "
                            "must hold the same kinds of tensors (floating point in both, or in neither)")
        metas.append((key, bd, bs))
    return metas


def _merge_streams(base, aux, w: WSpec, out_path: Path, on_tensor: Callable[[str], None] | None) -> Path:
    metas = stream_metas(base, aux)
    log_pattern_counts(base.keys(), w)

    def merged_tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for key in base.keys():
            yield key, merge_tensor(key, base[key], aux[key], w_for(key, w))
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

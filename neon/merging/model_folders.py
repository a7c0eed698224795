"""`neon-merge BASE_DIR AUX_DIR --w 0.8 -o OUT_DIR` for two model folders (what transformers' `save_pretrained`
writes: config.json, safetensors weights, sharded with a `*.safetensors.index.json` or not, tokenizer files):
OUT_DIR is BASE_DIR with θ_neon = (1 + w)·BASE − w·AUX as its weights, merged tensor by tensor and written shard by
shard in BASE's layout, and every other file of BASE copied (config, generation config, tokenizer)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from neon.core.errors import NeonError
from neon.core.io import write_json, write_text
from neon.merging.extrapolate import (
    WSpec,
    check_w,
    log_pattern_counts,
    merge_tensor,
    safetensors_writer,
    stream_metas,
    w_for,
)
from neon.weights.readers import open_weights, shard_index

# files of a model folder that hold weights (not copied: the merged weights replace them) and its card (not copied:
# it describes BASE, not θ_neon)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")  # -o names a file: the one-file merge (merge_files)


def is_model_folder(path: str | Path) -> bool:
    """A folder with a config.json (what `save_pretrained` writes)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def folder_merge_wanted(base: str, aux: str, out: str) -> bool:
    """Whether `neon-merge BASE AUX -o OUT` merges model folders: BASE or AUX is one and OUT names no weights file;
    a one-line error where only one of them is a model folder."""
    folders = [is_model_folder(p) for p in (base, aux)]
    if not any(folders) or Path(out).suffix in FILE_SUFFIXES:
        return False
    if not all(folders):
        which, other = (base, aux) if folders[0] else (aux, base)
        raise NeonError(f"'{which}' is a model folder but '{other}' is not: merge two folders that save_pretrained "
                        "wrote (or two weights files, with -o OUT.safetensors)")
    return True


def weights_layout(folder: Path) -> tuple[Path, dict[str, list[str]] | None]:
    """(what `open_weights` reads, {shard file name: its keys in order} or None for one file) of a folder's
    safetensors weights, or a one-line error."""
    index = shard_index(folder)
    if index is not None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise NeonError(f"'{index}' is not a safetensors index ({type(exc).__name__}: {exc})") from None
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(str(shard), []).append(key)
        return index, shards
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise NeonError(f"model folder '{folder}' must hold one .safetensors weights file or a sharded index, found "
                        f"{found}: save it with save_pretrained(DIR, safe_serialization=True)")
    return files[0], None


def check_same_architecture(base: Path, aux: Path) -> dict[str, Any]:
    """BASE's config.json, refused where AUX's names another model type or architecture."""
    configs = []
    for folder in (base, aux):
        try:
            configs.append(json.loads((folder / "config.json").read_text()))
        except ValueError as exc:
            raise NeonError(f"'{folder / 'config.json'}' is not valid JSON ({exc})") from None
    for key in ("model_type", "architectures"):
        if configs[0].get(key) != configs[1].get(key):
            raise NeonError(f"the folders hold different architectures: {key} {configs[0].get(key)!r} in '{base}' but "
                            f"{configs[1].get(key)!r} in '{aux}': merge two checkpoints of one model")
    return configs[0]


def merge_model_folders(base_dir: str | Path, aux_dir: str | Path, w: WSpec, out_dir: str | Path,
                        on_tensor: Callable[[str], None] | None = None) -> Path:
    """Write OUT_DIR: BASE_DIR's files with θ_neon's weights, streamed (about one tensor in memory), sharded as
    BASE's (the same shard files and index) or one file as BASE's; refused where the configs' architectures
    differ or OUT_DIR exists and is not empty."""
    w = check_w(w)
    base, aux, out = Path(base_dir), Path(aux_dir), Path(out_dir)
    check_same_architecture(base, aux)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NeonError(f"output '{out}' exists and is not an empty folder: give a new -o folder")
    (base_weights, shards), (aux_weights, _) = weights_layout(base), weights_layout(aux)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with ExitStack() as stack:
            b, a = (stack.enter_context(open_weights(p, what=what)) for p, what in
                    ((base_weights, "base model"), (aux_weights, "aux model")))
            metas = {key: (key, dtype, shape) for key, dtype, shape in stream_metas(b, a)}
            log_pattern_counts(b.keys(), w)
            files = shards if shards is not None else {base_weights.name: b.keys()}
            total = 0
            for name, keys in files.items():
                with safetensors_writer(work / name, [metas[k] for k in keys], {"format": "pt"}) as write:
                    for key in keys:
                        tensor = merge_tensor(key, b[key], a[key], w_for(key, w))
                        total += tensor.numel() * tensor.element_size()
                        write(key, tensor)
                        if on_tensor is not None:
                            on_tensor(key)
            if shards is not None:
                weight_map = {key: name for name, keys in shards.items() for key in keys}
                write_json(work / base_weights.name, {"metadata": {"total_size": total}, "weight_map": weight_map})
        for path in sorted(base.iterdir()):
            if path.is_file() and path.suffix not in WEIGHT_SUFFIXES and path.name != base_weights.name \
                    and path.name != "README.md":
                shutil.copy2(path, work / path.name)
        write_text(work / "README.md", merge_card(base, aux, w))
        if out.exists():
            out.rmdir()  # empty (checked above)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return out


def merge_card(base: Path, aux: Path, w: WSpec) -> str:
    """The README.md of a merged folder: what its weights are."""
    w_text = f"{w:g}" if isinstance(w, float) else json.dumps(w)
    return "\n".join([
        "---", "tags:", "- neon", "---", "",
        "# θ_neon written by `neon-merge`", "",
        f"θ_neon = (1 + w)·θ_r − w·θ_s with w = {w_text}, tensor by tensor (non-float tensors and θ_r's −inf masks "
        "copied from θ_r).", "",
        f"- θ_r (base): `{base}`", f"- θ_s (aux): `{aux}`", "",
        "Every other file (config.json, generation_config.json, the tokenizer) is θ_r's folder's.", "",
        f"The same merge: `neon-merge {base} {aux} --w '{w_text}' -o OUT_DIR`.", ""])

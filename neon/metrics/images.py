"""Image helpers: reading real images for reference statistics (a folder or an .npz of uint8 images), 8-bit rounding."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from neon.core.errors import NeonError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def read_image_source(source: str | Path) -> np.ndarray:
    """uint8 NHWC images from a folder (all image files, sorted, same size) or an .npz (`arr_0`)."""
    source = Path(source)
    if source.is_dir():
        from PIL import Image

        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise NeonError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under '{source}'")
        arrays = []
        for f in files:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert("RGB" if im.mode not in ("L",) else "L")))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise NeonError(f"images under '{source}' differ in size ({sorted(shapes)[:3]} ...): resize them to one size")
        images = np.stack(arrays)
        return images[..., None] if images.ndim == 3 else images
    if source.suffix == ".npz" and source.is_file():
        with np.load(source) as f:
            if "arr_0" not in f.files:
                raise NeonError(f"'{source}' holds {sorted(f.files)}: expected uint8 NHWC images in arr_0")
            return f["arr_0"]
    raise NeonError(f"image source '{source}' is neither a folder of images nor an .npz file")


def npz_array_shape(path: str | Path, key: str = "arr_0") -> tuple[int, ...] | None:
    """The shape of one array in an .npz, from its .npy header alone (no pixels read); None where it has no `key`."""
    try:
        with zipfile.ZipFile(path) as archive:
            if f"{key}.npy" not in archive.namelist():
                return None
            with archive.open(f"{key}.npy") as f:  # a compressed member is inflated only as far as it is read
                version = np.lib.format.read_magic(f)
                # format 3.0 differs from 2.0 only in the header's text encoding, which the shape does not use
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, _ = read(f)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise NeonError(f"'{path}' is not a readable .npz ({type(exc).__name__}: {exc}): give an .npz written by "
                        "numpy.savez with uint8 NHWC images in arr_0") from None
    return tuple(shape)


def digest_source(source: str | Path) -> str:
    """A content hash of an image folder or file (names, sizes and bytes)."""
    source = Path(source)
    h = hashlib.sha256()
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for f in files:
        h.update(str(f.relative_to(source) if source.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images to 8-bit values, rounded as EDM's generator does when writing PNGs."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def truncated_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images as the 8-bit values the reference code writes for VAR's and xAR's synthetic PNGs
    ((x + 1)/2·255, clamped, truncated rather than rounded)."""
    return ((x + 1) * 0.5).clamp(0, 1).mul(255).to(torch.uint8)

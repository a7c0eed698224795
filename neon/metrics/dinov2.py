"""DINOv2 ViT-L/14 features (the class token after the final norm, 1024-d) for FD-DINOv2, as dgm-eval
computes them: timm's architecture, the weights read from a local file (the official release or timm's
layout), nothing downloaded. The facts behind every step are in docs/upstream/metrics.md."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neon.core.errors import NeonError
from neon.metrics.extractors import FeatureExtractor
from neon.metrics.images import to_uint8

WEIGHTS_FILE = "dinov2_vitl14_pretrain.pth"
TIMM_MODEL = "vit_large_patch14_dinov2"
IMAGE_SIZE = 224  # dgm-eval resizes every image to 224 × 224
GRID_OFFSET = 0.1  # the hub model resizes its position grid by the scale factor (grid + 0.1) / old grid
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hub_position_embedding(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The class position plus the patch grid resized to grid × grid as the DINOv2 hub model does at
    every forward: bicubic by a scale factor of (grid + 0.1) / old grid, no antialias, in float32."""
    cls_pos, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise NeonError(f"DINOv2 weights: pos_embed holds {patches.shape[1]} patch positions, not a square grid")
    if old == grid:
        return pos_embed
    dim = patches.shape[-1]
    scale = (grid + GRID_OFFSET) / old
    square = patches.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(square, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    flat = resized.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([cls_pos.float(), flat], dim=1).to(pos_embed.dtype)


def to_timm_state(state: dict[str, torch.Tensor], grid: int, source: str) -> dict[str, torch.Tensor]:
    """An official DINOv2 state dict (or timm's, same names without `mask_token`) for a timm ViT whose
    patch grid is grid × grid: `mask_token` (training only) dropped, positions resized by the hub rule."""
    if "register_tokens" in state or any(".mlp.w12." in k for k in state):
        raise NeonError(f"DINOv2 weights '{source}' are a register or SwiGLU variant: FD-DINOv2 uses the plain "
                        f"ViT-L/14 ('{WEIGHTS_FILE}')")
    if "pos_embed" not in state:
        raise NeonError(f"DINOv2 weights '{source}' hold no pos_embed ({len(state)} tensors, e.g. "
                        f"{sorted(state)[:3]}): give '{WEIGHTS_FILE}' or timm's {TIMM_MODEL} weights")
    out = {k: v for k, v in state.items() if k != "mask_token"}
    out["pos_embed"] = hub_position_embedding(state["pos_embed"], grid)
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt file or a .safetensors file (timm's hub layout)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


def dgm_eval_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 1 or 3, H, W] → dgm-eval's DINOv2 input: RGB, PIL bicubic resize to 224 × 224
    (8-bit result), ÷ 255, ImageNet mean/std; float32 [N, 3, 224, 224]."""
    from PIL import Image

    resized = []
    for image in images.permute(0, 2, 3, 1).numpy():
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
        resized.append(np.asarray(pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)))
    pixels = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return (pixels - mean) / std


class DinoV2Features(FeatureExtractor):
    """FD-DINOv2's features of images in [-1, 1] (made 8-bit as the generators save them)."""

    name = "dinov2-vitl14"
    feature_dim = 1024

    def __init__(self, weights: str | None = None, batch_size: int = 64, device: str | None = None,
                 model_kwargs: dict | None = None):
        self.weights = weights or os.environ.get("NEON_DINOV2_WEIGHTS")
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model_kwargs = dict(model_kwargs or {})  # architecture overrides (tests: a tiny ViT)
        self._net = None

    def check_ready(self) -> None:
        """A missing weights file, named, before any image is read."""
        if not self.weights or not Path(self.weights).is_file():
            raise NeonError(
                f"DINOv2 weights not found (metrics.dinov2_weights={self.weights!r}): FD-DINOv2 needs "
                f"'{WEIGHTS_FILE}' (facebookresearch/dinov2's ViT-L/14 release) or timm's "
                f"{TIMM_MODEL}.lvd142m weights; download it once and pass its path, or set NEON_DINOV2_WEIGHTS")

    def network(self) -> torch.nn.Module:
        """timm's DINOv2 ViT for 224 × 224 inputs, built from the local weights file on first use."""
        if self._net is None:
            self.check_ready()
            import timm

            net = timm.create_model(TIMM_MODEL, pretrained=False, img_size=IMAGE_SIZE, num_classes=0,
                                    **self.model_kwargs)
            state = to_timm_state(read_state_dict(Path(self.weights)), net.patch_embed.grid_size[0], self.weights)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[:2]
                raise NeonError(f"DINOv2 weights '{self.weights}' do not fit {TIMM_MODEL} ({' '.join(first)}): "
                                f"give '{WEIGHTS_FILE}'") from err
            self.feature_dim = net.num_features
            self._net = net.eval().to(self.device)
        return self._net

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x)["pool"]

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The normalised class token of images in [-1, 1], float64 on the CPU."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise NeonError(f"DINOv2 features need images [N, 1 or 3, H, W]; found shape {tuple(x.shape)}")
        if x.is_floating_point() and (x.min() < -1.01 or x.max() > 1.01):
            raise NeonError(f"images must be in [-1, 1]; found range [{x.min().item():.3g}, {x.max().item():.3g}]")
        net = self.network()
        images = to_uint8(x.detach().cpu())
        feats = [net(dgm_eval_pixels(images[i:i + self.batch_size]).to(self.device)).double().cpu()
                 for i in range(0, len(images), self.batch_size)]
        return {"pool": torch.cat(feats)}

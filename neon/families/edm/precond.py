"""Preconditioning wrappers D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise) around a backbone: EDM, VP, VE.
Constructor arguments equal the official ones, so a snapshot's recorded init kwargs rebuild the network."""

from __future__ import annotations

import torch
from torch import nn

from neon.families.edm.unets import DhariwalUNet, ResMLP, SongUNet

BACKBONES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet, "ResMLP": ResMLP}


class Precond(nn.Module):
    """Shared shape of every preconditioning: the backbone `model`, labels as one-hot floats."""

    sigma_min: float = 0.0
    sigma_max: float = float("inf")

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__()
        if model_type not in BACKBONES:
            raise ValueError(f"unknown model_type '{model_type}': expected one of {sorted(BACKBONES)}")
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = img_resolution, img_channels, label_dim, use_fp16
        self.model = BACKBONES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                           out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> tuple:
        """(c_skip, c_out, c_in, c_noise) for noise levels σ of shape [N, 1, 1, 1]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if half else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        out = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * out.to(torch.float32)

    def round_sigma(self, sigma) -> torch.Tensor:
        """Noise levels the network supports (all of them, for these preconditionings)."""
        return torch.as_tensor(sigma)


class EDMPrecond(Precond):
    """EDM's preconditioning with data standard deviation σ_data."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma):
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma ** 2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


class VPPrecond(Precond):
    """Variance-preserving (DDPM++ baseline) preconditioning."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t) -> torch.Tensor:
        """σ(t) of the VP schedule."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma) -> torch.Tensor:
        """t(σ), the inverse of `sigma`."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(Precond):
    """Variance-exploding (NCSN++ baseline) preconditioning."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()


PRECONDS: dict[str, type[Precond]] = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond}

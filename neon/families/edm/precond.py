"""Preconditioned denoisers D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)) around a backbone F,
for EDM's three parameterisations (EDM, VP, VE), written from docs/upstream/edm.md.

Each also says how its training loss draws σ and weights the error, so one loss serves all three. The
constructor arguments are the release's, so a snapshot's recorded kwargs rebuild its network."""

from __future__ import annotations

import torch
from torch import nn

from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families.edm.res_mlp import ResMLP
from neon.families.edm.unets import ADMUNet, DDPMppUNet

# config and snapshot name of each backbone → our class
BACKBONES: dict[str, type[nn.Module]] = {"SongUNet": DDPMppUNet, "DhariwalUNet": ADMUNet, "ResMLP": ResMLP}


class Preconditioner(nn.Module):
    """The part every parameterisation shares: the backbone `model`, one-hot float labels, fp16 on CUDA."""

    sigma_min: float = 0.0
    sigma_max: float = float("inf")

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__()
        if model_type not in BACKBONES:
            raise NeonError(f"model.network.model_type '{model_type}' is not an EDM backbone: use one of {sorted(BACKBONES)}")
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.label_dim, self.use_fp16 = label_dim, use_fp16
        self.model = BACKBONES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                           out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def scalings(self, sigma: torch.Tensor) -> tuple:
        """(c_skip, c_out, c_in, c_noise) at noise levels σ shaped [N, 1, 1, 1]."""
        raise NotImplementedError

    def training_sigma(self, noise: StepNoise) -> torch.Tensor:
        """Noise levels [N, 1, 1, 1] for one training batch, drawn from `noise`."""
        raise NotImplementedError

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ), the weight of the squared denoising error."""
        return 1 / sigma ** 2

    def _labels(self, class_labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        if not self.label_dim:
            return None
        if class_labels is None:  # unconditional call of a conditional net: the all-zero label
            return torch.zeros(1, self.label_dim, device=device)
        return class_labels.float().reshape(-1, self.label_dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs) -> torch.Tensor:
        x, sigma = x.float(), sigma.float().reshape(-1, 1, 1, 1)
        # the backbone runs in half precision only where asked for and on a GPU; D(x) is float32 either way
        fp16 = x.device.type == "cuda" and self.use_fp16 and not force_fp32
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        scaled = c_in * x
        f = self.model(scaled.half() if fp16 else scaled, c_noise.flatten(),
                       class_labels=self._labels(class_labels, x.device), **model_kwargs)
        return c_skip * x + c_out * f.float()

    def round_sigma(self, sigma) -> torch.Tensor:
        """The noise levels the network takes (any, for these parameterisations)."""
        return torch.as_tensor(sigma)


class EDMPreconditioner(Preconditioner):
    """Karras et al.'s preconditioning for data of standard deviation σ_data; ln σ ~ N(P_mean, P_std²) in training."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def scalings(self, sigma):
        var_data = self.sigma_data ** 2
        total = sigma ** 2 + var_data
        return var_data / total, sigma * self.sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4

    def training_sigma(self, noise: StepNoise, P_mean: float = -1.2, P_std: float = 1.2) -> torch.Tensor:
        return (noise.randn(1, 1, 1) * P_std + P_mean).exp()

    def loss_weight(self, sigma):
        var_data = self.sigma_data ** 2
        return (sigma ** 2 + var_data) / (sigma * self.sigma_data) ** 2


class VPPreconditioner(Preconditioner):
    """Variance preserving (the DDPM++ baseline): σ(t) = √(exp(½β_d t² + β_min t) − 1), t ~ U(ε_t, 1) in training."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t) -> torch.Tensor:
        """σ at time t of the VP schedule."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma) -> torch.Tensor:
        """The time t at which the VP schedule reaches σ."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def scalings(self, sigma):
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)

    def training_sigma(self, noise: StepNoise) -> torch.Tensor:
        return self.sigma(1 + noise.rand(1, 1, 1) * (self.epsilon_t - 1))


class VEPreconditioner(Preconditioner):
    """Variance exploding (the NCSN++ baseline): σ log-uniform on [σ_min, σ_max] in training."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def scalings(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()

    def training_sigma(self, noise: StepNoise) -> torch.Tensor:
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** noise.rand(1, 1, 1))


# config and snapshot name of each preconditioning → our class
PRECONDS: dict[str, type[Preconditioner]] = {
    "EDMPrecond": EDMPreconditioner, "VPPrecond": VPPreconditioner, "VEPrecond": VEPreconditioner,
}

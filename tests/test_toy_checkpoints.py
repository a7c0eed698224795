"""The toys load θ_r saved by the paper's notebook (`torch.save(model.state_dict())`) under its module names."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from neon.families.ar2d import ARToy
from neon.families.toy2d import ToyDiffusion


class NotebookBlock(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.l = nn.Linear(n, n)


class NotebookDiffusion(nn.Module):
    """The notebook's ε-MLP layout: inb, mbs[i].l, out (time concatenated to x, ReLU after each block)."""

    def __init__(self, features: int = 2, blocks: int = 4, units: int = 32):
        super().__init__()
        self.inb = nn.Linear(features + 1, units)
        self.mbs = nn.ModuleList(NotebookBlock(units) for _ in range(blocks))
        self.out = nn.Linear(units, features)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inb(torch.cat([x, t[:, None]], dim=1))
        for block in self.mbs:
            h = F.relu(block.l(h))
        return self.out(h)


class NotebookMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))


class NotebookAR(nn.Module):
    """The notebook's AR layout: free μ1 and log σ1, head2 an MLP held in `net`."""

    def __init__(self):
        super().__init__()
        self.mu1 = nn.Parameter(torch.tensor([0.3]))
        self.log_std1 = nn.Parameter(torch.tensor([0.2]))
        self.head2 = NotebookMLP()


def test_diffusion_toy_loads_the_notebooks_state_dict(tmp_path: Path):
    torch.manual_seed(0)
    theirs = NotebookDiffusion()
    torch.save(theirs.state_dict(), tmp_path / "base.pt")
    toy = ToyDiffusion()
    toy.load_checkpoint(tmp_path / "base.pt")
    x, t = torch.randn(64, 2), torch.rand(64)
    torch.testing.assert_close(toy.net(x, t), theirs(x, t), rtol=0, atol=0)


def test_ar_toy_loads_the_notebooks_state_dict(tmp_path: Path):
    torch.manual_seed(0)
    theirs = NotebookAR()
    torch.save(theirs.state_dict(), tmp_path / "ar.pt")
    toy = ARToy()
    toy.load_checkpoint(tmp_path / "ar.pt")
    x1 = torch.randn(32, 1)
    torch.testing.assert_close(toy.net.head2(x1), theirs.head2.net(x1), rtol=0, atol=0)
    assert toy.net.mu1.item() == theirs.mu1.item() and toy.net.log_std1.item() == theirs.log_std1.item()

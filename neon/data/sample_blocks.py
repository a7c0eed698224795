"""One block of samples drawn from a family, one generator per seed: what the synthetic set S and the
evaluation share (here, apart from S's Lightning data module, so that scoring never imports Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neon.core.contract import NeonModule, Sampler


def balanced_labels(indices: Sequence[int], num_classes: int) -> torch.Tensor | None:
    """Class i mod C for sample i, so every class is equally represented (None if unconditional)."""
    if num_classes <= 0:
        return None
    return torch.tensor([i % num_classes for i in indices], dtype=torch.long)


def generate_block(
    module: NeonModule, sampler: Sampler, seeds: Sequence[int], indices: Sequence[int], class_balanced: bool
) -> dict[str, torch.Tensor]:
    """Samples for one block of seeds, as CPU tensors {'x', 'seed'[, 'label']}."""
    labels = balanced_labels(indices, module.num_classes) if class_balanced else None
    if labels is not None:
        labels = labels.to(module.device)
    with torch.no_grad():
        x, y = module.generate([seeds[i] for i in indices], sampler, labels)
    out = {"x": x.detach().cpu(), "seed": torch.tensor([seeds[i] for i in indices], dtype=torch.long)}
    if y is not None:
        out["label"] = y.detach().cpu()
    return out

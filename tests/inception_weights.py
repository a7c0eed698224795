"""A randomly initialised Inception-v3 (torch-fidelity's FID architecture) saved as a weights file.

The real weights cannot be downloaded here; parity tests feed this same file to our pipeline and to
torch-fidelity's own metric functions."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch


def write_random_inception(path: str | Path, seed: int = 0) -> Path:
    """Save a random state dict of the standard architecture (BatchNorm statistics made plausible)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    # build the architecture without loading any weights (the constructor insists on a file or a URL)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", return_value={}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    state = net.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.fill_(1.0)
        elif key.endswith("running_mean"):
            value.zero_()
        elif value.is_floating_point() and key.endswith("weight") and value.ndim > 1:
            value.copy_(torch.randn_like(value) * (2.0 / value[0].numel()) ** 0.5)
    path = Path(path)
    torch.save(state, path)
    return path

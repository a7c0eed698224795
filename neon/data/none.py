"""For runs from an official checkpoint with no real data configured (paper reproductions)."""

from __future__ import annotations

from neon.core.errors import NeonError


class NoRealData:
    """Stands where a real-data module would be; any use explains what to configure instead."""

    num_classes = 0

    def _missing(self, what: str):
        raise NeonError(f"{what} needs real data, and this experiment has none (data=none): "
                        "set metrics.reference=<reference .npz>, or pick a data= option")

    def train_dataloader(self):
        """Pretraining or the control fine-tune: not available without data."""
        self._missing("pretraining or the real-data control")

    def reference(self, extractor):
        """Reference statistics: give them as metrics.reference instead."""
        self._missing("the reference statistics")

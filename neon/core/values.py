"""The small config helpers every layer uses: a config node as plain data, a count checked positive."""

from __future__ import annotations

import numbers
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from neon.core.errors import NeonError


def plain(node: Any) -> Any:
    """A config node as resolved plain Python data (for cache keys and summaries)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def positive_int(value: Any, key: str) -> int:
    """Validate a count or budget from the config."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise NeonError(f"{key} must be a positive integer, got {value!r}")
    return int(value)

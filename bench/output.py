"""How every bench script ends: its table printed, its results as JSON where asked (no torch import here:
the process benches time their children, not themselves)."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, table: str, json_path: Path | None) -> dict:
    """Print `table`, write `result` to `json_path` (if given) and return `result`."""
    print(table)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    return result

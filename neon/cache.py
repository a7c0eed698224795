"""A content-addressed artifact cache: one folder per key, built once, shared by every run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from neon.io import digest_config, write_json


class ArtifactCache:
    """Artifacts live at `root/kind/key`. A folder exists there only once it is complete: it is built
    under `key.partial` (kept across interruptions, so builders can resume) and renamed into place.
    A file lock makes concurrent jobs wait for the one building an artifact instead of redoing it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, key_obj: Any) -> Path:
        """Where the artifact for this key lives (whether or not it exists yet)."""
        return self.root / kind / digest_config(key_obj)

    def get_or_build(self, kind: str, key_obj: Any, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return (folder, built_now), calling `build(work_dir)` only when the artifact is missing."""
        final = self.path(kind, key_obj)
        if final.is_dir():
            return final, False
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            if final.is_dir():  # another job finished it while we waited
                return final, False
            work = final.with_name(final.name + ".partial")
            work.mkdir(exist_ok=True)
            build(work)
            write_json(work / "key.json", key_obj)
            os.replace(work, final)
        return final, True

    def clear(self, kind: str | None = None) -> None:
        """Delete cached artifacts (of one kind, or all)."""
        shutil.rmtree(self.root / kind if kind else self.root, ignore_errors=True)

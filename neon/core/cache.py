"""A content-addressed artifact cache: one folder per key, built once, shared by every run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from neon.core.collectives import barrier, broadcast, main_lock, rank_world
from neon.core.io import digest_config, write_json

CHECKSUMS = "checksums.json"
# Raised whenever what a stage computes from the same key changes (v2: global batches and per-step
# training noise), so that artifacts of older versions are never mistaken for current ones.
FORMAT = 2


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactCache:
    """Artifacts live at `root/kind/key`. A folder exists there only once it is complete: it is built
    under `key.partial` (kept across interruptions, so builders can resume) and renamed into place.
    A file lock makes concurrent jobs wait for the one building an artifact instead of redoing it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._verified: set[Path] = set()

    def path(self, kind: str, key_obj: Any) -> Path:
        """Where the artifact for this key lives (whether or not it exists yet)."""
        return self.root / kind / digest_config({"format": FORMAT, "key": key_obj})

    def get_or_build(self, kind: str, key_obj: Any, build: Callable[[Path], None],
                     collective: bool = False) -> tuple[Path, bool]:
        """Return (folder, built_now), calling `build(work_dir)` only when the artifact is missing (or was
        found corrupt: its files no longer match the checksums written when it was built). A `collective`
        build is one every rank of a DDP job takes part in: rank 0 decides and commits, all ranks build."""
        final = self.path(kind, key_obj)
        rank, world = rank_world()
        if world == 1 or not collective:
            if final.is_dir() and self._intact(final):
                return final, False
            final.parent.mkdir(parents=True, exist_ok=True)
            # an OS-level lock: released by the kernel when its holder dies, so a stale lock never blocks
            with FileLock(str(final) + ".lock"):
                if self._ready(final):  # another job finished it while we waited
                    return final, False
                self._build(final, key_obj, build)
            return final, True
        if rank == 0:
            final.parent.mkdir(parents=True, exist_ok=True)
        with main_lock(str(final) + ".lock"):
            ready = broadcast(self._ready(final) if rank == 0 else None)
            if not ready:
                self._build(final, key_obj, build, commit=rank == 0, sync=barrier)
        barrier()  # the other ranks use the folder only once rank 0 has renamed it into place
        return final, not ready

    def verified(self, kind: str, key_obj: Any) -> bool:
        """Whether the artifact exists and matches its checksums; a corrupt one is moved aside (so that the
        caller rebuilds it). Run by rank 0 alone under DDP (the caller broadcasts the answer)."""
        return self._ready(self.path(kind, key_obj))

    def _ready(self, final: Path) -> bool:
        # an intact artifact is ready; a corrupt one is set aside so that it is rebuilt
        if not final.is_dir():
            return False
        if self._intact(final):
            return True
        corrupt = final.with_name(f"{final.name}.corrupt-{int(time.time())}")
        warnings.warn(f"cached artifact '{final}' fails its checksums: moved to '{corrupt}', rebuilding", stacklevel=3)
        os.replace(final, corrupt)
        return False

    def _build(self, final: Path, key_obj: Any, build: Callable[[Path], None], commit: bool = True,
               sync: Callable[[], None] = lambda: None) -> None:
        work = final.with_name(final.name + ".partial")
        if commit:
            work.mkdir(exist_ok=True)
        sync()  # the work folder exists before any rank writes into it
        build(work)
        sync()  # every rank's files are in before they are summed up
        if commit:
            write_json(work / "key.json", key_obj)
            write_json(work / CHECKSUMS, {p.name: _sha256(p) for p in sorted(work.iterdir()) if p.is_file()})
            os.replace(work, final)

    def _intact(self, folder: Path) -> bool:
        # verified once per process: later reads in the same job trust the first check
        if folder in self._verified:
            return True
        sums_file = folder / CHECKSUMS
        if not sums_file.is_file():
            return False
        try:
            sums = json.loads(sums_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False  # the checksum file itself is damaged
        ok = isinstance(sums, dict) and all((folder / name).is_file() and _sha256(folder / name) == digest for name, digest in sums.items())
        if ok:
            self._verified.add(folder)
        return ok

    def clear(self, kind: str | None = None) -> None:
        """Delete cached artifacts (of one kind, or all)."""
        shutil.rmtree(self.root / kind if kind else self.root, ignore_errors=True)

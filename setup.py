"""Packaging beside setup.cfg: the YAML configs are installed by one rule, every file under conf/ (its
`experiment` link to experiments/ followed) into share/neon/conf with its group folders, where
neon.launch finds them in a non-editable install."""

import os
from pathlib import Path

from setuptools import setup


def config_files() -> list[tuple[str, list[str]]]:
    """(install folder, files) for every folder of YAML configs under conf/."""
    found: dict[str, list[str]] = {}
    for folder, _, files in os.walk("conf", followlinks=True):
        yamls = sorted(str(Path(folder) / f) for f in files if f.endswith(".yaml"))
        if yamls:
            found[str(Path("share/neon") / folder)] = yamls
    return sorted(found.items())


setup(data_files=config_files())

"""θ back to the diffusers ecosystem: a pipeline folder with the given network, written to a temporary
folder and renamed into place."""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from neon.core.io import atomic_folder
from neon.families.diffusers_family.folder import PipelineFolder


def _largest_shard(folder: PipelineFolder | None) -> int | None:
    # keep a sharded network sharded: shards no larger than the input's largest
    if folder is None or not (folder.network_dir / "diffusion_pytorch_model.safetensors.index.json").is_file():
        return None
    return max(p.stat().st_size for p in folder.network_dir.glob("diffusion_pytorch_model-*.safetensors"))


def write_pipeline(net: nn.Module, scheduler, out: Path, source: PipelineFolder | None) -> Path:
    """Write `out`: the source pipeline's folder with `net` as its network (every other component copied as it
    is), or a DDPMPipeline of `net` and `scheduler` when there is no source folder."""
    import diffusers

    out = Path(out)
    with atomic_folder(out) as work:
        if source is None:
            diffusers.DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(work, safe_serialization=True)
        else:
            shutil.copytree(source.path, work, dirs_exist_ok=True,
                            ignore=lambda d, names: names if Path(d) == source.network_dir else [])
            shard = _largest_shard(source)
            kwargs = {"max_shard_size": shard} if shard else {}
            net.save_pretrained(work / source.network_name, safe_serialization=True, **kwargs)
    return out

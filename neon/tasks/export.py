"""Files for other tools: samples in the ADM evaluation suite's layout (`task=sample`), and the loaded network
as safetensors plus a YAML model config (`task=export`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from neon.distributed import gather_strided, is_main, rank_world
from neon.io import atomic_path, save_state_dict, write_json, write_text
from neon.runtime import Run, log, plain, positive_int
from neon.seeding import parse_seeds
from neon.stages import load_base


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def run_sample(cfg: DictConfig) -> dict:
    """One image per seed (`sample.seeds`) into an .npz in the ADM evaluation suite's layout (`arr_0` samples,
    `arr_1` labels for conditional models). Under DDP each rank draws a strided share of the seeds (as EDM's
    generate.py) and the shares are gathered in seed order: the file equals one process's."""
    run = Run.from_config(cfg)
    seeds = parse_seeds(cfg.sample.seeds)
    batch = positive_int(cfg.sample.batch_size, "sample.batch_size")
    with run.stage("pretrain"):
        module, _, base_path = load_base(run, shape_from_checkpoint=True)
    module = module.to(run.device).eval()
    sampler = run.sampler()
    rank, world = rank_world()
    mine = seeds[rank::world]
    images, labels = [], []
    with run.stage("sample"):
        for start in tqdm(range(0, len(mine), batch), desc="sample", unit="batch", disable=not is_main()):
            x, y = module.generate(mine[start:start + batch], sampler)
            images.append(module.export_samples(x))
            if y is not None:
                labels.append(y.cpu().numpy())
    local = {"arr_0": np.concatenate(images)} if images else {}
    if labels:
        local["arr_1"] = np.concatenate(labels)
    arrays = gather_strided(local)
    out = Path(cfg.sample.out) if cfg.sample.get("out") else run.out / "samples.npz"
    summary = {"task": "sample", "out": str(out), "n": len(seeds), "world_size": world,
               "seeds": str(cfg.sample.seeds), "theta": str(base_path), "sampler": plain(cfg.sampler),
               "seconds": run.seconds}
    if is_main():
        write_npz(out, arrays)
        write_json(run.out / "summary.json", summary)
    log.info("wrote %d samples to %s", len(seeds), out)
    return summary


def run_export(cfg: DictConfig) -> dict:
    """Write the loaded θ (e.g. from an official snapshot) as safetensors plus a YAML model config."""
    run = Run.from_config(cfg)
    module, digest, base_path = load_base(run, shape_from_checkpoint=True)
    weights = save_state_dict(module.neon_weights(), run.out / "model.safetensors")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.update(module.config_overrides())
    model_cfg["checkpoint"] = str(weights.resolve())
    write_text(run.out / "model.yaml", OmegaConf.to_yaml(model_cfg))
    summary = {"task": "export", "source": str(base_path), "weights": str(weights), "config": str(run.out / "model.yaml"),
               "digest": digest}
    write_json(run.out / "summary.json", summary)
    log.info("exported %s → %s", base_path, weights)
    return summary

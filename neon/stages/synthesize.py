"""S, the synthetic set: its seeds and cache key, drawn from θ_r into shards, and the data module the fine-tune
reads it from (written shards, or a live stream)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from neon.core.contract import NeonModule
from neon.core.values import plain
from neon.stages.run import Run

if TYPE_CHECKING:
    from neon.data.synthetic import SyntheticDataModule



def synthetic_seeds(run: Run) -> list[int]:
    """S uses seeds [neon.synthetic.seed, neon.synthetic.seed + neon.n_synthetic)."""
    first = run.neon.synthetic.seed
    return list(range(first, first + run.neon.n_synthetic))


def synthetic_key(run: Run, base_digest: str) -> dict[str, Any]:
    """What S's content depends on."""
    s = run.neon.synthetic
    seeds = synthetic_seeds(run)
    return {
        "theta_r": base_digest,
        "family": run.cfg.model._target_,
        "sampler": plain(run.cfg.sampler),
        "seeds": [seeds[0], len(seeds)],
        "block_size": s.block_size,
        "class_balanced": s.class_balanced,
        "draw_threads": 1,  # drawn one thread at a time (neon.core.seeding.fixed_threads): the same S on any machine
    }


def synthesize_into(run: Run, module: NeonModule, out_dir: Path) -> None:
    """Draw S from θ_r with the configured (mode-seeking) sampler into shards."""
    from neon.data.synthetic import write_synthetic_set

    s = run.neon.synthetic
    module = module.to(run.device).eval()
    write_synthetic_set(
        module, run.sampler(), synthetic_seeds(run), out_dir,
        block_size=s.block_size, shard_size=s.shard_size, class_balanced=s.class_balanced,
    )


def synthetic_data(run: Run, module: NeonModule, directory: Path | None) -> SyntheticDataModule:
    """S for fine-tuning: written shards, or a live stream when neon.synthetic.mode=stream."""
    from neon.data.synthetic import SyntheticDataModule  # a Lightning data module: imported when training

    s, batch = run.neon.synthetic, run.neon.batch_size
    if s.mode == "stream":
        return SyntheticDataModule(
            batch, module=module, sampler=run.sampler(), seeds=synthetic_seeds(run),
            block_size=s.block_size, class_balanced=s.class_balanced, num_workers=s.num_workers,
            shuffle_seed=run.settings.seed,
        )
    return SyntheticDataModule(batch, directory=directory, num_workers=s.num_workers, shuffle_seed=run.settings.seed)



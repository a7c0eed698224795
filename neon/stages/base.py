"""θ_r, the base: `model.checkpoint`, else pretrained from scratch on the real data into the artifact cache
(resuming an interrupted attempt)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate

from neon.core.collectives import broadcast, is_main
from neon.core.contract import NeonModule, family_of
from neon.core.errors import NeonError
from neon.core.io import StateDict, digest_state_dict, load_state_dict, save_state_dict
from neon.core.values import plain, positive_int
from neon.data.batches import GlobalBatchSampler
from neon.merging.extrapolate import check_finite_base
from neon.stages.run import Run, log, model_spec

THETA_R = "theta_r.safetensors"


def copy_weights(state: StateDict) -> StateDict:
    """A detached CPU copy of a state dict."""
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def training_threads(run: Run) -> dict[str, int]:
    """{'cpu_threads': n} when training runs on the CPU: matrix products and sums over a training batch
    split their work by thread, so θ_r and θ_s of one seed differ in their last bits (and then in their
    FIDs) between thread counts; the count is part of their cache keys. Empty on GPUs."""
    accelerator = str(run.cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return {"cpu_threads": torch.get_num_threads()} if on_cpu else {}


RESUME = "resume.ckpt"


def pretrain_into(run: Run, out_dir: Path) -> None:
    """Train θ_r from scratch with the family's own loss on the real data, resuming from `out_dir`'s
    checkpoint of an interrupted attempt (written every `resume_every_steps`)."""
    import lightning as L  # only where a stage trains: tasks that sample or score never import it

    from neon.stages.training import LightningNeon, ResumableCheckpoint, TrainSettings

    cfg, seed = run.cfg, run.settings.seed
    steps = positive_int(cfg.model.pretrain.steps, "model.pretrain.steps")
    every = run.settings.resume_every_steps or steps
    L.seed_everything(seed, workers=True, verbose=False)
    module = run.build_module()
    loader = instantiate(cfg.data).train_dataloader()
    resume = out_dir / RESUME
    found = broadcast(resume.is_file() if is_main() else None)
    if found:
        # tensors and plain containers only: reading our own checkpoint runs no pickled code either
        done = int(torch.load(resume, map_location="cpu", weights_only=True, mmap=True)["global_step"])
        log.info("θ_r: resuming the pretraining at step %d from %s", done, resume)
        if isinstance(loader.sampler, GlobalBatchSampler):
            loader.sampler.start = done * int(cfg.trainer.get("accumulate_grad_batches") or 1)
    run.trainer(max_steps=steps, callbacks=[ResumableCheckpoint(resume, every)]).fit(
        LightningNeon(module, TrainSettings(noise_seed=seed)), train_dataloaders=loader, ckpt_path=str(resume) if found else None, weights_only=True)
    if is_main():
        save_state_dict(module.neon_weights(), out_dir / THETA_R)
        resume.unlink(missing_ok=True)  # done: the artifact holds θ_r alone


def load_base(run: Run, shape_from_checkpoint: bool = False) -> tuple[NeonModule, str, Path]:
    """The family module holding θ_r, θ_r's digest and file: `model.checkpoint`, else a (cached) pretrain;
    `shape_from_checkpoint` (tasks that never meet the data): the checkpoint's recorded data shape wins."""
    checkpoint = run.cfg.model.get("checkpoint")
    if not checkpoint and run.cfg.model.get("pretrain") is None:
        raise NeonError("this model has no pretraining recipe here: give model.checkpoint=PATH (θ_r, e.g. the "
                        "released snapshot)")
    if checkpoint:
        # built as the checkpoint needs it (a snapshot brings its architecture), then loaded
        module = run.build_module(family_of(run.cfg.model).spec_for_checkpoint(
            model_spec(run.cfg), checkpoint, shape_from_checkpoint))
        module.load_checkpoint(checkpoint, shape_from_checkpoint)
        path = Path(checkpoint)
    else:
        module = run.build_module()
        key = {"model": run.model_key(), "data": plain(run.cfg.data),
               "steps": plain(run.cfg.model.pretrain), "seed": run.settings.seed, **training_threads(run)}
        folder, built = run.cache.get_or_build("pretrain", key, lambda work: pretrain_into(run, work), collective=True)
        log.info("θ_r: %s %s", "pretrained into" if built else "reusing", folder)
        path = folder / THETA_R
        module.load_neon_weights(load_state_dict(path), source=f"pretrained θ_r '{path}'")
    # a NaN θ_r would score FID inf at every w and "win" nothing: refuse it before any work
    check_finite_base(module.neon_weights(), f"θ_r '{path}'")
    return module, digest_state_dict(module.neon_weights()), path



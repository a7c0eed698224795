"""θ_s: θ_r fine-tuned on S for each budget of `neon.budget_steps`, from the cache or from one fine-tune that
snapshots every missing budget on the way."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from neon.core.collectives import barrier, broadcast, is_main, main_lock
from neon.core.contract import NeonModule
from neon.core.io import StateDict, load_state_dict, save_state_dict
from neon.core.values import plain
from neon.merging.extrapolate import check_merge_pair, log_pattern_counts
from neon.stages.base import training_threads
from neon.stages.run import Run, log

THETA_S = "theta_s.safetensors"


def finetune_module(run: Run, module: NeonModule, data, steps: int, callbacks: Sequence = ()) -> NeonModule:
    """Fine-tune a copy of θ_r on `data` for `steps` optimizer steps with the family's own loss."""
    import lightning as L

    from neon.stages.training import LightningNeon, TrainSettings

    seed, n = run.settings.seed, run.neon
    tuned = copy.deepcopy(module).cpu().train()
    settings = TrainSettings(optimizer=instantiate(n.optimizer), noise_seed=seed, lr_warmup_steps=n.lr_warmup_steps,
                             ema=n.finetune_ema)  # off: θ_s is the raw fine-tuned network
    L.seed_everything(seed, workers=True, verbose=False)
    run.trainer(max_steps=steps, callbacks=list(callbacks)).fit(LightningNeon(tuned, settings), datamodule=data)
    return tuned


def finetune_key(run: Run, base_digest: str, data_key: dict[str, Any], budget: int) -> dict[str, Any]:
    """What θ_s after `budget` steps depends on."""
    n = run.neon
    key = {
        "theta_r": base_digest, "synthetic": data_key, "budget_steps": budget,
        "batch_size": n.batch_size, "optimizer": n.optimizer, "seed": run.settings.seed,
        "finetune_ema": n.finetune_ema,
        "trainer": {k: plain(v) for k, v in run.cfg.trainer.items()
                    if k in ("precision", "accumulate_grad_batches", "gradient_clip_val")},
    }
    key.update(training_threads(run))
    if n.lr_warmup_steps:  # only when set, so θ_s cached before the option existed is still found
        key["lr_warmup_steps"] = n.lr_warmup_steps
    return key


def finetuned_weights(run: Run, module: NeonModule, make_data: Callable[[], Any], theta_r: StateDict,
                      base_digest: str, data_key: dict[str, Any], budgets: Sequence[int]) -> dict[int, Path]:
    """θ_s after every budget: from the cache, or from one fine-tune of θ_r (loaded into `module` first,
    whatever it held: an evaluation leaves θ_neon there) on `make_data()` (a data module, built only when a
    fine-tune runs: with every θ_s cached, Lightning is never imported) to the largest missing budget that
    snapshots each missing one on the way (the reference protocol's budget axis)."""
    keys = {b: finetune_key(run, base_digest, data_key, b) for b in budgets}
    folders = {b: run.cache.path("finetune", keys[b]) for b in budgets}

    def missing_budgets() -> list[int]:
        # checked against the checksums, not just found: a corrupt θ_s is set aside and fine-tuned again
        return broadcast([b for b in budgets if not run.cache.verified("finetune", keys[b])] if is_main() else None)

    missing = missing_budgets()
    if missing:
        with main_lock(str(folders[max(missing)]) + ".run.lock"):  # a concurrent job may be training it
            missing = missing_budgets()
            if missing:
                from neon.merging.callback import NeonMerge  # a Lightning callback: imported only to train

                def keep(b: int, theta_s: StateDict) -> None:
                    run.cache.get_or_build("finetune", keys[b], lambda work: save_state_dict(theta_s, work / THETA_S))

                module.load_neon_weights(theta_r, source="θ_r")
                finetune_module(run, module, make_data(), max(missing),
                                [NeonMerge(budgets=missing, keep_theta_s=keep)])
                log.info("θ_s: fine-tuned %d steps, snapshots at %s", max(missing), missing)
        barrier()  # rank 0 wrote the snapshots
    for b in budgets:
        if b not in missing:
            log.info("θ_s: reusing %s (budget %d, checksums verified)", folders[b], b)
        # a diverged fine-tune (NaN θ_s) is an error here, before any evaluation reads it as "no gain"
        check_merge_pair(theta_r, load_state_dict(folders[b] / THETA_S, what="θ_s"))
    return {b: folders[b] / THETA_S for b in budgets}


def log_merge_plan(run: Run, theta_r: StateDict) -> None:
    """For every block-wise `neon.w`: how many of θ_r's tensors each pattern decides (none: a warning)."""
    for w in run.neon.ws or ():  # neon.w=auto: the search logs its own
        log_pattern_counts(theta_r.keys(), w)



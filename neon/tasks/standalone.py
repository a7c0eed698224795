"""One stage alone on paths the user gives, writing into the run folder: pretrain, synthesize, finetune
(merge: neon/tasks/merge.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from neon.core.collectives import is_main
from neon.core.io import StateDict, load_state_dict, save_state_dict, write_json
from neon.core.values import plain
from neon.merging.callback import NeonMerge
from neon.stages.base import THETA_R, load_base, pretrain_into
from neon.stages.finetune import finetune_module
from neon.stages.front import validate
from neon.stages.run import Run
from neon.stages.synthesize import synthesize_into, synthetic_data, synthetic_key
from neon.weights.lightning_checkpoints import save_checkpoint_pair


def run_pretrain(cfg: DictConfig) -> dict:
    """Train θ_r from scratch into the run folder."""
    run = Run.from_config(cfg)
    with run.stage("pretrain"):
        pretrain_into(run, run.out)
    summary = {"task": "pretrain", "theta_r": str(run.out / THETA_R), "seconds": run.seconds}
    if not is_main():
        return summary
    module = run.build_module()
    module.load_neon_weights(load_state_dict(run.out / THETA_R))
    save_checkpoint_pair(module, run.out / "theta_r", cfg.model)
    write_json(run.out / "summary.json", summary)
    return summary


def run_synthesize(cfg: DictConfig) -> dict:
    """Draw S from θ_r (model.checkpoint, else pretrained) into `task.out` or the run folder."""
    run = Run.from_config(cfg)
    n_synthetic = run.neon.n_synthetic  # checked before θ_r is loaded
    with run.stage("pretrain"):
        module, digest, base_path = load_base(run)
    out = Path(cfg.task.out) if cfg.task.get("out") else run.out / "synthetic"
    with run.stage("synthesize"):
        synthesize_into(run, module, out)
    summary = {"task": "synthesize", "synthetic": str(out), "theta_r": str(base_path),
               "n_synthetic": n_synthetic, "sampler": plain(cfg.sampler), "seconds": run.seconds}
    if is_main():
        write_json(out / "key.json", synthetic_key(run, digest))
        write_json(run.out / "summary.json", summary)
    return summary


def theta_s_name(budget: int | None) -> str:
    """File name of θ_s in the run folder (per budget where the fine-tune snapshots several)."""
    return "theta_s.safetensors" if budget is None else f"theta_s_B{budget}.safetensors"


def run_finetune(cfg: DictConfig) -> dict:
    """Fine-tune θ_r on S (`task.synthetic`, else drawn now) for each of neon.budget_steps (snapshots of one
    fine-tune); the NeonMerge callback writes θ_s and θ_neon for every w at each."""
    validate(cfg)
    run = Run.from_config(cfg)
    ws, budgets = run.neon.numeric_ws("finetune"), list(run.neon.budgets)
    with run.stage("pretrain"):
        module, _, base_path = load_base(run)
    s_dir = Path(cfg.task.synthetic) if cfg.task.get("synthetic") else None
    if s_dir is None and run.neon.synthetic.mode != "stream":
        s_dir = run.out / "synthetic"
        with run.stage("synthesize"):
            synthesize_into(run, module, s_dir)
    several = len(budgets) > 1

    def keep(step: int, theta_s: StateDict) -> None:
        save_state_dict(theta_s, run.out / theta_s_name(step if several else None))

    merge = NeonMerge(ws, run.out, budgets=budgets, keep_theta_s=keep)
    with run.stage("finetune"):
        finetune_module(run, module, synthetic_data(run, module, s_dir), max(budgets), callbacks=[merge])
    summary = {"task": "finetune", "theta_r": str(base_path),
               "theta_s": {str(b): str(run.out / theta_s_name(b if several else None)) for b in budgets},
               "theta_neon": {k: str(v) for k, v in merge.paths.items()},
               "budget_steps": budgets if several else budgets[0], "seconds": run.seconds}
    if is_main():
        write_json(run.out / "summary.json", summary)
    return summary

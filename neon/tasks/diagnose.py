"""`task=diagnose`: the anti-alignment diagnostic at θ_r (the estimator is `neon.diagnose`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from neon.diagnose import gradient_alignment, parameter_groups, prediction
from neon.distributed import is_main
from neon.errors import NeonError
from neon.io import write_json
from neon.runtime import Run, plain, positive_int
from neon.stages import load_base, synthetic_data
from neon.tasks.front import cached_synthetic


def endless(loader: Iterable[dict]) -> Iterator[dict]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def run_diagnose(cfg: DictConfig) -> dict:
    """The anti-alignment diagnostic at θ_r: cos(E∇L_real, E∇L_S), raw and Adam-preconditioned, overall and
    per parameter group, with 95% intervals and a plain prediction → diagnosis.json."""
    positive_int(cfg.neon.n_synthetic, "neon.n_synthetic")
    run = Run.from_config(cfg)
    with run.stage("pretrain"):
        module, base_digest, base_path = load_base(run)
    _, s_dir = cached_synthetic(run, module, base_digest)
    # held-out real data estimates the population gradient (on θ_r's own training set it is ≈ 0 by training)
    real_cfg = OmegaConf.merge(cfg.data, cfg.task.real_data) if cfg.task.get("real_data") else cfg.data
    real = instantiate(real_cfg)
    if not hasattr(real, "train_dataloader"):
        raise NeonError(f"data={cfg.data._target_} has no real training data: the diagnostic compares real and "
                        "synthetic gradients (use data=digits, or a data module with train_dataloader)")
    t = cfg.task
    groups = parameter_groups(module.net, depth=int(t.group_depth), patterns=plain(t.groups))
    with run.stage("diagnose"):
        result = gradient_alignment(module.to(run.device), endless(real.train_dataloader()),
                                    endless(synthetic_data(run, module, s_dir).train_dataloader()),
                                    positive_int(t.num_batches, "task.num_batches"),
                                    blocks=positive_int(t.blocks, "task.blocks"), seed=cfg.seed, groups=groups)
    result.update(prediction=prediction(result), theta_r=str(base_path), synthetic=str(s_dir) if s_dir else "streamed",
                  sampler=plain(cfg.sampler), seconds=run.seconds)
    if is_main():
        write_json(run.out / "diagnosis.json", result)
        write_json(run.out / "summary.json", {"task": "diagnose", **result})
    print(f"gradient cosine real vs S at θ_r: {result['cosine']:+.3f} (95% {result['cosine_ci95'][0]:+.3f} … "
          f"{result['cosine_ci95'][1]:+.3f}), Adam-preconditioned {result['cosine_preconditioned']:+.3f} (95% "
          f"{result['cosine_preconditioned_ci95'][0]:+.3f} … {result['cosine_preconditioned_ci95'][1]:+.3f}) → "
          f"{result['prediction']}")
    return result

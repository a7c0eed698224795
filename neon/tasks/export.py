"""Files for other tools: samples in the ADM evaluation suite's layout (`task=sample`), and the loaded network
as safetensors plus a YAML model config (`task=export`), or in the family's release layout with a model card
and merge recipe (`task=export task.format=release`, neon/weights/release_export.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from neon.core.collectives import gather_strided, is_main, rank_world
from neon.core.contract import HasNativeExport, release_sampling
from neon.core.errors import NeonError
from neon.core.io import atomic_path, file_sha256, save_state_dict, write_json, write_text
from neon.core.release_sampling import (
    UNCONDITIONAL,
    LabelSpec,
    check_label_count,
    check_rng_mode,
    label_spec,
    resolve_labels,
)
from neon.core.seeding import parse_seeds
from neon.core.values import plain, positive_int
from neon.stages.base import load_base
from neon.stages.run import Run, log
from neon.weights.release_export import (
    CARD,
    RECIPE,
    RunRecord,
    check_export_format,
    float_dtype,
    merge_recipe,
    model_card,
    model_choice,
    native_card,
    neon_parts,
    read_run,
    release_files,
    sha256_if_present,
)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def per_seed_arrays(module, seeds: list[int], batch: int, sampler, spec: LabelSpec, rank: int, world: int
                    ) -> dict[str, np.ndarray]:
    """This process's strided share of the seeds, one generator per image (`arr_0`, `arr_1`)."""
    images, labels = [], []
    for start in tqdm(range(0, len(seeds), batch), desc="sample", unit="batch", disable=not is_main()):
        # the given labels of this rank's seeds: the whole list is in seed order
        given = None if not isinstance(spec, list) else \
            torch.tensor(spec[rank::world][start:start + batch], dtype=torch.long, device=module.device)
        x, y = module.generate(seeds[start:start + batch], sampler, given)
        images.append(module.export_samples(x))
        if y is not None:
            labels.append(y.cpu().numpy())
    local = {"arr_0": np.concatenate(images)} if images else {}
    if labels:
        local["arr_1"] = np.concatenate(labels)
    return local


def release_arrays(module, cfg: DictConfig, seeds: list[int], batch: int, sampler, spec: LabelSpec,
                   world: int) -> dict[str, np.ndarray]:
    """`sample.rng=release`: the family's official seeding, batch after batch from one stream (one process)."""
    if world > 1:
        raise NeonError("sample.rng=release draws every batch from one generator, as the release does: run it in "
                        "one process (trainer=cpu or trainer.devices=1)")
    out: dict[str, list[np.ndarray]] = {"arr_0": [], "arr_1": [], "raw": [], "latents": []}
    keep_raw = bool(cfg.sample.get("raw"))
    draws = release_sampling(module).generate_release(int(cfg.sample.release_seed), seeds, batch, sampler, spec)
    for draw in tqdm(draws, desc="sample (release)", unit="batch", total=-(-len(seeds) // batch)):
        out["arr_0"].append(module.export_samples(draw.samples))
        if draw.labels is not None:
            out["arr_1"].append(draw.labels.cpu().numpy())
        if keep_raw:
            out["raw"].append(draw.raw.detach().float().cpu().numpy())
            if draw.latents is not None:
                out["latents"].append(draw.latents.detach().float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


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
    mode, named = check_rng_mode(cfg.sample.get("rng", "per_seed")), label_spec(cfg.sample.get("labels"))
    spec = resolve_labels(named, len(seeds), module.num_classes)
    check_label_count(spec, len(seeds))
    rank, world = rank_world()
    with run.stage("sample"):
        if mode == "release":
            arrays = release_arrays(module, cfg, seeds, batch, sampler, spec, world)
        else:
            if spec == UNCONDITIONAL or cfg.sample.get("raw"):
                raise NeonError("sample.labels=unconditional and sample.raw=true need sample.rng=release")
            arrays = gather_strided(per_seed_arrays(module, seeds[rank::world], batch, sampler, spec, rank, world))
    out = Path(cfg.sample.out) if cfg.sample.get("out") else run.out / "samples.npz"
    summary = {"task": "sample", "out": str(out), "n": len(seeds), "world_size": world,
               "seeds": str(cfg.sample.seeds), "theta": str(base_path), "sampler": plain(cfg.sampler),
               "rng": mode, **({"release_seed": int(cfg.sample.release_seed)} if mode == "release" else {}),
               "labels": named if isinstance(named, str) else "given",
               "seconds": run.seconds}
    if is_main():
        write_npz(out, arrays)
        write_json(run.out / "summary.json", summary)
    log.info("wrote %d samples to %s", len(seeds), out)
    return summary


def export_config(cfg: DictConfig, record: RunRecord) -> DictConfig:
    """This config with the run's model and sampler, its checkpoint the run's weights."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model = record.config.model
        cfg.sampler = record.config.sampler
        cfg.model.checkpoint = str(record.weights)
    return cfg


def run_export(cfg: DictConfig) -> dict:
    """Write the loaded θ (model.checkpoint, e.g. an official snapshot, or `task.run`: a finished run's θ_neon,
    θ_r or export, with the run's model config) as safetensors plus a YAML model config; `task.format=release`
    also in the family's release layout (the flat `.pth` its official scripts load), with a model card and, for
    a Neon run, the merge recipe θ_neon = (1 + w)·θ_r − w·θ_s."""
    fmt = check_export_format(cfg.task.get("format", "neon"))
    record = read_run(cfg.task.run) if cfg.task.get("run") else None
    if record is not None:
        cfg = export_config(cfg, record)
    run = Run.from_config(cfg)
    module, digest, base_path = load_base(run, shape_from_checkpoint=True)
    state = module.neon_weights()
    stem = "theta_neon" if fmt == "release" and record is not None and record.is_neon else "model"
    files = release_files(state, stem, run.out, type(module)) if fmt == "release" else \
        {"safetensors": save_state_dict(state, run.out / "model.safetensors")}
    weights = files["safetensors"]
    # the family's own layout, if it has one
    native = None
    if isinstance(module, HasNativeExport):  # model_pipeline/, theta_neon_pipeline/; model/, theta_neon_model/
        folder = stem if stem == module.native_folder else f"{stem}_{module.native_folder}"
        native = module.write_native(state, run.out / folder)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.update(module.config_overrides())
    model_cfg["checkpoint"] = str(weights.resolve())
    write_text(run.out / "model.yaml", OmegaConf.to_yaml(model_cfg))
    summary = {"task": "export", "format": fmt, "source": str(base_path), "weights": str(weights),
               "config": str(run.out / "model.yaml"), "digest": digest,
               "run": str(record.folder) if record is not None else None,
               **({module.native_folder: str(native)} if native is not None else {})}
    carded = native is not None or fmt == "release"  # a model card names the files by their digests
    parts = neon_parts(record) if carded and record is not None and record.is_neon else None
    name = record.model_name if record is not None else model_choice()
    source_sha = sha256_if_present(base_path, "the source") if carded else None
    if native is not None:
        summary[f"{module.native_folder}_card"] = str(native_card(
            native, module_cls=type(module), model_name=name, source=base_path, source_sha=source_sha,
            weights_digest=digest, record=record, parts=parts, written_by="`neon task=export`"))
    if fmt == "release":
        shas = {kind: (path, file_sha256(path)) for kind, path in files.items()}
        shas["model.yaml"] = (run.out / "model.yaml", file_sha256(run.out / "model.yaml"))
        if parts is not None:
            write_text(run.out / RECIPE, merge_recipe(parts, float_dtype(state)))
            summary["recipe"] = {"file": str(run.out / RECIPE), "theta_r": str(parts.theta_r),
                                 "theta_r_sha256": parts.sha_r, "theta_s": str(parts.theta_s),
                                 "theta_s_sha256": parts.sha_s, "w": parts.w, "budget_steps": parts.budget}
        write_text(run.out / CARD, model_card(
            family=type(module).family, model_name=name, files=shas, module_cls=type(module), source=base_path,
            source_sha=source_sha, weights_digest=digest,
            record=record, parts=parts))
        summary["files"] = {path.name: sha for path, sha in shas.values()}
        summary["card"] = str(run.out / CARD)
    write_json(run.out / "summary.json", summary)
    log.info("exported %s → %s", base_path, ", ".join(str(p) for p in files.values()))
    return summary

"""`task=export format=release`: θ handed back in the formats people load — the flat `.pth` state dict the
family's official scripts read (where the release has one) and safetensors for every family — with a model
card `README.md` and, for a Neon run's θ_neon, a merge recipe that remakes it from θ_r and θ_s as task
arithmetic (the form model-merging tools read)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from neon.analysis.run_report import w_label, w_table
from neon.core.errors import NeonError
from neon.core.io import StateDict, file_sha256, read_json, save_state_dict, save_torch_state_dict, write_text
from neon.merging.extrapolate import WSpec

log = logging.getLogger("neon")

EXPORT_FORMATS = ("neon", "release")
# the weights a finished run folder holds, in the order an export takes them: θ_neon, an export, θ_r
RUN_WEIGHTS = ("theta_neon.safetensors", "model.safetensors", "theta_r.safetensors")
RECIPE = "merge_recipe.yaml"
CARD = "README.md"


def check_export_format(value: Any) -> str:
    """`task.format` checked: 'neon' (model.safetensors + model.yaml) or 'release'."""
    if value not in EXPORT_FORMATS:
        raise NeonError(f"task.format must be one of {list(EXPORT_FORMATS)}, got {value!r}")
    return str(value)


@dataclass
class RunRecord:
    """A finished run folder as an export reads it: its weights file, config, summary and model config name."""

    folder: Path
    weights: Path
    config: DictConfig
    summary: dict[str, Any]
    model_name: str | None

    @property
    def is_neon(self) -> bool:
        """Whether the run is a Neon run (`task=neon`), whose weights are θ_neon."""
        return self.summary.get("task") == "neon"


def read_run(folder: str | Path) -> RunRecord:
    """The weights, config (`.hydra/config.yaml`) and `summary.json` of a finished run folder (`task.run`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NeonError(f"task.run '{folder}' is not a folder: give the folder of a finished neon, pretrain or "
                        "export run")
    config, summary = folder / ".hydra" / "config.yaml", folder / "summary.json"
    for path, what in ((summary, "summary.json"), (config, ".hydra/config.yaml")):
        if not path.is_file():
            raise NeonError(f"task.run '{folder}' has no {what}: give the folder of a finished run (the one its "
                            "summary.json is in)")
    weights = next((folder / name for name in RUN_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise NeonError(f"task.run '{folder}' holds none of {', '.join(RUN_WEIGHTS)}: give a finished neon, "
                        "pretrain or export run")
    choices = folder / ".hydra" / "hydra.yaml"
    name = OmegaConf.select(OmegaConf.load(choices), "hydra.runtime.choices.model") if choices.is_file() else None
    return RunRecord(folder, weights, OmegaConf.load(config), read_json(summary), name)


def release_files(state: StateDict, stem: str, out: Path, module_cls: type) -> dict[str, Path]:
    """`<stem>.pth` (a flat torch state dict) where the family's release loads one, and `<stem>.safetensors`."""
    files = {}
    if module_cls.release_pth:
        files["pth"] = save_torch_state_dict(state, out / f"{stem}.pth")
    files["safetensors"] = save_state_dict(state, out / f"{stem}.safetensors")
    return files


def folder_sha256(folder: Path) -> str:
    """One SHA-256 for a folder (a pipeline folder θ_r): over each file's path relative to it and SHA-256."""
    lines = [f"{p.relative_to(folder).as_posix()} {file_sha256(p)}\n"
             for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def sha256_if_present(path: str | Path, what: str) -> str | None:
    """A file's (or folder's) SHA-256, or None (with a warning) when it is gone (e.g. a cleaned artifact cache)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        return folder_sha256(path)
    log.warning("%s '%s' no longer exists: the model card and merge recipe name it without a digest", what, path)
    return None


@dataclass
class NeonParts:
    """Where θ_neon came from: θ_r and θ_s (files and SHA-256 digests), w and the budget."""

    theta_r: Path
    sha_r: str | None
    theta_s: Path
    sha_s: str | None
    w: WSpec
    budget: int


def neon_parts(record: RunRecord) -> NeonParts:
    """θ_r, θ_s at the chosen budget and w, as a Neon run's summary.json records them."""
    s = record.summary
    artifacts, budget = s.get("artifacts") or {}, s.get("budget_steps")
    theta_s = (artifacts.get("theta_s") or {}).get(str(budget))
    if not artifacts.get("theta_r") or not theta_s or s.get("w") is None:
        raise NeonError(f"run '{record.folder}': summary.json records no artifacts.theta_r, artifacts.theta_s at "
                        f"budget {budget} or w: export a run written by task=neon")
    theta_r, theta_s = Path(artifacts["theta_r"]), Path(theta_s)
    return NeonParts(theta_r, sha256_if_present(theta_r, "θ_r"), theta_s, sha256_if_present(theta_s, "θ_s"),
                     s["w"], int(budget))


def float_dtype(state: StateDict) -> str:
    """The dtype of the state dict's floating-point tensors as a merge tool names it ('float32')."""
    kinds = {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else "float32"


def merge_recipe(parts: NeonParts, dtype: str) -> str:
    """θ_neon = (1 + w)·θ_r − w·θ_s as a task-arithmetic merge (mergekit's YAML): base θ_r, one model θ_s of
    weight −w, λ = 1, no normalisation — θ_r + (−w)·(θ_s − θ_r) is the same sum; the digests as comments,
    which merge tools skip."""
    w = parts.w
    if isinstance(w, dict):  # block-wise: mergekit's per-tensor settings, first matching filter wins
        weight: Any = [{"filter": p, "value": -float(v)} for p, v in w.items() if p != "default"]
        weight.append({"value": -float(w["default"])})
    else:
        weight = -float(w)
    recipe = {"merge_method": "task_arithmetic", "base_model": str(parts.theta_r),
              "models": [{"model": str(parts.theta_s), "parameters": {"weight": weight}}],
              "parameters": {"normalize": False, "lambda": 1.0}, "dtype": dtype}
    w_text = w_label(w if isinstance(w, dict) else float(w))
    head = [
        f"# θ_neon = (1 + w)·θ_r − w·θ_s with w = {w_text} (Neon: negative extrapolation from self-training),",
        "# written as task arithmetic: θ_r + λ·weight·(θ_s − θ_r) with λ = 1, weight = −w, no normalisation.",
        f"# θ_r (base_model): {parts.theta_r}  sha256 {parts.sha_r or 'unknown (file gone)'}",
        f"# θ_s (fine-tuned on θ_r's own samples for {parts.budget} steps): {parts.theta_s}  "
        f"sha256 {parts.sha_s or 'unknown (file gone)'}",
        "# Tensors that are not floating point (integer buffers) and θ_r's −inf attention masks are copied from",
        "# θ_r, not merged: neon-merge does this; a tool that merges them turns the masks into NaN.",
        f"# The same merge with neon: neon-merge {parts.theta_r} {parts.theta_s} --w '{w_text}' -o theta_neon.safetensors",
    ]
    if isinstance(w, dict):
        head.append("# Block-wise w: each filter is one of neon's regular expressions (re.search over tensor names).")
    return "\n".join(head) + "\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def _code(value: Any) -> str:
    return f"`{json.dumps(value, sort_keys=True)}`" if not isinstance(value, str) else f"`{value}`"


def model_card(*, family: str, model_name: str | None, files: dict[str, tuple[Path, str]], module_cls: type,
               source: Path, source_sha: str | None, weights_digest: str, record: RunRecord | None,
               parts: NeonParts | None, root: Path | None = None, recipe: bool = True,
               written_by: str = "`neon task=export task.format=release`") -> str:
    """The `README.md` written next to the exported files: where θ came from and how it scored (`files` named
    relative to `root` when given; the merge recipe's row only where `recipe` was written beside them)."""
    title = f"{family}" + (f" (`model={model_name}`)" if model_name else "")
    header = getattr(module_cls, "native_card_header", "")  # families with their own layout (HasNativeExport)
    lines = [header] if root is not None and header else []
    lines += [f"# {'θ_neon' if parts else 'θ'}: {title}", ""]
    if parts and record:
        s = record.summary
        m = s.get("metric") or {}
        lines += [
            "Neon (negative extrapolation from self-training): θ_neon = (1 + w)·θ_r − w·θ_s, where θ_s is θ_r "
            "fine-tuned on S, samples θ_r drew itself.", "",
            "| | |", "|---|---|",
            f"| base checkpoint θ_r | `{parts.theta_r}` (sha256 `{parts.sha_r or 'unknown: file gone'}`) |",
            f"| θ_s | `{parts.theta_s}` (sha256 `{parts.sha_s or 'unknown: file gone'}`) |",
            f"| S | {s.get('n_synthetic')} samples from {s.get('synthetic_source') or 'θ_r'}, sampler "
            f"{_code(s.get('sampler'))} |",
            f"| budget | {parts.budget} optimizer steps |",
            f"| w | {w_label(parts.w if isinstance(parts.w, dict) else float(parts.w))} |",
            f"| FID | θ_r {s.get('fid_base')} → θ_neon {s.get('fid_neon')} |",
            f"| metric | {m.get('num_samples')} samples, seeds {m.get('seeds')}, reference "
            f"{_code(m.get('reference'))}, extractor {_code(m.get('extractor'))}, sampler "
            f"{_code(s.get('eval_sampler'))} |",
            "", f"## w-curve (budget {parts.budget})", "", w_table(s), "",
        ]
    else:
        lines += [f"Exported from `{source}` (sha256 `{source_sha or 'unknown'}`). Not a Neon run's θ_neon: no S, "
                  "budget, w or metric is recorded (export a Neon run's θ_neon with `task.run=<run folder>`).", ""]
    lines += ["## Files", "", "| file | sha256 | what |", "|---|---|---|"]
    what = {"pth": f"flat torch state dict, {module_cls.release_pth}",
            "safetensors": "the weights as safetensors (`safetensors.torch.load_file`)",
            "model.yaml": "the neon model config of these weights (its `checkpoint` names the safetensors)",
            "network": "the network's weights, as the pipeline's own format stores them"}
    for kind, (path, sha) in files.items():
        name = path.relative_to(root).as_posix() if root is not None else path.name
        lines.append(f"| `{name}` | `{sha}` | {what.get(kind.split(':')[0], '')} |")
    if parts and recipe:
        lines.append(f"| `{RECIPE}` | | θ_neon from θ_r and θ_s as task arithmetic (mergekit's YAML; "
                     "`neon-merge` gives the same) |")
    lines += ["", f"Weights digest (neon's, over names, dtypes, shapes and bytes): `{weights_digest}`.", ""]
    if module_cls.release_note:
        lines += [module_cls.release_note + ".", ""]
    origin = f"run `{record.folder}`" if record else f"`{source}`"
    lines.append(f"Written by {written_by} from {origin}.")
    return "\n".join(lines) + "\n"


def native_card(native: Path, *, module_cls: type, model_name: str | None, source: Path, source_sha: str | None,
                weights_digest: str, record: RunRecord | None, parts: NeonParts | None, written_by: str) -> Path:
    """The model card `README.md` inside a family's own layout (`write_native`'s folder), its weight files
    listed with their digests."""
    weights = sorted(p for p in native.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    files = {f"network:{p.name}": (p, file_sha256(p)) for p in weights}
    text = model_card(family=module_cls.family, model_name=model_name, files=files, module_cls=module_cls,
                      source=source, source_sha=source_sha, weights_digest=weights_digest, record=record,
                      parts=parts, root=native, recipe=False, written_by=written_by)
    write_text(native / CARD, text)
    return native / CARD


def model_choice() -> str | None:
    """The `model=` config name of this Hydra run (None outside one)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None


def neon_run_card(native: Path, folder: Path, config: DictConfig, summary: dict[str, Any], module_cls: type,
                  weights_digest: str) -> Path:
    """The model card of a Neon run's θ_neon inside `write_native`'s folder, from the run's summary."""
    record = RunRecord(folder, folder / "theta_neon.safetensors", config, summary, model_choice())
    parts = neon_parts(record)
    return native_card(native, module_cls=module_cls, model_name=record.model_name, source=parts.theta_r,
                       source_sha=parts.sha_r, weights_digest=weights_digest, record=record, parts=parts,
                       written_by="`neon` (task=neon)")

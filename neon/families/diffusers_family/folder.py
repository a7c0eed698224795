"""Read a diffusers pipeline folder (what `save_pretrained` writes) from local disk, and check it is one the
family supports; nothing is downloaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neon.core.errors import NeonError

# pipeline class → (its denoising network's component, that component's class, its frozen VAE component)
PIPELINES = {"DDPMPipeline": ("unet", "UNet2DModel", None), "DDIMPipeline": ("unet", "UNet2DModel", None),
             "DiTPipeline": ("transformer", "DiTTransformer2DModel", "vae")}
# schedulers whose training objective is add_noise + a prediction target, and the flow-matching one
# (x_t = (1 − σ)·x0 + σ·ε, target ε − x0) (docs/upstream/diffusers.md)
NOISE_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
SCHEDULERS = NOISE_SCHEDULERS + FLOW_SCHEDULERS
PREDICTIONS = ("epsilon", "v_prediction", "sample")


@dataclass
class PipelineFolder:
    """A pipeline folder's parts: its class, the network component's name, class and folder, the scheduler."""

    path: Path
    pipeline_class: str
    network_name: str
    network_class: str
    scheduler_class: str
    scheduler_config: dict[str, Any]
    vae_name: str | None = None

    @property
    def network_dir(self) -> Path:
        """The folder of the denoising network (config.json and its weights)."""
        return self.path / self.network_name

    def network_config(self) -> dict[str, Any]:
        """The network's constructor settings from its config.json (diffusers' bookkeeping keys dropped),
        with its class under `class_name`."""
        config = _read_json(self.network_dir / "config.json", f"the {self.network_name} config")
        return {"class_name": self.network_class, **{k: v for k, v in config.items() if not k.startswith("_")}}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise NeonError(f"{what} '{path}' does not exist: the folder is not a complete diffusers pipeline "
                        "(save it with pipeline.save_pretrained)")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise NeonError(f"{what} '{path}' is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise NeonError(f"{what} '{path}' is not a JSON object")
    return data


def check_scheduler(name: str, config: dict[str, Any], where: str) -> None:
    """A scheduler the family can train with: a supported class and prediction type (flow matching: a fixed
    shift; a resolution-dependent one needs the text-to-image pipelines' latent sizes)."""
    if name in FLOW_SCHEDULERS and config.get("use_dynamic_shifting"):
        raise NeonError(f"{where}: {name} with use_dynamic_shifting is not supported: set a fixed shift")
    if name not in SCHEDULERS:
        raise NeonError(f"{where}: scheduler {name} has no training objective here: supported are "
                        f"{', '.join(SCHEDULERS)}")
    prediction = config.get("prediction_type", "epsilon")
    if name in NOISE_SCHEDULERS and prediction not in PREDICTIONS:
        raise NeonError(f"{where}: prediction_type '{prediction}' is not one of {', '.join(PREDICTIONS)}")


def read_pipeline_folder(path: str | Path) -> PipelineFolder:
    """The parts of a local pipeline folder, checked; a missing or remote-looking path is an error."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        hint = " (a Hub id is not downloaded: save the pipeline locally first)" if "/" in str(path) and not \
            str(path).startswith(("/", ".", "~")) else ""
        raise NeonError(f"model.pretrained '{path}' is not a local folder{hint}: give the folder "
                        "pipeline.save_pretrained wrote")
    index = _read_json(folder / "model_index.json", "model index")
    name = str(index.get("_class_name", "?"))
    if name not in PIPELINES:
        raise NeonError(f"'{folder}' holds a {name}, which is not supported: use a folder of "
                        f"one of {', '.join(sorted(PIPELINES))}")
    network_name, network_class, vae_name = PIPELINES[name]
    entry = index.get(network_name)
    if not (isinstance(entry, list) and len(entry) == 2 and entry[1] == network_class):
        raise NeonError(f"'{folder}/model_index.json': '{network_name}' should be a {network_class}, found {entry!r}")
    scheduler_entry = index.get("scheduler")
    if not (isinstance(scheduler_entry, list) and len(scheduler_entry) == 2):
        raise NeonError(f"'{folder}/model_index.json' names no scheduler")
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
    scheduler_class = str(scheduler_entry[1])
    check_scheduler(scheduler_class, scheduler_config, f"'{folder}'")
    if vae_name is not None:
        _read_json(folder / vae_name / "config.json", f"the {vae_name} config")
    return PipelineFolder(folder, name, network_name, network_class, scheduler_class, scheduler_config, vae_name)

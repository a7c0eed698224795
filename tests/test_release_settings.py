"""Settings a released checkpoint records are compared with the config: adopted with a log line where the
config was left at its default, else a one-line error naming both values; never silently dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from neon.core.errors import NeonError
from neon.families.imm import IMMModule
from neon.families.latents import PixelLatent
from tests.test_imm import LATENT, NET, random_precond, write_persistence_pickle


def _snapshot(tmp_path: Path, **recorded) -> Path:
    path = tmp_path / "imagenet256_s_a1.pkl"
    write_persistence_pickle(path, random_precond(NET).state_dict(), {**NET, **recorded})
    return path


def _output(module: IMMModule) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t, s = torch.tensor([0.9, 0.6]), torch.tensor([0.3, 0.1])
    return module.sampling_net(x, t, s, torch.tensor([1, 2]))


def test_imm_snapshot_with_identity_embedding_is_adopted_under_the_default(tmp_path: Path, caplog):
    path = _snapshot(tmp_path, temb_type="identity", T=0.99)
    module = IMMModule(NET, PixelLatent(**LATENT))  # temb_type left at the default 'stride'
    with caplog.at_level(logging.INFO, logger="neon"):
        module.load_checkpoint(path)
    line = next(r.getMessage() for r in caplog.records if "adopted" in r.getMessage())
    assert "temb_type='identity'" in line and "T=0.99" in line and "\n" not in line
    assert (module.net.temb_type, module.sampling_net.temb_type, module.sampling_net.T) == ("identity", "identity", 0.99)
    assert module.config_overrides()["network"]["temb_type"] == "identity"
    # the same as a config that states the snapshot's settings, and not what the default would give
    stated = IMMModule({**NET, "temb_type": "identity", "T": 0.99}, PixelLatent(**LATENT))
    stated.load_checkpoint(path)
    assert torch.equal(_output(module), _output(stated))
    wrong = IMMModule(NET, PixelLatent(**LATENT))
    wrong.load_neon_weights(module.neon_weights())
    assert not torch.equal(_output(module), _output(wrong))


def test_imm_snapshot_against_a_config_that_says_otherwise_is_an_error(tmp_path: Path):
    path = _snapshot(tmp_path, temb_type="stride", sigma_data=0.5)
    module = IMMModule({**NET, "temb_type": "identity"}, PixelLatent(**LATENT))
    with pytest.raises(NeonError, match="built with temb_type='stride' but the config sets "
                                        "model.network.temb_type='identity'") as info:
        module.load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(NeonError, match="built with sigma_data=0.5 but the config sets model.network.sigma_data=1.0"):
        IMMModule({**NET, "sigma_data": 1.0}, PixelLatent(**LATENT)).load_checkpoint(path)
    with pytest.raises(NeonError, match="f_type='simple_edm'; neon implements only f_type='euler_fm'"):
        IMMModule(NET, PixelLatent(**LATENT)).load_checkpoint(_snapshot(tmp_path, f_type="simple_edm"))


def test_imm_snapshot_recording_the_config_loads_without_adoption(tmp_path: Path, caplog):
    path = _snapshot(tmp_path, temb_type="stride", T=0.994, eps=0.0, sigma_data=0.5, time_scale=1000,
                     noise_schedule="fm", f_type="euler_fm", s_embed=True)
    module = IMMModule(NET, PixelLatent(**LATENT))
    with caplog.at_level(logging.INFO, logger="neon"):
        module.load_checkpoint(path)
    assert not any("adopted" in r.getMessage() for r in caplog.records)
    assert module.net.temb_type == "stride"

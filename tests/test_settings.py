"""The neon and metrics groups read once at the edge: NeonSettings and MetricSettings check every key in one line
before any work, and nothing below the edge reads `cfg.neon` or `cfg.metrics` itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from neon.core.errors import NeonError
from neon.stages.settings import MetricSettings, NeonSettings
from tests.helpers import cli_error, task_config

PACKAGE = Path(__file__).resolve().parents[1] / "neon"


def test_the_neon_group_becomes_typed_settings(tmp_path: Path):
    cfg, _ = task_config(["neon.budget_steps=[40,10,40]", "neon.w=[1,0.5]", "neon.synthetic.seed=7",
                          "neon.w=auto"], tmp_path)
    neon = NeonSettings.of(cfg)
    assert neon.budgets == (10, 40)  # sorted, once each: snapshots of one fine-tune
    assert neon.ws is None and neon.auto_w and neon.auto is not None and neon.auto.w_max == 8.0
    assert neon.synthetic.seed == 7 and neon.synthetic.mode == "cached"
    assert neon.control is True and neon.finetune_ema is False  # the digits recipe
    cfg, _ = task_config(["neon.w=[1,0.5]"], tmp_path)
    neon = NeonSettings.of(cfg)
    assert neon.ws == (1.0, 0.5) and all(isinstance(w, float) for w in neon.ws) and neon.auto is None
    assert neon.numeric_ws("merge") == [1.0, 0.5]


@pytest.mark.parametrize("override, message", [
    ("neon.synthetic.mode=live", "neon.synthetic.mode must be 'cached' or 'stream', got 'live'"),
    ("neon.synthetic.shard_size=300", "neon.synthetic.shard_size (300) must be a multiple of neon.synthetic.block_size"),
    ("neon.rounds=0", "neon.rounds must be a positive integer, got 0"),
    ("neon.lr_warmup_steps=-5", "neon.lr_warmup_steps must be 0 or a positive integer, got -5"),
    ("neon.auto.step=0", None),  # not read without neon.w=auto: valid input is never refused
    ("metrics.block_size=0", "metrics.block_size must be a positive integer, got 0"),
    ("metrics.seed_sets=-1", "metrics.seed_sets must be a positive integer, got -1"),
    ("metrics.select=kid", "metrics.select=kid is not among metrics.compute ['fid', 'pr']"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("preview_samples=-1", "preview_samples must be 0 or a positive integer, got -1"),
    ("progress_refresh_rate=0", "progress_refresh_rate must be a positive integer, got 0"),
])
def test_a_bad_neon_key_is_refused_before_any_work(override: str, message: str | None, tmp_path: Path):
    if message is None:
        cfg, _ = task_config([override], tmp_path)
        assert NeonSettings.of(cfg).auto is None
        with pytest.raises(NeonError, match="neon.auto.step must be positive"):
            NeonSettings.of(task_config([override, "neon.w=auto"], tmp_path)[0])
        return
    assert message in cli_error([override])


def test_the_metrics_group_becomes_typed_settings(tmp_path: Path):
    cfg, _ = task_config(["metrics.heldout_num_samples=500", "metrics.seed_sets=null"], tmp_path)
    m = MetricSettings.of(cfg)
    assert (m.num_samples, m.seed_sets, m.heldout_num_samples, m.compute, m.select) == (3000, 1, 500, ("fid", "pr"), "fid")
    assert m.extractor["cache_dir"] == str(tmp_path / "cache")  # interpolations resolved against the whole config


def test_nothing_below_the_edge_reads_the_neon_or_metrics_group_from_the_config():
    # the settings module reads them; the rounds write a round's config (θ_r = the last θ_neon) for the next run
    reads = re.compile(r"cfg\.(neon|metrics|seed)\b(?!\.rounds = 1)|"
                       r"cfg\.get\(\"(seed|device|preview_samples|progress_refresh_rate|resume_every_steps)\"")
    found = [f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}" for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "settings.py" for i, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]
    assert not found, "read them through Run.neon, Run.metrics, Run.settings (neon/stages/settings.py):\n" + "\n".join(found)

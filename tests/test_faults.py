"""Fault injection: every corrupted artifact is detected and rebuilt, every broken input is refused in one
line before any work, and nothing exits 0 with a wrong result."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from neon.core.errors import NeonError
from neon.core.io import load_state_dict, read_json, write_json
from neon.families.toy2d import ToyDiffusion
from neon.launch.cli import CONF_DIR
from neon.merging.extrapolate import extrapolate, merge_files
from neon.merging.merge_command import main as neon_merge
from neon.stages.base import RESUME, THETA_R, pretrain_into
from neon.stages.run import Run
from neon.tasks.pipeline import run_neon
from tests.helpers import TINY_TOY, cli_command, run_cli, run_task, summary_of


def toy_cfg(tmp_path: Path, *overrides: str):
    """The tiny toy run's config, composed in-process, with its own cache and run folder."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*TINY_TOY, "logger=none", "preview_samples=0",
                                            f"paths.cache_dir={tmp_path / 'cache'}",
                                            f"paths.output_dir={tmp_path / 'run'}", *overrides])


def toy_theta_r(tmp_path: Path, **tensors: torch.Tensor) -> Path:
    """A finite toy θ_r (a fresh network) as a file, with `tensors` replaced."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in ToyDiffusion().net.state_dict().items()}
    state.update(tensors)
    save_file(state, tmp_path / "theta_r.safetensors")
    return tmp_path / "theta_r.safetensors"


def cache_kinds(tmp_path: Path) -> set[str]:
    """The kinds of artifact the cache holds (pretrain, synthetic, finetune, eval, ...)."""
    root = tmp_path / "cache"
    return {p.name for p in root.iterdir() if any(p.iterdir())} if root.is_dir() else set()


def flip_bytes(path: Path) -> None:
    """Corrupt a file in place: invert a few bytes in its middle (size and name unchanged)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- corrupted artifacts


@pytest.mark.slow
def test_each_corrupted_artifact_is_detected_and_rebuilt(tmp_path: Path):
    args = [*TINY_TOY, "neon.budget_steps=[3,5]", "preview_samples=0"]
    run_task(args, tmp_path, "first")
    cache = tmp_path / "cache"
    victims = {
        "pretrain": next(cache.glob(f"pretrain/*/{THETA_R}")),
        "synthetic": next(cache.glob("synthetic/*/shard_*.pt")),
        "eval": next(cache.glob("eval/*/result.json")),
    }
    snapshots = sorted(cache.glob("finetune/*/theta_s.safetensors"))
    assert len(snapshots) == 2  # θ_s at each budget snapshot
    for path in [*victims.values(), *snapshots]:
        flip_bytes(path)
    with pytest.warns(UserWarning, match="fails its checksums"):
        run_task(args, tmp_path, "again")
    for kind in ("pretrain", "synthetic", "eval"):
        assert len(list((cache / kind).glob("*.corrupt-*"))) == 1, kind  # set aside, then rebuilt
    assert len(list((cache / "finetune").glob("*.corrupt-*"))) == 2
    for path in [*victims.values(), *snapshots]:
        assert path.is_file()
    # rebuilt bit for bit: the same scores as before the corruption
    a, b = summary_of(tmp_path, "first"), summary_of(tmp_path, "again")
    assert a["grid"] == b["grid"] and a["fid_base"] == b["fid_base"]


def test_corrupted_digits_classifier_is_rebuilt(tmp_path: Path):
    from neon.metrics.digits import DigitsFeatures

    x = torch.rand(5, 1, 8, 8) * 2 - 1
    before = DigitsFeatures(str(tmp_path), epochs=1)(x)
    weights = next(tmp_path.glob("extractor/*/classifier.safetensors"))
    flip_bytes(weights)
    with pytest.warns(UserWarning, match="fails its checksums"):
        after = DigitsFeatures(str(tmp_path), epochs=1)(x)
    assert torch.equal(before, after)
    assert len(list((tmp_path / "extractor").glob("*.corrupt-*"))) == 1


# ---------------------------------------------------------------- the merge rule


def test_nan_theta_s_in_the_pipeline_is_an_error_naming_the_lr(tmp_path: Path):
    theta_r = toy_theta_r(tmp_path)
    cfg = toy_cfg(tmp_path, f"model.checkpoint={theta_r}", "neon.optimizer.lr=1e8")
    with pytest.raises(NeonError, match=r"θ_s diverged: key '.*' holds NaN or inf .*lower neon.optimizer.lr"):
        run_neon(cfg)
    assert "eval" not in cache_kinds(tmp_path)  # refused before any score
    assert not (tmp_path / "run" / "summary.json").exists()


def test_nan_theta_r_is_an_error_before_any_work(tmp_path: Path):
    broken = ToyDiffusion().net.state_dict()["out.bias"].clone()
    broken[0] = math.nan
    theta_r = toy_theta_r(tmp_path, **{"out.bias": broken})
    with pytest.raises(NeonError, match=r"θ_r .* is not finite: key 'out.bias' holds NaN"):
        run_neon(toy_cfg(tmp_path, f"model.checkpoint={theta_r}"))
    assert cache_kinds(tmp_path) == set()


def test_merge_rule_copies_masks_and_refuses_failures():
    base = {"w": torch.ones(3), "mask": torch.tensor([0.0, -math.inf]), "step": torch.tensor([3])}
    good = {"w": torch.zeros(3), "mask": torch.tensor([0.5, -math.inf]), "step": torch.tensor([4])}
    merged = extrapolate(base, good, 1.0)
    assert torch.equal(merged["w"], torch.full((3,), 2.0))
    assert torch.equal(merged["mask"], base["mask"]) and torch.equal(merged["step"], base["step"])
    with pytest.raises(NeonError, match="θ_s diverged: key 'w'"):
        extrapolate(base, dict(good, w=torch.tensor([0.0, math.nan, 0.0])), 1.0)
    with pytest.raises(NeonError, match="θ_s diverged: key 'w'"):
        extrapolate(base, dict(good, w=torch.tensor([0.0, math.inf, 0.0])), 0.0)  # even where w = 0
    with pytest.raises(NeonError, match="key 'w' is torch.float32 in θ_r but torch.int64 in θ_s"):
        extrapolate(base, dict(good, w=torch.zeros(3, dtype=torch.int64)), 1.0)
    with pytest.raises(NeonError, match="θ_r is broken: key 'mask' holds NaN"):
        extrapolate(dict(base, mask=torch.tensor([math.nan, -math.inf])), good, 1.0)


def _merge_cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        neon_merge(list(argv))
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_neon_merge_refuses_nan_and_dtype_kind_changes(tmp_path: Path, capsys):
    base = {"a": torch.ones(4), "b": torch.ones(2)}
    save_file(base, tmp_path / "r.safetensors")
    for name, aux in (("nan", {"a": torch.tensor([0.0, math.nan, 0.0, 0.0]), "b": torch.ones(2)}),
                      ("int", {"a": torch.zeros(4), "b": torch.ones(2, dtype=torch.int64)})):
        save_file(aux, tmp_path / f"{name}.safetensors")
        code, err = _merge_cli(capsys, str(tmp_path / "r.safetensors"), str(tmp_path / f"{name}.safetensors"),
                               "--w", "1.0", "-o", str(tmp_path / "out.safetensors"))
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("neon-merge: error: ")
        assert ("θ_s diverged: key 'a'" if name == "nan" else "key 'b' is torch.float32") in err
        assert not (tmp_path / "out.safetensors").exists()  # nothing half-written


def test_neon_merge_refuses_to_overwrite_an_input_and_honours_the_umask(tmp_path: Path, capsys):
    base, aux = {"a": torch.ones(4)}, {"a": torch.zeros(4)}
    save_file(base, tmp_path / "r.safetensors")
    save_file(aux, tmp_path / "s.safetensors")
    os.chmod(tmp_path / "r.safetensors", 0o644)
    before = (tmp_path / "r.safetensors").read_bytes()
    code, err = _merge_cli(capsys, str(tmp_path / "r.safetensors"), str(tmp_path / "s.safetensors"), "--w", "1",
                           "-o", str(tmp_path / "." / "r.safetensors"))
    assert code == 2 and "is the input" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert (tmp_path / "r.safetensors").read_bytes() == before
    old = os.umask(0o027)
    try:
        merge_files(tmp_path / "r.safetensors", tmp_path / "s.safetensors", 1.0, tmp_path / "m.safetensors")
        neon_merge([str(tmp_path / "r.safetensors"), str(tmp_path / "s.safetensors"), "--w", "1", "-o",
                    str(tmp_path / "r.safetensors"), "--overwrite"])
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "r.safetensors").stat().st_mode & 0o777 == 0o640
    assert torch.equal(load_file(tmp_path / "r.safetensors")["a"], torch.full((4,), 2.0))


def test_blockwise_w_needs_default_and_logs_its_matches(tmp_path: Path, capsys, caplog):
    with pytest.raises(NeonError, match="has no 'default'"):
        run_neon(toy_cfg(tmp_path, "neon.w=null", "neon.w={out: 1.0}"))
    assert cache_kinds(tmp_path) == set()
    save_file({"enc.a": torch.ones(2), "enc.b": torch.ones(2), "dec.c": torch.ones(2)}, tmp_path / "r.safetensors")
    save_file({"enc.a": torch.zeros(2), "enc.b": torch.zeros(2), "dec.c": torch.zeros(2)}, tmp_path / "s.safetensors")
    code, err = _merge_cli(capsys, str(tmp_path / "r.safetensors"), str(tmp_path / "s.safetensors"), "--w",
                           '{"^enc": 1.0}', "-o", str(tmp_path / "o.safetensors"))
    assert code == 2 and "has no 'default'" in err
    with caplog.at_level("INFO", logger="neon"):
        merge_files(tmp_path / "r.safetensors", tmp_path / "s.safetensors", {"^enc": 1.0, "^zzz": 2.0, "default": 0.0},
                    tmp_path / "o.safetensors")
    text = caplog.text
    assert "'^enc' (w = 1) decides 2 tensors" in text and "'default' (w = 0) decides 1 tensor" in text
    assert "pattern '^zzz' (w = 2) matches no tensor" in text


def test_neon_merge_prints_its_pattern_counts_and_leaves_the_callers_logging_alone(tmp_path: Path, capsys):
    save_file({"enc.a": torch.ones(2), "dec.c": torch.ones(2)}, tmp_path / "r.safetensors")
    save_file({"enc.a": torch.zeros(2), "dec.c": torch.zeros(2)}, tmp_path / "s.safetensors")
    root, neon_logger = logging.getLogger(), logging.getLogger("neon")
    before = (list(root.handlers), root.level, list(neon_logger.handlers), neon_logger.level)
    neon_merge([str(tmp_path / "r.safetensors"), str(tmp_path / "s.safetensors"), "--w", '{"^enc": 1, "default": 0}',
                "-o", str(tmp_path / "o.safetensors")])
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "o.safetensors")  # stdout: the output path alone
    assert "neon-merge: block-wise w: '^enc' (w = 1) decides 1 tensor" in err
    # a handler left on a stream the caller closes would fail every later log line (and lower the logger's level)
    assert (list(root.handlers), root.level, list(neon_logger.handlers), neon_logger.level) == before


# ---------------------------------------------------------------- counts, sizes, unreadable files


@pytest.mark.parametrize("override,expect", [
    ("neon.batch_size=0", "neon.batch_size must be a positive integer, got 0"),
    ("metrics.block_size=0", "metrics.block_size must be a positive integer"),
    ("neon.synthetic.shard_size=300", "must be a multiple of neon.synthetic.block_size"),
])
def test_counts_and_sizes_are_checked_before_any_work(tmp_path: Path, override: str, expect: str):
    with pytest.raises(NeonError, match=expect):
        run_neon(toy_cfg(tmp_path, override))
    assert cache_kinds(tmp_path) == set()


def test_too_few_samples_for_the_metric_is_an_error_unless_allowed(tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["metrics.num_samples=1", f"paths.cache_dir={tmp_path / 'cache'}",
                                           f"paths.output_dir={tmp_path / 'run'}", "logger=none"])
    with pytest.raises(NeonError, match=r"metrics.num_samples = 1 is below the 64 feature dimensions.*allow_small"):
        run_neon(cfg)  # the digits default: refused before θ_r is pretrained
    assert cache_kinds(tmp_path) == set()


def test_unreadable_checkpoints_are_named_in_one_line(tmp_path: Path):
    class Payload:
        def __reduce__(self):
            return (print, ("a pickle payload ran",))

    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("these are not weights\n")
    torch.save({"w": Payload()}, tmp_path / "payload.pt")
    expect = {"empty.pt": "is empty (0 bytes)", "text.pt": "is not a checkpoint file",
              "payload.pt": "holds Python objects besides tensors"}
    for name, message in expect.items():
        for read in (load_state_dict, lambda p: merge_files(p, p, 1.0, tmp_path / "o.safetensors")):
            with pytest.raises(NeonError) as info:
                read(tmp_path / name)
            text = str(info.value)
            assert message in text and name in text and "\n" not in text and "weights_only" not in text


# ---------------------------------------------------------------- results


def test_results_are_strict_json_with_non_finite_numbers_flagged(tmp_path: Path):
    summary = {"fid_base": 1.5, "w_curve": [{"w": "0", "fid": 1.5}, {"w": "8", "fid": math.inf}], "gain": math.nan}
    write_json(tmp_path / "s.json", summary)

    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    strict = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    assert strict["w_curve"][1]["fid"] is None and strict["gain"] is None
    assert strict["non_finite"] == {"w_curve.1.fid": "inf", "gain": "nan"}
    back = read_json(tmp_path / "s.json")
    assert back["w_curve"][1]["fid"] == math.inf and math.isnan(back["gain"]) and "non_finite" not in back


# ---------------------------------------------------------------- kill -9 during pretraining


PRETRAIN = ["task=pretrain", "experiment=toy2d", "model.pretrain.steps=400", "resume_every_steps=25",
            "data.n_train=1000", "data.batch_size=256", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.mark.slow
def test_pretraining_killed_resumes_bit_identically(tmp_path: Path):
    # the pipeline's pretraining writes into the cache's KEY.partial folder; task=pretrain into its run
    # folder: the same function, so a kill -9 of the pretrain task exercises the same resume path
    run_dir = tmp_path / "killed"
    kwargs = cli_command(PRETRAIN, tmp_path, "killed")
    proc = subprocess.Popen(kwargs["args"], cwd=kwargs["cwd"], env=kwargs["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / RESUME).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / RESUME).is_file() and not (run_dir / THETA_R).exists(), "not killed mid-training"
    step = torch.load(run_dir / RESUME, weights_only=True)["global_step"]
    assert 0 < step < 400
    resumed = run_cli(PRETRAIN, tmp_path, "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run_dir / RESUME).exists()  # done: only θ_r stays
    # the uninterrupted run, in-process
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*PRETRAIN[1:], f"paths.cache_dir={tmp_path / 'cache'}",
                                           f"paths.output_dir={tmp_path / 'whole'}"])
    pretrain_into(Run.from_config(cfg), tmp_path / "whole")
    a, b = load_file(run_dir / THETA_R), load_file(tmp_path / "whole" / THETA_R)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- help


@pytest.mark.slow
def test_help_lists_the_tasks_and_the_readme(tmp_path: Path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for task in ("neon", "pretrain", "synthesize", "finetune", "merge", "evaluate", "reference", "sample", "export",
                 "search", "diagnose", "report"):
        assert f"\n  {task} " in out, task
    assert "neon.w=" in out and "metrics.allow_small" in out and "README.md" in out
    assert len(out.splitlines()) < 60  # a page, not Hydra's generic one

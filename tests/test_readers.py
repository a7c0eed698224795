"""The one weights reader (`neon.weights.readers`) behind model.checkpoint, neon-merge and task=merge: every release
format reads, and two released files merge directly."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from neon.core.errors import NeonError
from neon.core.io import torch_mmap_able
from neon.merging.extrapolate import extrapolate
from neon.merging.merge_command import main as neon_merge
from neon.weights.persistence import read_snapshot
from neon.weights.readers import format_of, open_weights, read_weights
from tests.edm_snapshot import write_snapshot


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.weight": torch.randn(4, 3, generator=g), "blocks.0.bias": torch.randn(4, generator=g),
            "head.weight": torch.randn(2, 4, generator=g), "mask": torch.tensor([0.0, -torch.inf]),
            "steps": torch.arange(3)}


def _merged(argv: list[str], capsys) -> tuple[int, str]:
    try:
        neon_merge(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code)
    return code, capsys.readouterr().err


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_edm_snapshot_pickles_merge_directly(tmp_path: Path, capsys):
    write_snapshot(tmp_path / "base.pkl", seed=0)
    write_snapshot(tmp_path / "aux.pkl", seed=1)
    code, err = _merged([str(tmp_path / "base.pkl"), str(tmp_path / "aux.pkl"), "--w", "0.5", "-o",
                         str(tmp_path / "neon.safetensors")], capsys)
    assert code == 0, err
    want = extrapolate(read_snapshot(tmp_path / "base.pkl").state_dict, read_snapshot(tmp_path / "aux.pkl").state_dict,
                       0.5)
    _same(dict(load_file(tmp_path / "neon.safetensors")), want)
    assert not list(tmp_path.glob(".neon-spill-*"))  # the spilled copies are gone


def test_xar_training_checkpoint_merges_with_the_flat_release(tmp_path: Path, capsys):
    base, raw, ema = _state(0), _state(1), _state(2)
    torch.save(base, tmp_path / "xAR-B.pth")
    torch.save({"model": raw, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 3,
                "args": argparse.Namespace(lr=1e-6, model="xar_base")}, tmp_path / "checkpoint-last.pth")
    for weights, aux in (("ema", ema), ("model", raw)):
        out = tmp_path / f"neon_{weights}.safetensors"
        code, err = _merged([str(tmp_path / "xAR-B.pth"), str(tmp_path / "checkpoint-last.pth"), "--w", "1",
                             "--weights", weights, "-o", str(out)], capsys)
        assert code == 0, err
        _same(dict(load_file(out)), extrapolate(base, aux, 1.0))


def test_authors_fine_tune_layout_reads_its_ema(tmp_path: Path, capsys):
    base, ema = _state(0), _state(3)
    torch.save({"model_ema": ema, "epoch": 1}, tmp_path / "checkpoint-checkpoint-30000.pth")
    _same(read_weights(tmp_path / "checkpoint-checkpoint-30000.pth"), ema)
    with pytest.raises(NeonError, match="has no 'model' entry.*model.weights=ema"):
        read_weights(tmp_path / "checkpoint-checkpoint-30000.pth", weights="model")
    save_file(base, tmp_path / "base.safetensors")
    code, err = _merged([str(tmp_path / "base.safetensors"), str(tmp_path / "checkpoint-checkpoint-30000.pth"),
                         "--w", "0.25", "-o", str(tmp_path / "o.safetensors")], capsys)
    assert code == 0, err
    _same(dict(load_file(tmp_path / "o.safetensors")), extrapolate(base, ema, 0.25))


def _write_shards(state: dict[str, torch.Tensor], folder: Path) -> Path:
    folder.mkdir()
    keys = list(state)
    halves = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, folder / name)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}))
    return index


def test_sharded_safetensors_read_and_stream(tmp_path: Path, capsys):
    base, aux = _state(0), _state(4)
    index = _write_shards(base, tmp_path / "base")
    save_file(aux, tmp_path / "aux.safetensors")
    assert format_of(index) == format_of(tmp_path / "base") == "sharded"
    got = read_weights(index)
    assert set(got) == set(base) and all(torch.equal(got[k], base[k]) for k in base)
    with open_weights(index) as lazy:
        assert lazy.meta("head.weight") == (torch.float32, (2, 4))
    code, err = _merged([str(tmp_path / "base"), str(tmp_path / "aux.safetensors"), "--w", "2", "-o",
                         str(tmp_path / "o.safetensors")], capsys)
    assert code == 0, err
    merged, want = dict(load_file(tmp_path / "o.safetensors")), extrapolate(base, aux, 2.0)
    assert set(merged) == set(want) and all(torch.equal(merged[k], want[k]) for k in want)
    (tmp_path / "base" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(NeonError, match="shard of checkpoint .*model-00002-of-00002.safetensors' does not exist"):
        read_weights(index)


def test_lightning_checkpoint_gives_its_ema_network(tmp_path: Path):
    net, ema = _state(0), _state(5)
    torch.save({"pytorch-lightning_version": "2.4", "epoch": 0,
                "state_dict": {**{f"net.{k}": v for k, v in net.items()}, **{f"ema.{k}": v for k, v in ema.items()}}},
               tmp_path / "last.ckpt")
    _same(read_weights(tmp_path / "last.ckpt"), ema)
    _same(read_weights(tmp_path / "last.ckpt", weights="model"), net)


def test_safetensors_are_read_as_safetensors_whatever_the_suffix(tmp_path: Path):
    save_file(_state(0), tmp_path / "weights.pth")
    assert format_of(tmp_path / "weights.pth") == "safetensors"
    _same(read_weights(tmp_path / "weights.pth"), dict(load_file(tmp_path / "weights.pth")))


def test_no_message_suggests_lifting_the_weights_only_check(tmp_path: Path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("a pickle payload ran",))

    torch.save({"model_ema": _state(0), "hook": Payload()}, tmp_path / "payload.pth")
    save_file(_state(0), tmp_path / "base.safetensors")
    code, err = _merged([str(tmp_path / "base.safetensors"), str(tmp_path / "payload.pth"), "--w", "1", "-o",
                         str(tmp_path / "o.safetensors")], capsys)
    assert code == 2 and "holds Python objects besides tensors (print)" in err
    assert "weights_only" not in err and "a pickle payload ran" not in err and err.count("\n") == 1
    write_snapshot(tmp_path / "evil.pkl", extra_globals=True)
    with pytest.raises(NeonError) as info:
        read_weights(tmp_path / "evil.pkl")
    assert "builtins.print" in str(info.value) and "weights_only" not in str(info.value)


def test_task_merge_reads_snapshot_pickles(tmp_path: Path):
    from hydra import compose, initialize_config_dir

    from neon.launch.cli import CONF_DIR
    from neon.tasks.merge import run_merge

    write_snapshot(tmp_path / "base.pkl", seed=0)
    write_snapshot(tmp_path / "aux.pkl", seed=1)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            "task=merge", f"task.base={tmp_path / 'base.pkl'}", f"task.aux={tmp_path / 'aux.pkl'}", "neon.w=[0.5]",
            f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])
    summary = run_merge(cfg)
    (path,) = summary["theta_neon"].values()
    want = extrapolate(read_snapshot(tmp_path / "base.pkl").state_dict, read_snapshot(tmp_path / "aux.pkl").state_dict,
                       0.5)
    _same(dict(load_file(path)), want)


def _repack_deflated(src: Path, dst: Path) -> Path:
    # what some tools do to a torch checkpoint: the same zip entries, DEFLATE-compressed
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    return dst


def _torch_files(tmp_path: Path, name: str, state: dict[str, torch.Tensor]) -> dict[str, Path]:
    """The same state dict as a plain torch zip, a DEFLATE-repacked zip and a legacy non-zip file."""
    plain = tmp_path / f"{name}.pt"
    torch.save(state, plain)
    legacy = tmp_path / f"{name}_legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    return {"zip": plain, "deflated": _repack_deflated(plain, tmp_path / f"{name}_deflated.pt"), "legacy": legacy}


@pytest.mark.parametrize("kind", ["deflated", "legacy"])
def test_every_file_torch_reads_weights_only_is_read(tmp_path: Path, kind: str):
    # bigger tensors than _state's so that mapping a compressed entry would not pass by luck
    state = {**_state(0), "big": torch.randn(64, 64, generator=torch.Generator().manual_seed(9))}
    path = _torch_files(tmp_path, "w", state)[kind]
    if kind == "deflated":
        with zipfile.ZipFile(path) as archive:
            assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    else:
        assert not zipfile.is_zipfile(path)
    want = torch.load(path, map_location="cpu", weights_only=True)  # torch itself reads it
    _same(want, state)
    assert torch_mmap_able(path) is False and torch_mmap_able(tmp_path / "w.pt") is True
    _same(read_weights(path), want)
    with open_weights(path) as lazy:
        assert lazy.meta("big") == (torch.float32, (64, 64))
        _same({k: lazy[k] for k in lazy.keys()}, want)


@pytest.mark.parametrize("kind", ["deflated", "legacy"])
@pytest.mark.parametrize("side", ["base", "aux"])
def test_neon_merge_reads_deflated_and_legacy_torch_files(tmp_path: Path, capsys, kind: str, side: str):
    base, aux = _state(0), _state(6)
    files = {"base": _torch_files(tmp_path, "base", base), "aux": _torch_files(tmp_path, "aux", aux)}
    other = "aux" if side == "base" else "base"
    paths = {side: files[side][kind], other: files[other]["zip"]}
    out = tmp_path / "neon.safetensors"
    code, err = _merged([str(paths["base"]), str(paths["aux"]), "--w", "0.75", "-o", str(out)], capsys)
    assert code == 0, err
    merged = dict(load_file(out))
    _same(merged, extrapolate(base, aux, 0.75))
    # (1 + w)·a − w·b, written out for one float tensor; the integer buffer and the −inf mask are base's
    assert torch.allclose(merged["head.weight"], 1.75 * base["head.weight"] - 0.75 * aux["head.weight"])
    assert torch.equal(merged["steps"], base["steps"]) and torch.equal(merged["mask"], base["mask"])


def test_task_merge_reads_a_deflated_checkpoint(tmp_path: Path):
    from hydra import compose, initialize_config_dir

    from neon.launch.cli import CONF_DIR
    from neon.tasks.merge import run_merge

    base, aux = _state(0), _state(7)
    torch.save(base, tmp_path / "base.pt")
    torch.save(aux, tmp_path / "aux_plain.pt")
    _repack_deflated(tmp_path / "aux_plain.pt", tmp_path / "aux.pt")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            "task=merge", f"task.base={tmp_path / 'base.pt'}", f"task.aux={tmp_path / 'aux.pt'}", "neon.w=[2.0]",
            f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"])
    (path,) = run_merge(cfg)["theta_neon"].values()
    _same(dict(load_file(path)), extrapolate(base, aux, 2.0))

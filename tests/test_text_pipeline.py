"""Neon on text end to end at a tiny size: the held-out NLL beside the sample metrics, picks on one half of the
held-out text and figures on the other, text previews; and the text settings refused before any work."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from neon.stages.run import model_spec
from tests.helpers import cli_error, run_cli, run_task, summary_of, task_config

WORDS = "the a model samples its own text and learns from it again while a reader checks each line".split()


def tiny_corpus(folder: Path) -> Path:
    """Twelve documents of seeded word salad (a few KB): enough windows for both held-out halves."""
    rng = random.Random(0)
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)) + ".\n")
    return folder


def tiny_text(corpus: Path) -> list[str]:
    return ["experiment=text", f"data.path={corpus}", "data.context=16", "data.heldout_fraction=0.25",
            "data.batch_size=16", "model.network.context=16", "model.network.width=32", "model.network.depth=1",
            "model.network.heads=2", "model.pretrain.steps=40", "neon.n_synthetic=64", "neon.budget_steps=4",
            "neon.batch_size=16", "neon.w=[0.0,0.5]", "neon.control=false", "metrics.num_samples=80",
            "metrics.block_size=40", "metrics.extractor.steps=20", "metrics.extractor.dim=16",
            "metrics.compute=[fid,nll,distinct]", "metrics.noise_seed_offset=null", "preview_samples=3",
            "trainer.enable_progress_bar=false"]


def test_text_run_reports_heldout_nll_from_the_report_half(tmp_path: Path):
    args = tiny_text(tiny_corpus(tmp_path / "corpus"))
    summary = run_task(args, tmp_path)
    for key in ("nll_base", "nll_neon", "nll_base_heldout", "nll_neon_heldout", "bpb_base_heldout"):
        assert summary[key] > 0, key
    assert [p["w"] for p in summary["w_curve"]] == ["0", "0.5"] and all("nll" in p for p in summary["w_curve"])
    assert summary["scores_neon"]["nll_part"] == "selection" and "distinct_2" in summary["scores_neon"]
    # metrics=text picks w on the selection half's NLL, not on the sample metric
    assert summary["select"] == "nll"
    assert summary["nll_neon"] == min(p["nll"] for p in summary["w_curve"])

    # θ_r's NLL, computed here from its file on each half of the held-out text: the pick's half, the report's half
    cfg, _ = task_config(args, tmp_path)
    module = instantiate(model_spec(cfg))
    module.load_neon_weights(load_file(summary["artifacts"]["theta_r"]))
    data = instantiate(cfg.data)
    for part, key in (("selection", "nll_base"), ("report", "nll_base_heldout")):
        total, count = module.token_nll(data.heldout_windows(part))
        assert summary[key] == pytest.approx(float(total) / count, rel=1e-9), part
    assert summary["nll_base"] != summary["nll_base_heldout"]  # two halves, two figures
    # bits per byte: the same likelihood per byte of text, in bits
    total, count = module.token_nll(data.heldout_windows("report"))
    assert summary["bpb_base_heldout"] == pytest.approx(float(total) / (data.byte_count("report") * torch.log(
        torch.tensor(2.0, dtype=torch.float64)).item()))

    preview = (tmp_path / "run" / "samples_theta_neon.txt").read_text()
    assert preview.count("--- seed ") == 3 and not (tmp_path / "run" / "samples_theta_neon.png").exists()


@pytest.mark.parametrize("override, message", [
    ("data.path=/no/such/corpus", "data.path '/no/such/corpus' does not exist"),
    ("sampler.top_p=1.5", "sampler.top_p=1.5 is not a top-p"),
    ("sampler.temperature=-1", "sampler.temperature=-1 is not a temperature"),
    ("metrics.sampler.top_k=-2", "metrics.sampler.top_k=-2 is not a top-k"),
    ("data.context=100000", "data.context=100000 is too long for corpus"),
    ("metrics.compute=[fid]", "metrics.select=nll is not among metrics.compute ['fid']"),
])
def test_bad_text_settings_are_one_line_before_any_work(override: str, message: str):
    assert message in cli_error(["experiment=text", override])


def test_nll_without_a_likelihood_or_heldout_text_is_one_line_before_any_work():
    assert "EDMModule (EDM) has no likelihood" in cli_error(["metrics=text"])
    assert "holds no held-out text: use data=text" in cli_error(["model=lm_tiny", "metrics=text", "data=digits"])


def test_binary_and_empty_corpora_are_named_before_any_work(tmp_path: Path):
    (tmp_path / "bin").write_bytes(b"text\x00more")
    (tmp_path / "empty.txt").write_text("")
    assert f"data.path file '{tmp_path / 'bin'}' is binary" in cli_error(["experiment=text", f"data.path={tmp_path / 'bin'}"])
    assert "is empty" in cli_error(["experiment=text", f"data.path={tmp_path / 'empty.txt'}"])


@pytest.mark.slow
def test_two_processes_give_the_one_process_text_run(tmp_path: Path):
    corpus = tiny_corpus(tmp_path / "corpus")
    args = [*tiny_text(corpus), "neon.synthetic.block_size=16", "neon.synthetic.shard_size=32", "preview_samples=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run_task(args, one)
    theta_r = next((one / "cache" / "pretrain").glob("*/theta_r.safetensors"))
    proc = run_cli([*args, "trainer=ddp", "trainer.devices=2", f"model.checkpoint={theta_r}"], two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = summary_of(one), summary_of(two)
    # one generator per sequence: the ranks' shares of S are the one-process S, token for token
    shards = [sorted((d / "cache" / "synthetic").glob("*/shard_*.pt")) for d in (one, two)]
    assert len(shards[0]) == len(shards[1]) == 2
    for x, y in zip(*shards, strict=True):
        assert torch.equal(torch.load(x, weights_only=True)["x"], torch.load(y, weights_only=True)["x"])
    assert b["nll_base"] == pytest.approx(a["nll_base"], rel=1e-9)  # θ_r itself: the same weights, scored once
    for pa, pb in zip(a["w_curve"], b["w_curve"], strict=True):
        assert pb["nll"] == pytest.approx(pa["nll"], rel=1e-5) and pb["fid"] == pytest.approx(pa["fid"], rel=1e-3)

"""Prompted sampling (sampler=lm_prompted): each sequence continues the start of a real held-out window chosen by
its seed; the prompt is read in one cached call and the continuation is what token-by-token decoding gives."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from neon.core.errors import NeonError
from neon.core.seeding import PerSampleRNG
from neon.data.text import PromptBank, TextDataModule
from neon.families.lm import next_tokens, sample_tokens
from tests.helpers import cli_error, task_config
from tests.test_lm import small_module


def corpus(folder: Path) -> Path:
    folder.mkdir()
    for i in range(8):
        (folder / f"d{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog " * 4)
    return folder


def test_prompts_are_the_starts_of_heldout_windows_by_seed(tmp_path: Path):
    path = corpus(tmp_path / "c")
    bank = PromptBank(5, str(path), context=16, heldout_fraction=0.25)
    windows = TextDataModule(str(path), 16, 0.25).heldout_windows("selection")
    got = bank.prefixes([0, 1, len(windows) + 1])
    assert torch.equal(got[0], windows[0, :5]) and torch.equal(got[1], windows[1, :5])
    assert torch.equal(got[2], got[1])  # seed mod N: every seed has a prompt
    report = PromptBank(5, str(path), context=16, heldout_fraction=0.25, part="report").prefixes([0])
    assert torch.equal(report[0], TextDataModule(str(path), 16, 0.25).heldout_windows("report")[0, :5])


def test_a_prompted_sequence_continues_its_prompt_as_step_by_step_decoding_does(tmp_path: Path):
    module = small_module()
    bank = PromptBank(4, str(corpus(tmp_path / "c")), context=16, heldout_fraction=0.25)
    sampler = functools.partial(sample_tokens, temperature=0.9, top_k=0, top_p=0.95, prompts=bank)
    seeds = [3, 8, 11]
    x, _ = module.generate(seeds, sampler)
    prompts = bank.prefixes(seeds)
    assert torch.equal(x[:, :4], prompts)
    # the same continuation from the full forward pass, one token at a time, at each seed's own uniforms
    uniforms = PerSampleRNG(seeds).rand(16)
    expected = prompts.clone()
    with torch.no_grad():
        for i in range(4, 16):
            inputs = torch.cat([torch.full((3, 1), 256), expected], dim=1)
            logits = module.net(inputs)[:, -1, :256]
            expected = torch.cat([expected, next_tokens(logits, uniforms[:, i], 0.9, 0, 0.95)[:, None]], dim=1)
    assert torch.equal(x, expected)
    # a sequence depends on its seed only: alone, it is the same
    assert torch.equal(module.generate([8], sampler)[0][0], x[1])


def test_the_prompted_sampler_config_composes_and_its_bad_length_is_one_line(tmp_path: Path):
    path = corpus(tmp_path / "c")
    cfg, _ = task_config(["experiment=text", "sampler=lm_prompted", f"data.path={path}", "data.context=16",
                          "data.heldout_fraction=0.25", "sampler.prompts.length=4"], tmp_path)
    sampler = instantiate(cfg.sampler)
    assert sampler.keywords["prompts"].prefixes([0]).shape == (1, cfg.sampler.prompts.length)
    message = cli_error(["experiment=text", "sampler=lm_prompted", "sampler.prompts.length=64"])
    assert "sampler.prompts.length=64 is not a prompt length" in message


@pytest.mark.parametrize("length", [0, 16])
def test_prompt_lengths_outside_the_window_are_refused(tmp_path: Path, length: int):
    with pytest.raises(NeonError, match="sampler.prompts.length"):
        PromptBank(length, str(corpus(tmp_path / "c")), context=16, heldout_fraction=0.25)

"""model=hf_causal_lm: tiny random GPT-2 and Llama folders built here (tests/hf_models.py, no download) load as θ_r;
the loss is the model's own, sampling is per seed through the model's KV cache, release mode is `generate` token for
token, θ goes back out as a folder transformers loads, neon-merge merges two such folders (sharded too), data=text
tokenises with the model's tokenizer, and bad folders are one line before any work."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from neon.core.errors import NeonError
from neon.core.seeding import StepNoise
from neon.families.hf_lm import HFCausalLM
from neon.families.lm import sample_tokens
from neon.merging.extrapolate import extrapolate
from tests.hf_models import save_causal_lm


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A GPT-2 folder (tied embeddings), the same model sharded, and a Llama folder (untied)."""
    root = tmp_path_factory.mktemp("hf")
    return {"gpt2": save_causal_lm(root / "gpt2"), "sharded": save_causal_lm(root / "sharded", shard="50KB"),
            "llama": save_causal_lm(root / "llama", kind="llama")}


def tiny_run(folder: Path, corpus: Path) -> list[str]:
    """`neon experiment=text model=hf_causal_lm` at a tiny size (seconds on a CPU)."""
    return ["experiment=text", "model=hf_causal_lm", f"model.pretrained={folder}", f"data.path={corpus}",
            "data.context=16", "data.heldout_fraction=0.25", "data.batch_size=16", "neon.n_synthetic=32",
            "neon.budget_steps=3", "neon.batch_size=16", "neon.w=[0.5]", "neon.control=false",
            "neon.optimizer.lr=1e-3", "metrics.num_samples=40", "metrics.block_size=40", "metrics.extractor.steps=5",
            "metrics.extractor.dim=8", "metrics.compute=[fid,nll,distinct]", "metrics.noise_seed_offset=null",
            "preview_samples=2", "trainer.enable_progress_bar=false"]


def module_of(folder: Path, **kwargs) -> HFCausalLM:
    return HFCausalLM(str(folder), max_new_tokens=kwargs.pop("max_new_tokens", 12), **kwargs)


def sampler(**settings):
    return partial(sample_tokens, **{"temperature": 0.8, "top_k": 0, "top_p": 1.0, **settings})


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_loss_is_the_models_own_and_padding_is_masked(folders, kind: str):
    module = module_of(folders[kind])
    assert module.training and not module.net.training  # no dropout masks: the network stays in eval mode
    x = torch.randint(0, 300, (3, 10), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.full((3, 1), module.bos), x], dim=1)
    loss = module.loss({"x": x}, StepNoise.single(3))
    assert torch.equal(loss, module.net(input_ids=ids, labels=ids).loss)
    loss.backward()
    assert module.net.get_input_embeddings().weight.grad.abs().sum() > 0

    mask = torch.ones_like(x)
    mask[0, 6:] = 0  # row 0 ends with 4 padding tokens
    padded = {"x": x, "attention_mask": mask}
    changed = x.clone()
    changed[0, 6:] = 7  # other tokens under the padding
    with torch.no_grad():
        masked = module.loss(padded, StepNoise.single(3))
        logits = module.net(input_ids=ids[:, :-1], attention_mask=torch.cat([torch.ones(3, 1), mask[:, :-1]], 1)).logits
        nll = F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="none")
        assert torch.allclose(masked, nll[mask.flatten() == 1].mean(), atol=1e-6)
        assert not torch.allclose(masked, nll.mean())
        # what sits under the padding changes nothing
        assert torch.allclose(module.loss({"x": changed, "attention_mask": mask}, StepNoise.single(3)), masked,
                              atol=1e-6)


def test_token_nll_sums_the_next_token_cross_entropy(folders):
    module = module_of(folders["gpt2"])
    x = torch.randint(0, 300, (5, 9), generator=torch.Generator().manual_seed(1))
    total, count = module.token_nll(x)
    with torch.no_grad():
        logp = module.net(input_ids=torch.cat([torch.full((5, 1), module.bos), x], 1)).logits[:, :-1].log_softmax(-1)
    assert count == 45 and total.dtype == torch.float64
    assert float(total) == pytest.approx(-float(logp.gather(-1, x[..., None]).sum()), rel=1e-6)
    with torch.no_grad():
        assert float(total) / count == pytest.approx(float(module.loss({"x": x}, StepNoise.single(5))), rel=1e-5)
    with pytest.raises(NeonError, match=r"token ids must lie in \[0, 300\)"):
        module.token_nll(torch.tensor([[1, 300]]))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_kv_cached_steps_give_the_full_forwards_logits(folders, kind: str):
    module = module_of(folders[kind]).eval()
    steps = module.steps(module.net)
    seq = torch.cat([torch.full((2, 1), module.bos), torch.randint(0, 300, (2, 7))], dim=1)
    with torch.no_grad():
        full = module.net(input_ids=seq).logits
        cache, cached = None, []
        for t in range(seq.shape[1]):
            logits, cache = steps.forward_step(seq[:, t:t + 1], cache)
            cached.append(logits)
    assert cache.get_seq_length() == 8 and steps.drawable == 300
    assert torch.allclose(torch.cat(cached, dim=1), full, atol=1e-5)


def test_per_seed_samples_do_not_depend_on_the_batch(folders):
    module = module_of(folders["llama"]).eval()
    with torch.no_grad():
        batch, labels = module.generate([3, 7, 11], sampler())
        alone, _ = module.generate([7], sampler())
        again, _ = module.generate([3, 7, 11], sampler())
    assert labels is None and batch.shape == (3, 12) and batch.dtype == torch.long
    assert torch.equal(alone[0], batch[1]) and torch.equal(again, batch)
    assert not torch.equal(batch[0], batch[2])  # the seeds do matter
    assert int(batch.max()) < 300 and module.decode_samples(batch)[1] == module.tokenizer.decode(batch[1].tolist())
    with pytest.raises(NeonError, match="is unconditional"):
        module.generate([0], sampler(), labels=torch.tensor([1]))


@pytest.mark.parametrize("settings", [{"temperature": 0.8, "top_k": 0, "top_p": 1.0},
                                      {"temperature": 1.3, "top_k": 20, "top_p": 0.9},
                                      {"temperature": 0.0, "top_k": 0, "top_p": 1.0}])
def test_release_sampling_is_generate_token_for_token(folders, settings: dict):
    module = module_of(folders["gpt2"], max_new_tokens=16).eval()
    draws = list(module.generate_release(5, list(range(7)), 3, sampler(**settings), "random"))
    ours = torch.cat([d.samples for d in draws])
    assert [len(d.samples) for d in draws] == [3, 3, 1] and ours.shape == (7, 16)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folders["gpt2"], local_files_only=True)
    drawing = ({"do_sample": True, "temperature": settings["temperature"], "top_k": settings["top_k"],
                "top_p": settings["top_p"]} if settings["temperature"] else {"do_sample": False})
    torch.manual_seed(5)
    theirs = []
    for size in (3, 3, 1):
        prompt = torch.full((size, 1), module.bos)
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                             pad_token_id=module.bos, **drawing)[:, 1:]
        theirs.append(F.pad(out, (0, 16 - out.shape[1]), value=module.bos))
    assert torch.equal(ours, torch.cat(theirs))
    if settings["temperature"]:  # the release seed matters
        other = torch.cat([d.samples for d in module.generate_release(6, list(range(7)), 3, sampler(**settings),
                                                                      "random")])
        assert not torch.equal(other, ours)


@pytest.mark.parametrize("kind", ["sharded", "llama"])
def test_theta_goes_back_as_a_folder_transformers_loads(folders, tmp_path: Path, kind: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module = module_of(folders[kind])
    theta = {k: v + 0.01 * torch.randn_like(v) for k, v in module.neon_weights().items()}
    assert "lm_head.weight" not in theta or kind == "llama"  # GPT-2's tied head is θ once, as in the folder
    out = module.write_native(theta, tmp_path / "theta_neon_model")
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in theta.items())
    if kind == "sharded":  # sharded as the base, with its tied head
        assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert len(AutoTokenizer.from_pretrained(out, local_files_only=True)) == len(module.tokenizer)
    assert json.loads((out / "config.json").read_text())["model_type"] == ("gpt2" if kind == "sharded" else "llama")
    assert (out / "generation_config.json").is_file()
    assert "library_name: transformers" in (out / "README.md").read_text()
    module.load_neon_weights(theta)
    assert torch.equal(module.neon_weights()[next(iter(theta))], next(iter(theta.values())))


@pytest.mark.parametrize("shard", [None, "50KB"])
def test_neon_merge_merges_two_model_folders(tmp_path: Path, shard, capsys):
    from transformers import AutoModelForCausalLM

    from neon.merging.merge_command import main

    base = save_causal_lm(tmp_path / "base", shard=shard, seed=0)
    aux = save_causal_lm(tmp_path / "aux", shard=shard, seed=1)
    main([str(base), str(aux), "--w", "0.8", "-o", str(tmp_path / "out")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True).state_dict()
    models = [AutoModelForCausalLM.from_pretrained(p, local_files_only=True).state_dict() for p in (base, aux)]
    expected = extrapolate(*models, 0.8)
    assert set(merged) == set(expected) and all(torch.equal(merged[k], v) for k, v in expected.items())
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    weights = [n for n in files if n.endswith(".safetensors")]
    assert len(weights) == (1 if shard is None else len(list(base.glob("model-*.safetensors")))) and len(weights) >= 1
    assert ("model.safetensors.index.json" in files) == (shard is not None)
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md"} <= set(files)
    assert "w = 0.8" in (tmp_path / "out" / "README.md").read_text()


def test_neon_merge_refuses_folders_of_two_architectures(tmp_path: Path, capsys):
    from neon.merging.merge_command import main

    gpt2, llama = save_causal_lm(tmp_path / "gpt2"), save_causal_lm(tmp_path / "llama", kind="llama")
    capsys.readouterr()  # what building the folders printed (transformers' progress bars)
    for args, message in (([gpt2, llama, "-o", tmp_path / "out"], "the folders hold different architectures: "
                           "model_type 'gpt2'"),
                          ([gpt2, gpt2 / "model.safetensors", "-o", tmp_path / "out"], "is a model folder but"),
                          ([gpt2, gpt2, "-o", gpt2], "is the input")):
        with pytest.raises(SystemExit):
            main([str(a) for a in args] + ["--w", "1"])
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_bad_folders_are_one_line_before_any_work(tmp_path: Path):
    from transformers import BertConfig, BertForMaskedLM

    from tests.helpers import cli_error

    def refused(path, match: str, **settings) -> None:
        with pytest.raises(NeonError, match=match) as err:
            HFCausalLM.check_model_settings({"pretrained": str(path), "max_new_tokens": 12, **settings})
        assert "\n" not in str(err.value)

    refused(tmp_path / "nope", r"model.pretrained '.*nope' does not exist: give the local folder")
    refused("openai-community/gpt2", r"looks like a Hugging Face Hub id, and neon never downloads: give a local")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", r"holds no config.json: it is not a Hugging Face model folder")
    bert = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(bert)
    refused(bert, r"holds a bert model \(BertForMaskedLM\), an encoder, not a causal language model")
    refused(save_causal_lm(tmp_path / "untokenized", tokenizer=False), r"holds no tokenizer \(none of tokenizer.json")
    refused(save_causal_lm(tmp_path / "small", vocab_size=200), r"has 300 tokens but the model's vocab_size is 200")
    good = save_causal_lm(tmp_path / "good")
    refused(good, r"model.max_new_tokens=64 needs 65 positions \(BOS first\) but the model has 64",
            max_new_tokens=64)
    # the command's pre-flight runs the check: one line, before any work
    assert "does not exist" in cli_error(["experiment=text", "model=hf_causal_lm", f"model.pretrained={tmp_path}/x"])
    assert "must be set on the command line" in cli_error(["experiment=text", "model=hf_causal_lm"])
    assert "an encoder, not a causal" in cli_error(["experiment=text", "model=hf_causal_lm",
                                                    f"model.pretrained={bert}"])


def test_text_data_tokenises_with_the_models_tokenizer(folders, tmp_path: Path):
    from neon.data.text import ByteTokenizer, TextDataModule
    from tests.test_text_pipeline import tiny_corpus

    corpus = tiny_corpus(tmp_path / "corpus")
    (corpus / "doc99.txt").write_text("naïve café — déjà vu ünïcode 日本語 " * 20)  # multi-byte characters too
    data = TextDataModule(path=str(corpus), context=16, heldout_fraction=0.25, tokenizer=str(folders["gpt2"]))
    plain = TextDataModule(path=str(corpus), context=16, heldout_fraction=0.25)
    assert data.vocab_size == 300 and int(data.windows.max()) < 300 and data.windows.shape[1] == 16
    assert data.windows.numel() < plain.windows.numel()  # BPE: fewer tokens than bytes
    # the bytes the windows cover: all the held-out windows are the text up to where the last one ends
    tok = data.tokenizer
    text = tok.decode(data.heldout.flatten())
    assert sum(data.byte_count(p) for p in ("selection", "report")) == len(text.encode("utf-8"))
    assert data.byte_count("report") == int(data.heldout_bytes[1::2].sum()) > 0
    # bytes: one per token, as before
    assert plain.byte_count("report") == plain.heldout_windows("report").numel()
    assert isinstance(plain.tokenizer, ByteTokenizer)


def test_the_text_encoder_reads_token_windows_as_their_text(folders, tmp_path: Path):
    from neon.metrics.text import TextEncoderFeatures
    from tests.test_text_pipeline import tiny_corpus

    corpus = tiny_corpus(tmp_path / "corpus")
    settings = dict(cache_dir=str(tmp_path / "cache"), path=str(corpus), context=16, heldout_fraction=0.25, dim=8,
                    steps=3)
    ours = TextEncoderFeatures(**settings, tokenizer=str(folders["gpt2"]))
    plain = TextEncoderFeatures(**settings)
    module = module_of(folders["gpt2"], max_new_tokens=8)
    ids = module.tokenizer("a model learns", add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([ids, torch.full((1, 1), module.bos)], dim=1)  # a special token: skipped in the text
    text = b"a model learns  "  # 14 bytes, padded with spaces to the encoder's 16
    as_bytes = torch.tensor([list(text)])
    feats = ours.extract(ids)
    assert torch.equal(feats["pool"], plain.extract(as_bytes)["pool"])
    assert torch.equal(feats["tokens"], ids.float())  # distinct-n and self-BLEU count the model's tokens
    long = module.tokenizer("a reader checks each line again", add_special_tokens=False, return_tensors="pt")
    assert torch.equal(ours.encoder_input(long["input_ids"]), torch.tensor([list(b"a reader checks ")]))  # cut


def test_neon_runs_end_to_end_on_a_gpt2_folder(folders, tmp_path: Path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.helpers import run_task, summary_of
    from tests.test_text_pipeline import tiny_corpus

    corpus = tiny_corpus(tmp_path / "corpus")
    folder = shutil.copytree(folders["gpt2"], tmp_path / "gpt2")
    run_task(tiny_run(folder, corpus), tmp_path)
    summary = summary_of(tmp_path)
    assert summary["family"] == "neon.families.hf_lm.HFCausalLM" and summary["artifacts"]["theta_r"] == str(folder)
    assert summary["nll_base_heldout"] > 0 and summary["bpb_base_heldout"] > 0
    out = Path(summary["artifacts"]["theta_neon_model"])
    assert out == tmp_path / "run" / "theta_neon_model"
    theta_neon = load_file(tmp_path / "run" / "theta_neon.safetensors")
    state = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).state_dict()
    assert set(theta_neon) <= set(state) and all(torch.equal(state[k], v) for k, v in theta_neon.items())
    base = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).state_dict()
    assert not all(torch.equal(base[k], v) for k, v in theta_neon.items())  # θ_neon = 1.5·θ_r − 0.5·θ_s ≠ θ_r
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "# θ_neon: Hugging Face causal LM" in card
    assert f"`{folder}`" in card and "| budget | 3 optimizer steps |" in card
    assert "--- seed " in (tmp_path / "run" / "samples_theta_neon.txt").read_text()


@pytest.mark.slow
def test_two_processes_and_a_sweep_run_it_like_every_family(folders, tmp_path: Path):
    from safetensors.torch import load_file

    from tests.helpers import run_cli, run_task
    from tests.test_text_pipeline import tiny_corpus

    corpus = tiny_corpus(tmp_path / "corpus")
    args = tiny_run(folders["gpt2"], corpus)
    run_task(args, tmp_path / "one")
    proc = run_cli(["-m", *args, "trainer=ddp", "trainer.devices=2", "sampler.temperature=0.8,0.9",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "summary.json").is_file())
    assert len(jobs) == 2 and all((job / "theta_neon_model" / "config.json").is_file() for job in jobs)
    # τ = 0.8 in two processes: the one-process θ_neon (S split over the ranks, the same global batches)
    one = load_file(next((tmp_path / "one").rglob("theta_neon.safetensors")))
    two = load_file(jobs[0] / "theta_neon.safetensors")
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6)

"""Hugging Face causal LM speed, as ratios measured within one run (this machine is noisy):

  sampling:  Neon's per-seed sampling (`HFCausalLM.generate`: one generator per sequence, inverse-CDF draws through
             the model's KV cache, `neon.families.lm.sample_tokens`) against `model.generate(do_sample=True, ...)`
             with the same settings (one multinomial per step for the batch), in tokens/s; ratio = ours / generate;
  fine-tune: a Lightning Trainer fitting `LightningNeon(HFCausalLM)` against a bare PyTorch loop over the model's
             own loss (`model(input_ids, labels=...)`), same batch and AdamW, in steps/s (ratio = ours / bare): per
             step (the Trainer's fit of 2n steps less its fit of n, so its set-up cancels) and for a whole fit.

A random GPT-2 of 4 layers, width 256, GPT-2's vocabulary (50257 ids), saved to a temporary folder with a tiny
tokenizer (no download); no EOS, so both sample every token. Interleaved rounds, best of each.
Usage: .venv/bin/python bench/lm_sampling.py [--batch 16] [--tokens 64] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import emit  # noqa: E402  (bench/ holds the scripts' shared helpers)
from timing import Repeat, best_of  # noqa: E402

SETTINGS = {"temperature": 0.8, "top_k": 0, "top_p": 1.0}  # sampler=lm's S settings
FILTERED = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}


def save_model(folder: Path, vocab: int, width: int, depth: int) -> Path:
    """A random GPT-2 without EOS, with a tiny byte-level BPE tokenizer (its <|endoftext|>, id 0, is the BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["a model samples its own text"] * 4, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=256, n_embd=width, n_layer=depth,
                                       n_head=max(1, width // 64), bos_token_id=0, eos_token_id=None))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def sampling(module, batch: int, tokens: int, settings: dict, rounds: int) -> dict:
    """tokens/s of Neon's per-seed sampler and of generate, interleaved, best of `rounds`."""
    from neon.families.lm import sample_tokens

    net, seeds = module.net, list(range(batch))
    prompt = torch.full((batch, 1), module.bos)

    def ours() -> torch.Tensor:
        return module.generate(seeds, partial(sample_tokens, **settings))[0]

    def theirs() -> torch.Tensor:
        torch.manual_seed(0)
        return net.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                            max_new_tokens=tokens, pad_token_id=module.bos, **settings)

    shapes = (tuple(ours().shape), tuple(theirs().shape))  # also the warm-up
    assert shapes == ((batch, tokens), (batch, tokens + 1)), shapes  # every token drawn by both
    times = {"ours": float("inf"), "generate": float("inf")}
    for _ in range(rounds):  # interleaved, so drifts in machine load hit both alike
        for name, fn in (("ours", ours), ("generate", theirs)):
            times[name] = min(times[name], best_of(fn, repeats=1))
    rate = {k: batch * tokens / v for k, v in times.items()}
    return {"settings": settings, "ours_tokens_per_s": rate["ours"], "generate_tokens_per_s": rate["generate"],
            "ratio": rate["ours"] / rate["generate"], "seconds": times}


def fine_tune(module, batch: int, length: int, steps: int, rounds: int) -> dict:
    """steps/s of the Lightning fine-tune of the family and of a bare loop over the model's own loss: per step (fits
    of `steps` and 2·`steps` steps differenced) and for a whole fit of `steps` steps (the Trainer's set-up in it)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from neon.stages.training import LightningNeon, TrainSettings

    data = {"x": torch.randint(0, module.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))}
    optimizer = partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0)

    def framework(n: int) -> None:
        trainer = L.Trainer(accelerator="cpu", max_steps=n, max_epochs=-1, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, enable_progress_bar=False)
        trainer.fit(LightningNeon(module, TrainSettings(optimizer=optimizer)), DataLoader(Repeat(data),
                                                                                          batch_size=None))

    net = module.net
    opt = optimizer(net.parameters())
    ids = module.with_bos(data["x"])

    def bare(n: int) -> None:
        net.eval()  # as the family trains it: no dropout masks
        for _ in range(n):
            loss = net(input_ids=ids, labels=ids, use_cache=False).loss
            opt.zero_grad()
            loss.backward()
            opt.step()

    framework(1)  # warm-up (Lightning's first fit imports and sets up more)
    runs = {"ours": framework, "ours_double": lambda n: framework(2 * n), "bare": bare,
            "bare_double": lambda n: bare(2 * n)}
    times = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(partial(fn, steps), repeats=1))
    per_step = {k: max(times[f"{k}_double"] - times[k], 1e-9) / steps for k in ("ours", "bare")}
    return {"batch": batch, "length": length, "steps": steps, "ours_steps_per_s": 1 / per_step["ours"],
            "bare_steps_per_s": 1 / per_step["bare"], "ratio": per_step["bare"] / per_step["ours"],
            "fit_ratio": times["bare"] / times["ours"], "seconds": times}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ft-batch", type=int, default=8)
    p.add_argument("--ft-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="a tiny model and one round (a smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.tokens, args.vocab, args.width, args.depth, args.rounds = 2, 4, 512, 64, 1, 1
        args.ft_batch, args.ft_steps = 2, 2
    torch.set_num_threads(args.threads)
    from neon.data.hf_tokenizer import quiet_transformers
    from neon.families.hf_lm import HFCausalLM
    from neon.launch.loggers import quiet_libraries

    quiet_libraries()
    quiet_transformers()

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp), args.vocab, args.width, args.depth)
        module = HFCausalLM(str(folder), max_new_tokens=args.tokens).eval()
        result = {"model": {"vocab": args.vocab, "width": args.width, "depth": args.depth},
                  "threads": args.threads, "batch": args.batch, "tokens": args.tokens, "rounds": args.rounds,
                  "sampling": sampling(module, args.batch, args.tokens, SETTINGS, args.rounds),
                  "sampling_filtered": sampling(module, args.batch, args.tokens, FILTERED, args.rounds),
                  "finetune": fine_tune(module.train(), args.ft_batch, args.tokens, args.ft_steps, args.rounds)}
    lines = [f"HF causal LM (GPT-2 {args.depth}×{args.width}, vocab {args.vocab}), batch {args.batch} × {args.tokens} "
             f"tokens, {args.threads} threads, best of {args.rounds} interleaved rounds:"]
    for key in ("sampling", "sampling_filtered"):
        s = result[key]
        lines.append(f"  {key} {s['settings']}: neon per-seed {s['ours_tokens_per_s']:.0f} tok/s, generate "
                     f"{s['generate_tokens_per_s']:.0f} tok/s, ratio {s['ratio']:.2f}×")
    f = result["finetune"]
    lines.append(f"  fine-tune (batch {f['batch']} × {f['length']}) per step: neon {f['ours_steps_per_s']:.2f} "
                 "steps/s, "
                 f"bare loop {f['bare_steps_per_s']:.2f} steps/s, ratio {f['ratio']:.3f} "
                 f"({100 * (1 / f['ratio'] - 1):+.1f}% time); a whole fit of {f['steps']} steps, the Trainer's "
                 f"set-up in it: ratio {f['fit_ratio']:.3f}")
    return emit(result, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()

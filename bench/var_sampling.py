"""VAR sampling speed: the framework's sampler (KV cache, one generator per image) against the same
network without the cache (every scale re-runs the whole prefix under the block-causal mask), and against
a bare loop (the sampler function with one generator for the batch, no 8-bit rounding).

A mid-size random model on CPU: depth 4, width 256, scales 1…8 (155 tokens), a small VQVAE (32×32 images).
Interleaved rounds, best of 3. Usage: .venv/bin/python bench/var_sampling.py [--batch 16] [--quick] [--json OUT]
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
from timing import best_of  # noqa: E402

from neon.core.seeding import PerSampleRNG  # noqa: E402
from neon.families.var import VARModule, var_sampler  # noqa: E402
from neon.families.var.sampler import draw_tokens, filter_top_k_top_p_  # noqa: E402
from neon.families.var.vqvae import VQVAE  # noqa: E402

NET = dict(depth=4, embed_dim=256, num_heads=4, num_classes=10, vocab_size=512, vae_channels=16,
           patch_nums=[1, 2, 3, 4, 5, 6, 8])
VAE = dict(vocab_size=512, z_channels=16, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, in_channels=3, using_sa=False,
           using_mid_sa=False)
SETTINGS = dict(cfg=1.5, top_k=100, top_p=0.95)
QUICK_NET = dict(NET, depth=1, embed_dim=32, num_heads=2, patch_nums=[1, 2])  # --quick: two scales, a narrow network


@torch.no_grad()
def sample_without_cache(module: VARModule, labels: torch.Tensor, rng) -> torch.Tensor:
    """The same sampler, but each scale recomputes every earlier token instead of reading a cache."""
    net, quant = module.net, module.vae.quantize
    b, last = len(labels), len(net.patch_nums) - 1
    cond = net.class_emb(torch.cat((labels, torch.full_like(labels, net.num_classes))))
    lvl_pos = net.lvl_embed(net.lvl_1L) + net.pos_1LC
    sequence = cond.unsqueeze(1) + net.pos_start.expand(2 * b, 1, -1) + lvl_pos[:, :1]
    f_hat = cond.new_zeros(b, quant.channels, net.patch_nums[-1], net.patch_nums[-1])
    ada = net.shared_ada_lin(cond)
    for si, pn in enumerate(net.patch_nums):
        end = net.bounds[si][1]
        x = sequence
        for block in net.blocks:
            x = block(x, ada, net.attn_bias_for_masking[:, :, :end, :end])
        logits = net.logits(x[:, -pn * pn:], cond)
        t = SETTINGS["cfg"] * si / last
        logits = (1 + t) * logits[:b] - t * logits[b:]
        idx = draw_tokens(filter_top_k_top_p_(logits, SETTINGS["top_k"], SETTINGS["top_p"]), rng)
        h = quant.embedding(idx).transpose(1, 2).reshape(b, quant.channels, pn, pn)
        f_hat, nxt = quant.next_input(si, f_hat, h)
        if si != last:
            begin, stop = net.bounds[si + 1]
            tokens = net.word_embed(nxt.view(b, quant.channels, -1).transpose(1, 2)) + lvl_pos[:, begin:stop]
            sequence = torch.cat((sequence, tokens.repeat(2, 1, 1)), dim=1)
    return module.vae.decode(f_hat)


def main(argv: list[str] | None = None) -> dict:
    """Measure the three samplers; print the line and write the JSON where asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="calls per round, the best kept")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="two scales of a narrow network, batch 2, one round (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    net, batch, rounds, repeats = (QUICK_NET, 2, 1, 1) if args.quick else (NET, args.batch, args.rounds, args.repeats)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:  # a random VQVAE in the release's format
        vae_file = f"{tmp}/vae.pth"
        torch.save(VQVAE(**VAE, patch_nums=net["patch_nums"]).state_dict(), vae_file)
        module = VARModule(net, VAE, vae_checkpoint=vae_file).eval()
    seeds, labels = list(range(batch)), torch.arange(batch) % 10
    sampler = partial(var_sampler, **SETTINGS)

    framework = lambda: module.generate(seeds, sampler, labels)  # noqa: E731
    bare = lambda: var_sampler(module.net, module.vae, labels, torch.Generator().manual_seed(0), **SETTINGS)  # noqa: E731
    no_cache = lambda: sample_without_cache(module, labels, PerSampleRNG(seeds))  # noqa: E731
    same = torch.equal(framework()[0], framework()[0])  # also the warm-up
    times = {"framework": float("inf"), "bare": float("inf"), "no_cache": float("inf")}
    for _ in range(rounds):  # interleaved rounds, so drifts in machine load hit all three alike
        for name, fn in (("framework", framework), ("bare", bare), ("no_cache", no_cache)):
            times[name] = min(times[name], best_of(fn, repeats=repeats))
    ips = {k: batch / v for k, v in times.items()}
    result = {"settings": {"threads": torch.get_num_threads(), "batch": batch, "rounds": rounds, "repeats": repeats,
                           "tokens": sum(n * n for n in net["patch_nums"]), "image_shape": list(module.image_shape),
                           "model": {k: net[k] for k in ("depth", "embed_dim", "patch_nums")}, "sampler": SETTINGS,
                           "compared": "VARModule.generate (KV cache) against a bare loop and against the network "
                                       "without the cache"},
              "seconds": times, "images_per_s": ips, "overhead": times["framework"] / times["bare"] - 1,
              "cache_speedup": times["no_cache"] / times["framework"], "deterministic": same}
    line = (f"VAR sampling, batch {batch}, {result['settings']['tokens']} tokens: framework (KV cache) "
            f"{ips['framework']:.1f} img/s, bare loop {ips['bare']:.1f} img/s (overhead "
            f"{100 * result['overhead']:+.1f}%), without the cache {ips['no_cache']:.1f} img/s "
            f"(cache speed-up ×{result['cache_speedup']:.2f}); deterministic: {same}")
    return emit(result, line, args.json)


if __name__ == "__main__":
    main()

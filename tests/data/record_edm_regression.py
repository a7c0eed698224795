"""Record seeded outputs of the EDM family into `edm_regression.pt`, the file `tests/test_edm_regression.py`
checks bit for bit.

The file was written by this script at commit 86ad0af, before the family was rewritten from
`docs/upstream/edm.md`; it pins what the rewrite had to reproduce. Rerunning the script records the
current code instead, so only do that on purpose (a deliberate change of outputs).

  python tests/data/record_edm_regression.py

Each network's gradients are recorded twice: as digests of their bits (`grads`, from 86ad0af) and as a few
numbers per tensor that another CPU can compare within a tolerance (`grad_facts`: `gradient_facts`). The
facts were added later, to the 86ad0af file, by

  python tests/data/record_edm_regression.py --add-grad-facts

which recomputes every entry with the current code, one thread, and writes nothing unless all of the file's
entries, the gradient digests included, come out bit for bit: the facts are then those of the very gradients
86ad0af recorded (done on an Intel Xeon with AVX-512 kernels, torch 2.14.1; the file's other entries are left as they were).
"""

from __future__ import annotations

import hashlib
import sys
import zlib
from pathlib import Path

import torch

from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.edm import heun_sampler
from neon.families.edm.losses import denoising_loss
from neon.families.edm.module import EDMModule, build_network

OUT = Path(__file__).with_name("edm_regression.pt")

# Small networks covering every backbone option: both embeddings, every encoder and decoder type, both
# resampling filters, attention, labels and augmentation inputs, and each preconditioning.
NETWORKS: dict[str, dict] = {
    "ddpmpp": dict(precond="EDMPrecond", img_resolution=8, img_channels=3, label_dim=10, model_type="SongUNet",
                   augment_dim=9, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                   dropout=0.1, embedding_type="positional", encoder_type="standard", decoder_type="standard",
                   channel_mult_noise=1, resample_filter=[1, 1], label_dropout=0.2),
    "ncsnpp_vp": dict(precond="VPPrecond", img_resolution=8, img_channels=2, label_dim=0, model_type="SongUNet",
                      model_channels=8, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[4],
                      embedding_type="fourier", encoder_type="residual", decoder_type="skip",
                      channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    "skipenc_ve": dict(precond="VEPrecond", img_resolution=8, img_channels=3, label_dim=4, model_type="SongUNet",
                       model_channels=8, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[8],
                       embedding_type="positional", encoder_type="skip", decoder_type="skip",
                       channel_mult_noise=1, resample_filter=[1, 3, 3, 1]),
    "adm": dict(precond="EDMPrecond", img_resolution=8, img_channels=3, label_dim=5, model_type="DhariwalUNet",
                augment_dim=9, model_channels=16, channel_mult=[1, 4], num_blocks=1, attn_resolutions=[4],
                dropout=0.1, label_dropout=0.3),
    "resmlp": dict(precond="EDMPrecond", img_resolution=8, img_channels=1, label_dim=10, model_type="ResMLP",
                   hidden=32, num_blocks=2, noise_channels=16, label_dropout=0.1),
}


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """SHA-256 of each tensor's bytes: a bit-exact record that costs 64 characters a tensor."""
    return {k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest() for k, v in tensors.items()}


GRAD_ENTRIES = 10  # entries of each gradient kept in its facts


def gradient_facts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A few numbers of each gradient that survive another CPU's rounding: [max |g|, rms g, then GRAD_ENTRIES
    entries at evenly spaced flat indices] in float64. Every fact is at most max |g|, so "within a share of the
    tensor's scale" is a share of the first fact."""
    out = {}
    for k, v in tensors.items():
        flat = v.detach().double().flatten()
        index = torch.linspace(0, flat.numel() - 1, min(GRAD_ENTRIES, flat.numel())).round().long()
        out[k] = torch.cat([flat.abs().max()[None], flat.pow(2).mean().sqrt()[None], flat[index]])
    return out


def perturbed(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Move every floating tensor off its init (zero-initialised output layers would hide the backbone), with
    noise seeded by the key's name so that the result does not depend on the order of the state dict."""
    state = {}
    for key, value in net.state_dict().items():
        if value.is_floating_point() and "resample_filter" not in key and "freqs" not in key:
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            value = value + 0.05 * torch.randn(value.shape, generator=g)
        state[key] = value.clone()
    net.load_state_dict(state)
    return state


def record_network(name: str, kwargs: dict) -> dict:
    """Init from a seed (digests), perturbed weights (digests), forward in eval and train mode, loss and gradients, Heun samples."""
    torch.manual_seed(7)
    net = build_network(kwargs)
    init_state = digests(net.state_dict())
    state = digests(perturbed(net))
    g = torch.Generator().manual_seed(3)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    x = torch.randn(4, *shape, generator=g)
    sigma = torch.tensor([0.01, 0.5, 3.0, 40.0])
    labels = None
    if net.label_dim:
        labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]) % net.label_dim, net.label_dim).float()
    augment = torch.randn(4, kwargs["augment_dim"], generator=g) if kwargs.get("augment_dim") else None
    extra = {"augment_labels": augment} if augment is not None else {}

    net.eval()
    with torch.no_grad():
        out_eval = net(x, sigma, labels, **extra)
    net.train()
    torch.manual_seed(5)  # dropout and label dropout draw from the global generator
    out_train = net(x, sigma, labels, **extra)

    torch.manual_seed(6)
    net.zero_grad()
    loss = denoising_loss(net, x.clamp(-1, 1), labels, StepNoise.single(4, seed=9)).sum() / 4
    loss.backward()
    grads = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}

    net.eval()
    samples = {}
    for churn in (0.0, 5.0):
        rng = PerSampleRNG([10, 11, 12], "cpu")
        latents = rng.randn(*shape)
        lab = labels[:3] if labels is not None else None
        samples[churn] = heun_sampler(net, latents, lab, randn_like=rng.randn_like, num_steps=5, S_churn=churn,
                                      S_min=0.05, S_max=50.0, S_noise=1.007)
    return dict(kwargs=kwargs, init_state=init_state, state=state, x=x, sigma=sigma, labels=labels, augment=augment,
                out_eval=out_eval, out_train=out_train.detach(), loss=loss.detach(), grads=digests(grads),
                grad_facts=gradient_facts(grads), heun=samples[0.0], heun_churn=samples[5.0])


def record_module_generate() -> dict:
    """EDMModule.generate on the digits network: latents, labels drawn per seed, 8-bit rounding."""
    kwargs = NETWORKS["resmlp"]
    torch.manual_seed(7)
    module = EDMModule(network=kwargs, ema_decay=0.999, ema_halflife_kimg=None)
    state = perturbed(module.net)
    module.ema.load_state_dict(state)
    state = digests(state)
    module.eval()
    x, labels = module.generate([0, 1, 2, 99], lambda *a, **k: heun_sampler(*a, **k, num_steps=6))
    return dict(kwargs=kwargs, state=state, x=x, labels=labels)


def same_bits(got, want) -> bool:
    """Whether a recomputed entry equals the recorded one bit for bit (tensors, digests, values)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and set(got) == set(want) and all(same_bits(got[k], want[k]) for k in want)
    if isinstance(want, torch.Tensor):
        return isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want)
    return got == want


def add_grad_facts() -> dict:
    """The recorded file with each network's `grad_facts` added, computed from gradients whose digests equal
    the recorded ones; refuses (SystemExit) where any recorded entry does not come out bit for bit here."""
    record = torch.load(OUT, weights_only=False)
    for name, kwargs in NETWORKS.items():
        got = record_network(name, kwargs)
        kept = {k: v for k, v in record[name].items() if k != "grad_facts"}
        if not same_bits({k: got[k] for k in kept}, kept):
            raise SystemExit(f"{name}: this machine does not reproduce the record bit for bit; nothing written")
        record[name] = {**kept, "grad_facts": got["grad_facts"]}
    if not same_bits(record_module_generate(), record["module_generate"]):
        raise SystemExit("module_generate: this machine does not reproduce the record bit for bit; nothing written")
    return record


if __name__ == "__main__":
    torch.set_num_threads(1)  # the thread count the record holds at (tests/test_edm_regression.py)
    if sys.argv[1:] == ["--add-grad-facts"]:
        record = add_grad_facts()
    else:
        record = {name: record_network(name, kwargs) for name, kwargs in NETWORKS.items()}
        record["module_generate"] = record_module_generate()
    tmp = OUT.with_suffix(".tmp")
    torch.save(record, tmp)
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")

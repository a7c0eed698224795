"""The releases' conventions: VAR's top_k = 0 / top_p = 0 mean off, the VQVAE's image ↔ token round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neon.core.errors import NeonError
from neon.families.var import VARModule
from neon.families.var.sampler import filter_top_k_top_p_, var_sampler
from tests.test_var import NET, VAE, write_release_files


@pytest.fixture()
def var_module(tmp_path: Path) -> VARModule:
    var_path, vae_path = write_release_files(tmp_path)
    m = VARModule(NET, VAE, vae_checkpoint=str(vae_path))
    m.load_checkpoint(var_path)
    return m.eval()


def test_top_k_zero_and_top_p_zero_are_off(var_module: VARModule):
    logits = torch.randn(2, 5, 64)
    assert torch.equal(filter_top_k_top_p_(logits.clone(), top_k=0, top_p=0.0), logits)
    labels = torch.tensor([1, 7])
    off, full = (var_sampler(var_module.net, var_module.vae, labels, torch.Generator().manual_seed(5), cfg=1.5,
                             top_k=0, top_p=p) for p in (0.0, 1.0))
    assert torch.equal(off, full)
    filtered = var_sampler(var_module.net, var_module.vae, labels, torch.Generator().manual_seed(5), cfg=1.5,
                           top_k=4, top_p=0.5)
    assert not torch.equal(off, filtered)  # the filters do act when on


def test_vqvae_round_trips_use_the_release_names(var_module: VARModule):
    vae = var_module.vae
    images = torch.rand(3, *vae.image_shape) * 2 - 1
    indices = vae.img_to_idxBl(images)
    assert [tuple(i.shape) for i in indices] == [(3, pn * pn) for pn in vae.patch_nums]
    assert all(i.dtype == torch.long for i in indices)
    f = vae.quant_conv(vae.encoder(images))
    _, f_hats = vae.quantize.encode(f)
    assert torch.equal(vae.idxBl_to_fhat(indices), f_hats[-1])
    decoded = vae.idxBl_to_img(indices)
    assert torch.equal(decoded, vae.fhat_to_img(f_hats[-1])) and decoded.abs().max() <= 1
    per_scale = vae.idxBl_to_img(indices, last_one=False)
    assert len(per_scale) == len(vae.patch_nums) and torch.equal(per_scale[-1], decoded)
    assert not torch.equal(per_scale[0], decoded)
    with pytest.raises(NeonError, match="images of shape \\(3, 4, 4\\) do not fit this VQVAE"):
        vae.img_to_idxBl(images[:, :, :4, :4])
    with pytest.raises(NeonError, match="2 token maps given but this VQVAE has 3 scales"):
        vae.idxBl_to_img(indices[:2])
    with pytest.raises(NeonError, match="same_shape=False"):
        vae.idxBl_to_img(indices, same_shape=False)

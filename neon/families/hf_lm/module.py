"""Any local Hugging Face causal LM as a NeonModule: θ is the folder's weights, trained with the model's own shifted
cross-entropy; S is drawn per seed through the model's KV cache by `neon.families.lm.sample_tokens`; release mode is
`model.generate` itself; θ goes back out as a folder `AutoModelForCausalLM.from_pretrained` loads.

Every sequence starts with one id, the tokenizer's BOS (else its EOS, GPT-2's <|endoftext|>), in the loss, the
likelihood and sampling alike: the model reads [BOS, x] and predicts x (docs/upstream/transformers.md)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from neon.core.contract import (
    Batch,
    HasLikelihood,
    HasNativeExport,
    HasReleaseSampling,
    HasTextSamples,
    NeonModule,
    Sampler,
    setting_above,
)
from neon.core.errors import NeonError
from neon.core.io import StateDict
from neon.core.release_sampling import RANDOM, UNCONDITIONAL, Draw, LabelSpec, sizes_of
from neon.core.seeding import PerSampleRNG, StepNoise
from neon.families.hf_lm.folder import check_model_folder
from neon.families.hf_lm.network import CachedSteps, load_network, tied_keys
from neon.families.hf_lm.writer import write_model_folder
from neon.families.lm import check_lm_sampler, prompt_prefixes, sample_tokens
from neon.weights.readers import read_weights

NLL_ELEMENTS = 2 ** 25  # logits per forward pass of `token_nll` (rows × positions × vocabulary): bounded memory


def check_length(max_new_tokens: Any, positions: int | None) -> int:
    """model.max_new_tokens as a count that fits the model: n tokens are trained on as [BOS, n tokens]."""
    if not isinstance(max_new_tokens, Integral) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise NeonError(f"model.max_new_tokens={max_new_tokens!r} must be a whole number ≥ 1 (the tokens per sample)")
    if positions is not None and max_new_tokens + 1 > positions:
        raise NeonError(f"model.max_new_tokens={max_new_tokens} needs {max_new_tokens + 1} positions (BOS first) but "
                        f"the model has {positions} (max_position_embeddings): lower it (and data.context)")
    return int(max_new_tokens)


class HFCausalLM(NeonModule, HasLikelihood, HasTextSamples, HasReleaseSampling, HasNativeExport):
    """A local Hugging Face causal LM (`pretrained`: the folder; `tokenizer`: another tokenizer folder, None: the
    model's). A batch {"x": LongTensor [B, L], optional "attention_mask" [B, L]} holds token ids; samples are
    `max_new_tokens` ids. `dropout`: train with the model's own dropout (its masks come from torch's global
    generator, not the step's noise, so a fine-tune then depends on the process count); off, the network stays in
    eval mode while it trains."""

    family = "Hugging Face causal LM"
    samplers = {"lm": sample_tokens}
    native_folder = "model"
    native_card_header = "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- neon\n---\n"
    release_note = ("A Hugging Face causal LM is a folder (config.json, generation_config.json, safetensors weights "
                    "and the tokenizer's files); theta_neon_model/ is the base folder with these weights, for "
                    "AutoModelForCausalLM.from_pretrained")

    def __init__(self, pretrained: str, tokenizer: str | None = None, optimizer=None, max_new_tokens: int = 64,
                 dtype: str = "auto", dropout: bool = False):
        folder = check_model_folder(pretrained, tokenizer)
        length = check_length(max_new_tokens, folder.positions)
        super().__init__(load_network(folder.path, str(dtype)), optimizer=optimizer)
        self.folder, self.tokenizer = folder, folder.tokenizer
        self.tokenizer_dir = Path(str(tokenizer)) if tokenizer else folder.path
        self.bos, self.positions, self.max_new_tokens = folder.bos, folder.positions, length
        self.dropout = bool(dropout)
        self.train()  # the network as training will hold it (from_pretrained leaves it in eval mode)

    @classmethod
    def check_model_settings(cls, settings: Mapping[str, Any]) -> None:
        """The pre-flight: the folder exists (not a Hub id), holds a causal LM's config.json and a tokenizer that
        fits its vocabulary, and max_new_tokens fits its positions (reads config.json and the tokenizer only)."""
        folder = check_model_folder(settings.get("pretrained"), settings.get("tokenizer"))
        check_length(settings.get("max_new_tokens", 64), folder.positions)

    @classmethod
    def check_sampler_settings(cls, settings: Mapping[str, Any], key: str) -> None:
        """A negative temperature, a top-k below 0 or a top-p outside (0, 1]: one line before any work."""
        check_lm_sampler(settings, key)

    @classmethod
    def diversity_seeking(cls, settings: Mapping[str, Any]) -> list[str]:
        """A temperature above 1 flattens every next-token distribution."""
        return setting_above(settings, "temperature", 1, "temperature > 1")

    def train(self, mode: bool = True) -> "HFCausalLM":
        """Train/eval mode; without `dropout` the network itself stays in eval mode (no dropout masks drawn)."""
        super().train(mode)
        if mode and not self.dropout:
            self.net.eval()
        return self

    @property
    def image_shape(self) -> tuple[int]:
        """A sample is `max_new_tokens` token ids."""
        return (self.max_new_tokens,)

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding (ids 0 … vocab_size − 1)."""
        return self.folder.vocab_size

    def check_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`x` as long token ids on the module's device, or a one-line error saying what the batch must hold."""
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool or x.ndim != 2:
            raise NeonError(f"the {self.family} reads batches of token ids (an integer tensor [batch, length]), "
                            f"got {x.dtype} {tuple(x.shape)}: use a text data module")
        if self.positions is not None and x.shape[1] + 1 > self.positions:
            raise NeonError(f"sequences of {x.shape[1]} tokens (plus BOS) for a model with {self.positions} positions: "
                            "make data.context at most max_position_embeddings − 1")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise NeonError(f"token ids must lie in [0, {self.vocab_size}), got ids from {int(x.min())} to "
                            f"{int(x.max())}: tokenise the data with the model's tokenizer (data.tokenizer)")
        return x.to(self.device, torch.long)

    def with_bos(self, x: torch.Tensor) -> torch.Tensor:
        """[BOS, x]: what the model reads to predict every token of `x`."""
        return torch.cat([torch.full_like(x[:, :1], self.bos), x], dim=1)

    def loss(self, batch: Batch, noise: StepNoise) -> torch.Tensor:
        """The model's own loss (`labels=`: shifted cross-entropy, mean over the predicted tokens) of x after BOS;
        tokens where `attention_mask` is 0 are padding: neither attended to nor predicted."""
        x = self.check_tokens(batch["x"])
        ids = self.with_bos(x)
        labels, attention = ids.clone(), None
        mask = batch.get("attention_mask")
        if mask is not None:
            if tuple(mask.shape) != tuple(x.shape):
                raise NeonError(f"attention_mask {tuple(mask.shape)} does not match the tokens {tuple(x.shape)}")
            mask = mask.to(self.device, torch.long)
            labels[:, 1:] = labels[:, 1:].masked_fill(mask == 0, -100)  # -100: transformers' ignored label
            attention = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return self.net(input_ids=ids, attention_mask=attention, labels=labels, use_cache=False).loss

    def token_nll(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(summed NLL in nats as a float64 scalar, token count) of `x` [N, L] under the sampling network in eval
        mode, a bounded number of logits at a time."""
        x = self.check_tokens(x)
        net = self.sampling_net
        was_training = net.training
        net.eval()
        rows = max(1, NLL_ELEMENTS // max(1, x.shape[1] * self.vocab_size))
        total = 0.0  # a Python float: summed in float64 on every device
        try:
            with torch.no_grad():
                for chunk in x.split(rows):
                    logits = net(input_ids=self.with_bos(chunk)[:, :-1], use_cache=False).logits
                    nll = F.cross_entropy(logits.flatten(0, 1).float(), chunk.flatten(), reduction="none")
                    total += float(nll.double().sum())
        finally:
            net.train(was_training)
        return torch.tensor(total, dtype=torch.float64), x.numel()

    def steps(self, net: Any) -> CachedSteps:
        """`net` as `sample_tokens` reads a network (KV-cached steps from BOS)."""
        return CachedSteps(net, self.bos, self.positions)

    def generate(self, seeds: Sequence[int], sampler: Sampler, labels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if labels is not None:
            raise NeonError(f"the {self.family} is unconditional: sample without class labels")
        uniforms = PerSampleRNG(seeds, self.device).rand(self.max_new_tokens)  # one uniform per token, from the seed
        prefix = prompt_prefixes(sampler, seeds, self.device)
        return sampler(self.steps(self.sampling_net), uniforms, prefix=prefix), None

    def generate_release(self, release_seed: int, seeds: Sequence[int], batch_size: int, sampler: Sampler,
                         labels: LabelSpec) -> Iterator[Draw]:
        """`torch.manual_seed(release_seed)`, then `batch_size` rows at a time `model.generate(BOS, do_sample=True,
        temperature, top_k, top_p, max_new_tokens)` with the sampler's settings (top_k passed even when 0, which
        turns generate's default of 50 off; temperature 0: greedy, do_sample=False). Rows that end at EOS hold
        the pad id after it (generate's rule), padded to max_new_tokens."""
        if labels not in (RANDOM, UNCONDITIONAL):
            raise NeonError(f"the {self.family} is unconditional: leave sample.labels null")
        settings = dict(getattr(sampler, "keywords", None) or {})
        check_lm_sampler(settings, "sampler")
        if settings.get("prompts") is not None:
            raise NeonError("sample.rng=release draws from BOS as generate does: drop sampler.prompts (use "
                            "sampler=lm) or sample per seed (sample.rng=per_seed)")
        temperature = float(settings.get("temperature", 1.0))
        drawing = ({"do_sample": True, "temperature": temperature, "top_k": int(settings.get("top_k", 0)),
                    "top_p": float(settings.get("top_p", 1.0))} if temperature > 0 else {"do_sample": False})
        net = self.sampling_net
        pad = self.pad_id(net)
        torch.manual_seed(int(release_seed))
        for size in sizes_of(len(seeds), batch_size):
            prompt = torch.full((size, 1), self.bos, dtype=torch.long, device=self.device)
            with torch.no_grad():
                out = net.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                   max_new_tokens=self.max_new_tokens, pad_token_id=pad, **drawing)
            tokens = F.pad(out[:, 1:], (0, self.max_new_tokens - (out.shape[1] - 1)), value=pad)
            yield Draw(tokens, None, tokens)

    @staticmethod
    def pad_id(net: Any) -> int:
        """The id generate fills finished rows with: the generation config's pad id, else its (first) EOS."""
        config = net.generation_config
        for value in (config.pad_token_id, config.eos_token_id, config.bos_token_id):
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return 0

    def decode_samples(self, x: torch.Tensor) -> list[str]:
        """Sampled token ids as text through the tokenizer (special tokens shown)."""
        return [self.tokenizer.decode(row, skip_special_tokens=False) for row in x.long().cpu().tolist()]

    def export_samples(self, x: torch.Tensor) -> np.ndarray:
        """The token ids as an int64 array [N, max_new_tokens]."""
        return x.detach().cpu().numpy().astype(np.int64)

    def load_neon_weights(self, state: StateDict, source: str = "checkpoint") -> None:
        """Load θ, whose tied parameters (GPT-2's lm_head.weight) are stored once, under their source's name."""
        tied = tied_keys(self.net)
        super().load_neon_weights({k: v for k, v in state.items() if k not in tied}, source)

    def read_checkpoint(self, path: str | Path) -> StateDict:
        """A model folder's weights (model.safetensors, sharded or not), or any weights file neon reads."""
        path = Path(path)
        if path.is_dir():
            for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin"):
                if (path / name).is_file():
                    return read_weights(path / name, what="model weights")
            raise NeonError(f"'{path}' holds no model weights (model.safetensors, its sharded index, or "
                            "pytorch_model.bin)")
        return super().read_checkpoint(path)

    def load_checkpoint(self, path: str | Path, shape_from_checkpoint: bool = False) -> None:
        """Load θ from a file or folder; the model's own folder was read at construction (not again)."""
        if Path(path).resolve() == self.folder.path.resolve():
            return
        super().load_checkpoint(path, shape_from_checkpoint)

    def write_native(self, state: StateDict, out: Path) -> Path:
        """θ (e.g. θ_neon) as a model folder: the base's config, generation config and tokenizer with θ's weights."""
        net = copy.deepcopy(self.own_sampling_net)
        net.load_state_dict({k: v for k, v in state.items() if k not in tied_keys(net)})
        card = "\n".join([
            self.native_card_header,
            f"# θ: {self.family} from `{self.folder.path}`", "",
            f"The model of `{self.folder.path}` (its config.json, generation_config.json and tokenizer) with weights "
            "written by neon. A Neon run's card here names θ_neon = (1 + w)·θ_r − w·θ_s with its w, budget, θ_r and "
            "θ_s; load it with `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained"
            "(folder)`.", ""])
        return write_model_folder(net, self.folder.path, self.tokenizer_dir, out, card)

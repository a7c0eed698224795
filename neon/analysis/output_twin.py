"""The output-space twin of Neon (`neon.compare=output`): θ_r and θ_s both run at every network call and
their outputs are combined as (1 + w)·f(θ_r) − w·f(θ_s), where weight-space Neon runs one network at
θ_neon = (1 + w)·θ_r − w·θ_s. Each family names, in its `NeonModule.twin_outputs`, the methods of its
sampling network whose outputs are combined (EDM's denoiser D(x; σ), IMM's network output, xAR's velocity,
the toys' ε and Gaussian parameters) and, in `twin_state`, the methods that manage per-network state
(caches) and run on both networks; samplers then take the twin where they take the network. `check_compare`
checks `neon.compare` before any work."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from neon.core.contract import HasOutputTwin, family_of
from neon.core.errors import NeonError
from neon.core.io import StateDict

Output = torch.Tensor | tuple[torch.Tensor, ...]
def check_compare(model_cfg: DictConfig, compare: str | None, blockwise: bool) -> None:
    """`neon.compare=output` (`compare`) checked before any work: a family with an output-space twin and scalar w
    (a block-wise w, given or searched, has no output-space counterpart)."""
    if compare is None:
        return
    family = family_of(model_cfg)
    if not (issubclass(family, HasOutputTwin) and family.twin_outputs):
        raise NeonError(f"neon.compare=output: the {family.family} family has no output-space twin "
                        f"({family.__name__}.twin_outputs is empty); drop neon.compare")
    if blockwise:
        raise NeonError("neon.compare=output combines outputs with one scalar w: give neon.w as numbers (or auto "
                        "without neon.auto.groups), not a block-wise mapping")


def combine(w: float, reference: Output, self_trained: Output) -> Output:
    """(1 + w)·reference − w·self_trained, elementwise over tuples of outputs."""
    if isinstance(reference, tuple):
        return tuple(combine(w, r, s) for r, s in zip(reference, self_trained, strict=True))
    return (1 + w) * reference - w * self_trained


def method_of(net: nn.Module, name: str) -> Callable[..., Any]:
    """The bound method `name` of `net`; 'forward' through the module's own call (its hooks run)."""
    return net if name == "forward" else getattr(net, name)


class CountedNet:
    """A network as a sampler sees it, counting the calls of its output methods (`calls`). Every other
    attribute (constants such as σ_min, helpers such as round_sigma) is the wrapped network's own."""

    def __init__(self, net: nn.Module, outputs: Sequence[str]):
        self._net = net
        self._outputs = tuple(outputs)
        self.calls = 0  # output-method calls: network evaluations of every image in the batch

    def __getattr__(self, name: str) -> Any:
        # only reached for names not set on the wrapper itself (a copy or pickle asks before __init__ ran)
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._outputs:
            return self._counted(name)
        return getattr(self._net, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._counted("forward")(*args, **kwargs)

    def _counted(self, name: str) -> Callable[..., Any]:
        method = method_of(self._net, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return method(*args, **kwargs)

        return call


class OutputTwin(CountedNet):
    """Two copies of one network, θ_r (`reference`) and θ_s (`self_trained`): each output method runs both and
    returns (1 + w)·f(θ_r) − w·f(θ_s); each state method runs on both and returns θ_r's result. `calls`
    counts the evaluations of both networks (twice the sampler's calls)."""

    def __init__(self, reference: nn.Module, self_trained: nn.Module, w: float, outputs: Sequence[str],
                 state: Sequence[str] = ()):
        if not outputs:
            raise NeonError("this model family declares no output methods (NeonModule.twin_outputs): it has no "
                            "output-space twin; drop neon.compare")
        super().__init__(reference, outputs)
        self._self_trained = self_trained
        self._state = tuple(state)
        self.w = float(w)

    def __getattr__(self, name: str) -> Any:
        if name in self._state:
            return self._on_both(name)
        return super().__getattr__(name)

    def _counted(self, name: str) -> Callable[..., Any]:
        ref, aux = method_of(self._net, name), method_of(self._self_trained, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 2
            return combine(self.w, ref(*args, **kwargs), aux(*args, **kwargs))

        return call

    def _on_both(self, name: str) -> Callable[..., Any]:
        ref, aux = getattr(self._net, name), getattr(self._self_trained, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            aux(*args, **kwargs)
            return ref(*args, **kwargs)

        return call


def build_twin(network: nn.Module, theta_r: StateDict, theta_s: StateDict, w: float, outputs: Sequence[str],
               state: Sequence[str] = ()) -> OutputTwin:
    """The twin of `network` (copied twice, left untouched) at θ_r and θ_s, in eval mode on its device."""
    device = next(network.parameters()).device
    copies = []
    for theta in (theta_r, theta_s):
        net = copy.deepcopy(network)
        net.load_state_dict(theta)
        copies.append(net.to(device).eval().requires_grad_(False))
    return OutputTwin(copies[0], copies[1], w, outputs, state)


def timed_generate(module: Any, sampler: Any, seeds: Sequence[int], net: CountedNet) -> tuple[float, int]:
    """(seconds per image, network evaluations per image) of one `generate` call over `seeds` sampling
    through `net`; every output call evaluates every image of the batch, so calls are evaluations per image."""
    net.calls = 0
    with module.sampling_through(net):
        start = time.perf_counter()
        module.generate(list(seeds), sampler)
        seconds = time.perf_counter() - start
    return seconds / max(1, len(seeds)), net.calls

"""Context-managed forward hooks: read inputs/outputs of named modules, edit outputs, stop early.

Hooks are global state on the model, so every one here is removed when its ``with`` block ends,
even on error. A decoder layer may return a tensor or a tuple whose first item is the hidden
state; both are handled.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from util.architectures import get_module


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the last needed module has run."""


def first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_first(output, tensor: torch.Tensor):
    if isinstance(output, tuple):
        return (tensor,) + output[1:]
    if isinstance(output, list):
        return [tensor] + output[1:]
    return tensor


@dataclass
class Captured:
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def capture(
    model: nn.Module,
    input_of: Iterable[str] = (),
    output_of: Iterable[str] = (),
    detach: bool = True,
) -> Iterator[Captured]:
    """Record the (first) input and the (first) output tensor of the named modules."""
    record = Captured()
    handles = []

    def save_input(name):
        def hook(_module, args):
            record.inputs[name] = args[0].detach() if detach else args[0]
        return hook

    def save_output(name):
        def hook(_module, _args, output):
            t = first_tensor(output)
            record.outputs[name] = t.detach() if detach else t
        return hook

    try:
        for name in input_of:
            handles.append(get_module(model, name).register_forward_pre_hook(save_input(name)))
        for name in output_of:
            handles.append(get_module(model, name).register_forward_hook(save_output(name)))
        yield record
    finally:
        for h in handles:
            h.remove()


@contextmanager
def edit_output(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the module's (first) output tensor by ``fn(output)`` inside the block."""
    def hook(_module, _args, output):
        return _replace_first(output, fn(first_tensor(output)))

    handle = get_module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def stopping_after(model: nn.Module, name: str, before: bool = False) -> Iterator[None]:
    """End whatever forward runs inside the block right after module ``name`` (or right before
    it runs, with ``before``); the block then ends normally. Hooks registered earlier on ``name``
    still run (hooks fire in registration order)."""
    def stop(*_):
        raise _StopForward

    module = get_module(model, name)
    handle = module.register_forward_pre_hook(stop) if before else module.register_forward_hook(stop)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


def forward_until(model: nn.Module, stop_after: str | None, stop_before: bool = False, **inputs):
    """Run the model, stopping right after module ``stop_after`` (None: full forward), or right
    before it runs with ``stop_before`` (when only its input is wanted).

    Returns the model output, or None when the pass was stopped early.
    """
    inputs.setdefault("use_cache", False)  # none of these passes reuses keys/values
    if stop_after is None:
        return model(**inputs)
    with stopping_after(model, stop_after, before=stop_before):
        return model(**inputs)
    return None

"""Run the same inputs through a model again, starting at the first decoder layer whose weights
changed since the last pass.

An editor that changes layer l and then reads the model again on the same prompts gets nothing
new from the layers below l. :class:`LayerReplay` records, during an ordinary forward, the hidden
state each resumable decoder layer received and the other arguments the model passed to every
layer from the first resumable one on (mask, position ids, rotary embeddings: whatever this
architecture passes), and a later pass calls the model's own layers from layer l with them. Hooks
on modules inside those layers fire as in a full forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from util.architectures import get_module
from util.hooks import first_tensor, forward_until, stopping_after
from util.prefix_cache import layer_of


class LayerReplay:
    """Passes of one fixed input batch (``inputs``: the model's keyword arguments) through the
    layers at ``layers_path``; a pass may start at any layer of ``resumable`` whose input a
    previous pass kept (one hidden state per resumable layer is kept)."""

    def __init__(self, model: nn.Module, layers_path: str, resumable: Iterable[int], **inputs) -> None:
        self.model, self.layers_path, self.inputs = model, layers_path, inputs
        self.layers = get_module(model, layers_path)
        self.resumable = set(resumable)
        self.first = min(self.resumable, default=len(self.layers))
        self.arguments: dict[int, tuple[tuple, dict[str, Any]]] = {}  # layer -> its call, hidden left out
        self.hidden_in: dict[int, torch.Tensor] = {}  # resumable layer -> its last input

    @torch.no_grad()
    def forward_until(self, stop_after: str, start_at: int | None = None) -> None:
        """Run up to and including module ``stop_after``, from the kept input of layer ``start_at``
        (None, or an input not kept: from the embeddings). The caller promises that no weight
        below layer ``start_at`` changed since a pass kept that input."""
        stop_layer = layer_of(stop_after, self.layers_path)
        if stop_layer is None:
            raise ValueError(f"{stop_after!r} is not inside a layer of {self.layers_path}")
        if start_at is None or start_at not in self.hidden_in or start_at > stop_layer:
            with self._keeping():
                forward_until(self.model, stop_after, **self.inputs)
            return
        hidden = self.hidden_in[start_at]
        with self._keeping(), stopping_after(self.model, stop_after):
            for i in range(start_at, stop_layer + 1):
                args, kwargs = self.arguments[i]
                hidden = first_tensor(self.layers[i](hidden, *args, **kwargs))

    @contextmanager
    def _keeping(self) -> Iterator[None]:
        """Pre-hooks on the layers from the first resumable one on, keeping what each is handed."""
        def keeper(i: int):
            def hook(_module, args, kwargs):
                kwargs = dict(kwargs)  # the layer is about to be called with the original
                hidden = args[0] if args else kwargs.pop("hidden_states")
                self.arguments[i] = (tuple(args[1:]), kwargs)
                if i in self.resumable:
                    self.hidden_in[i] = hidden
            return hook

        handles = [self.layers[i].register_forward_pre_hook(keeper(i), with_kwargs=True)
                   for i in range(self.first, len(self.layers))]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

"""Re-run only what an offset at one layer and one position can change.

An offset added to the output of decoder layer L at position f changes nothing below layer L and,
attention being causal, nothing before position f at any layer. :class:`SuffixForward` runs the
batch once through the model, keeps layer L's output and the keys/values every layer above L
computed for all positions, and then, per call, runs only positions ``f..end`` of each row through
layers L+1.. with the row's offset added at ``f``, attending to the cached keys/values of
positions ``< f``. It calls the model's own decoder layers, so each architecture's attention,
rotary embedding and grouped-query layout is its own; only the mask, the position ids and a
read-only cache are built here.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import DynamicCache

from util.architectures import MODULE_LAYOUTS, get_module
from util.hooks import capture, first_tensor, forward_until

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # both take an additive float mask of our shape


def split_layer_name(name: str) -> tuple[str, int] | None:
    """``"model.layers.7"`` -> ``("model.layers", 7)``; None when the name does not end in an index."""
    parent, _, index = name.rpartition(".")
    return (parent, int(index)) if parent and index.isdigit() else None


def layer_of(site: str, layers_path: str) -> int | None:
    """Index of the decoder layer that is ``site`` or contains it (``model.layers.7.mlp`` -> 7)."""
    prefix = layers_path + "."
    if not site.startswith(prefix):
        return None
    head = site[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def unsupported_reason(model: nn.Module, layers_path: str, seq_len: int) -> str | None:
    """Why :class:`SuffixForward` cannot run this model (None: it can)."""
    config = model.config.get_text_config()
    if getattr(config, "model_type", None) not in MODULE_LAYOUTS:
        return f"model_type {getattr(config, 'model_type', None)!r} is not in the module table"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        return f"attention implementation {implementation!r} (supported: {ATTENTION_IMPLEMENTATIONS})"
    window = getattr(config, "sliding_window", None)
    if window is not None and seq_len >= window:  # our mask has no window
        return f"sliding window {window} <= sequence length {seq_len}"
    if model.training:  # dropout would draw different masks than the full pass
        return "model is in training mode"
    layers = get_module(model, layers_path)
    if not isinstance(layers, nn.ModuleList) or _cache_argument(layers[0]) is None:
        return f"{layers_path} is not a list of decoder layers taking a key/value cache"
    return None


def _cache_argument(layer: nn.Module) -> str | None:
    """The name under which a decoder layer takes its cache (GPT-J and GPT-NeoX: ``layer_past``)."""
    params = inspect.signature(layer.forward).parameters
    for name in ("past_key_values", "layer_past"):
        if name in params:
            return name
    return None


# transformers' SDPA attention copies each key/value head once per query head (repeat_kv) when a
# mask is given, unless this variable is "1"; its reason (CUDA kernels fall back to math with a
# mask) does not hold on CPU, where torch's SDPA takes grouped heads with a mask as they are.
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def _grouped_heads_in_sdpa(device: torch.device) -> Iterator[None]:
    """On CPU, grouped-query attention without copying the key/value heads (the same scores: a
    fifth of a value step on SmolLM2 went to those copies); elsewhere nothing changes."""
    if device.type != "cpu" or os.environ.get(_FORCE_GQA) == "1":
        yield
        return
    before = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[_FORCE_GQA]
        else:
            os.environ[_FORCE_GQA] = before


class _PrefixKeysValues:
    """A read-only cache: each attention's ``update`` returns the cached keys/values of every
    position followed by the new ones, and stores nothing (every call starts from the prefix)."""

    def __init__(self, keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor]) -> None:
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return (torch.cat([self.keys[layer_idx], key_states], dim=-2),
                torch.cat([self.values[layer_idx], value_states], dim=-2))


def pack_rows(lengths: list[int], capacity: int, max_segments: int = 4) -> list[list[int]]:
    """Rows of these lengths into bins of at most ``capacity`` slots and ``max_segments`` rows,
    first fit, longest first (short rows, such as the one-position KL rows, fill the gaps)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for r in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        b = next((b for b in range(len(bins)) if lengths[r] <= room[b] and len(bins[b]) < max_segments), None)
        if b is None:
            bins.append([])
            room.append(capacity)
            b = len(bins) - 1
        bins[b].append(r)
        room[b] -= lengths[r]
    return bins


class SuffixForward:
    """Layers ``first+1 .. last`` of ``layers_path`` on positions ``start[r] .. end[r]`` of each row.

    ``ids``/``mask`` are right-padded rows; ``start`` (R,) is where the offset goes, ``end`` (R,)
    the last position any reader needs (``start <= end`` < row length). ``captured`` holds the
    outputs of ``capture_output_of`` from the one full pass (e.g. the site where the offset goes).

    The suffixes are packed: one batch row (a bin) holds the suffixes of one or more prompt rows,
    each attending to its own row's cached keys/values and causally to itself, so short suffixes
    (the KL prompts') fill the padding of longer ones.
    """

    def __init__(self, model: nn.Module, layers_path: str, first: int, last: int, ids: torch.Tensor,
                 mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                 capture_output_of: tuple[str, ...] = ()) -> None:
        self.layers = get_module(model, layers_path)
        self.first, self.last = first, last
        self.cache_argument = _cache_argument(self.layers[0])
        self.rotary = getattr(model.base_model, "rotary_emb", None)  # Llama-style: computed once per model
        layer_name = f"{layers_path}.{first}"
        with torch.no_grad():
            cache = DynamicCache()  # no config: no sliding-window truncation of what we keep
            with capture(model, output_of=(layer_name, *capture_output_of)) as seen:
                forward_until(model, f"{layers_path}.{last}", input_ids=ids, attention_mask=mask,
                              past_key_values=cache, use_cache=True)
            self.captured = seen.outputs
            self._plan(seen.outputs[layer_name], start, end)
            self.prefix = _PrefixKeysValues(
                {i: self._per_bin(cache.layers[i].keys) for i in range(first + 1, last + 1)},
                {i: self._per_bin(cache.layers[i].values) for i in range(first + 1, last + 1)},
            )

    def _plan(self, base: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> None:
        """Bins of suffixes: which row and position each slot computes, where each row's suffix
        slot ``j`` lands, and the mask."""
        rows, width = base.shape[0], base.shape[1]
        length = (end - start + 1).tolist()
        steps = max(length)
        bins = pack_rows(length, capacity=steps)
        segments = max(len(b) for b in bins)
        starts = start.tolist()
        slot_row, slot_pos, slot_segment = [], [], []  # per bin, per slot
        where = [[]] * rows  # per row, per suffix slot j: (bin, slot)
        for b, members in enumerate(bins):
            row_of, pos_of, seg_of = [members[0]] * steps, [0] * steps, list(range(segments, segments + steps))
            offset = 0
            for g, r in enumerate(members):
                for j in range(length[r]):
                    row_of[offset + j], pos_of[offset + j], seg_of[offset + j] = r, starts[r] + j, g
                # Slots past a row's end read its last one: computed, never used.
                where[r] = [(b, offset + min(j, length[r] - 1)) for j in range(steps)]
                offset += length[r]
            slot_row.append(row_of)
            slot_pos.append(pos_of)
            slot_segment.append(seg_of)
        device = base.device
        t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        self.bins = t([members + [members[0]] * (segments - len(members)) for members in bins])  # (B, G)
        self.positions = t(slot_pos)  # (B, S)
        self.base = base[t(slot_row), self.positions]  # (B, S, d)
        self.where = t(where)  # (R, S, 2)
        self.entry = self.where[:, 0]  # (R, 2): the slot of each row's start, where its offset goes
        self.mask = self._attention_mask(t(slot_segment), start[self.bins], width, base.dtype)

    @staticmethod
    def _attention_mask(segment: torch.Tensor, row_start: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, S, G * width + S) additive: a slot of segment g sees the cached positions before
        its row's start in block g, and the slots of its own segment up to itself. A padding slot
        has a segment number of its own (>= G), so it sees only itself, and the blocks of a bin's
        unused groups are seen by no slot."""
        n_bins, steps = segment.shape
        groups = row_start.shape[1]
        g = torch.arange(groups, device=segment.device)
        before = torch.arange(width, device=segment.device)[None, None, :] < row_start[:, :, None]  # (B, G, W)
        cached = (segment[:, :, None] == g.repeat_interleave(width)[None, None, :]) \
            & before.reshape(n_bins, 1, groups * width)  # (B, S, G*W)
        order = torch.arange(steps, device=segment.device)
        causal = (order[:, None] >= order[None, :])[None] & (segment[:, :, None] == segment[:, None, :])
        allowed = torch.cat([cached, causal], dim=-1)
        blocked = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
        blocked.masked_fill_(~allowed, torch.finfo(dtype).min)
        return blocked[:, None]

    def _per_bin(self, kept: torch.Tensor) -> torch.Tensor:
        """(R, H, W, D) cached keys or values -> (B, H, G * W, D): each bin's rows side by side."""
        per_bin = kept[self.bins]  # (B, G, H, W, D)
        n_bins, groups, heads, width, dim = per_bin.shape
        return per_bin.permute(0, 2, 1, 3, 4).reshape(n_bins, heads, groups * width, dim)

    @property
    def tokens(self) -> int:
        """Positions each call runs through each layer (padding slots included)."""
        return self.positions.numel()

    def __call__(self, offset: torch.Tensor, read: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """Outputs (R, S, d) of the layers in ``read`` with ``offset`` (R, d) added to layer
        ``first``'s output at each row's start; suffix slot ``j`` is position ``start + j``."""
        hidden = self.base.index_put((self.entry[:, 0], self.entry[:, 1]), offset.to(self.base.dtype),
                                     accumulate=True)
        out = {self.first: hidden} if self.first in read else {}
        kwargs = {"attention_mask": self.mask, "position_ids": self.positions, self.cache_argument: self.prefix}
        if self.rotary is not None:
            kwargs["position_embeddings"] = self.rotary(hidden, position_ids=self.positions)
        with _grouped_heads_in_sdpa(hidden.device):
            for i in range(self.first + 1, max(read) + 1):
                hidden = first_tensor(self.layers[i](hidden, **kwargs))
                if i in read:
                    out[i] = hidden
        return {i: h[self.where[..., 0], self.where[..., 1]] for i, h in out.items()}

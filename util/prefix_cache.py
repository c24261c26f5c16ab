"""Re-run only what an offset at one layer and one position can change.

An offset added to the output of decoder layer L at position f changes nothing below layer L and,
attention being causal, nothing before position f at any layer. :class:`SuffixForward` runs each
row once (the prefill) and then, per call, only positions ``f..end`` of each row through layers
L+1.., with the row's offset added at ``f``, attending to cached keys/values of positions ``< f``.
The prefill computes only what the calls read: layers ..L on positions up to ``end`` (layer L's
output at ``f..end`` is where the calls start), the layers above L on positions before ``f`` (their
keys/values), no padding beyond a row's own end, and positions that rows share (the same context
template before different prompts) once. It calls the model's own decoder layers, so each
architecture's attention, rotary embedding and grouped-query layout is its own; only the mask, the
position ids and a read-only cache are built here.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from transformers import DynamicCache

from util.architectures import MODULE_LAYOUTS, get_module
from util.hooks import capture, first_tensor, forward_until
from util.tokens import pad

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


def _rotary_of(model: nn.Module, layers_path: str) -> tuple[nn.Module | None, list[str] | None]:
    """The model's rotary embedding, computed once per call for all layers (Llama-style), and, where
    it takes a layer type (Gemma 3: local and global rotary bases), each layer's type."""
    parent = get_module(model, layers_path.rpartition(".")[0]) if "." in layers_path else model
    rotary = getattr(parent, "rotary_emb", None) or getattr(model.base_model, "rotary_emb", None)
    if rotary is None or "layer_type" not in inspect.signature(rotary.forward).parameters:
        return rotary, None
    return rotary, list(model.config.get_text_config().layer_types)


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
    position followed by the new ones (the new ones alone where a layer has none cached) and
    stores nothing; with ``record`` it keeps the new ones (the prefill's own positions)."""

    def __init__(self, keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor], record: bool = False) -> None:
        self.keys, self.values, self.record = keys, values, record
        self.new_keys: dict[int, torch.Tensor] = {}
        self.new_values: dict[int, torch.Tensor] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.record:
            self.new_keys[layer_idx], self.new_values[layer_idx] = key_states, value_states
        if layer_idx not in self.keys:
            return key_states, value_states
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


def _spans(length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i, j)`` for every ``j < length[i]``: the entries of ragged rows, row by row."""
    width = int(length.max()) if length.numel() else 0
    inside = torch.arange(width, device=length.device)[None, :] < length[:, None]
    return inside.nonzero(as_tuple=True)


def shared_prefix_lengths(ids: torch.Tensor, limit: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(R,) how many first tokens each row has in common with every row of its group, at most
    ``limit`` of the group's rows; 0 in a group of one row (nothing to share)."""
    shared = torch.zeros_like(limit)
    for g in groups.unique().tolist():
        rows = (groups == g).nonzero()[:, 0]
        if len(rows) < 2:
            continue
        most = int(limit[rows].min())
        differs = (ids[rows, :most] != ids[rows[:1], :most]).any(dim=0).nonzero()
        shared[rows] = int(differs[0]) if len(differs) else most
    return shared


@dataclass(frozen=True)
class _Plan:
    """Segments of rows packed into bins (one batch row each) for a run through the upper layers:
    bin ``b``'s slot ``s`` computes position ``positions[b, s]`` of row ``slot_row[b, s]``."""

    rows: torch.Tensor       # (A,) the rows planned
    bins: torch.Tensor       # (B, G) each bin's rows; a bin with fewer repeats its first (a block no slot sees)
    slot_row: torch.Tensor   # (B, S)
    positions: torch.Tensor  # (B, S)
    where: torch.Tensor      # (A, S, 2): (bin, slot) of planned row a's segment slot j (past its end: its last)
    mask: torch.Tensor       # (B, 1, S, G * width + S) additive

    @staticmethod
    def build(rows: torch.Tensor, begin: torch.Tensor, length: torch.Tensor, width: int,
              dtype: torch.dtype) -> "_Plan":
        """Segments ``begin[r] .. begin[r] + length[r] - 1`` of ``rows`` (``begin``, ``length``: (R,),
        every row), each attending to its row's ``width`` cached positions before ``begin[r]`` and
        causally to itself; short segments (the KL rows' one position) fill the padding of long ones."""
        lengths, begins = length[rows].tolist(), begin[rows].tolist()
        steps = max(lengths)
        bins = pack_rows(lengths, capacity=steps)
        segments = max(len(b) for b in bins)
        slot_row, slot_pos, slot_segment = [], [], []  # per bin, per slot
        where: list[list[tuple[int, int]]] = [[]] * len(lengths)  # per planned row, per segment slot j
        for b, members in enumerate(bins):
            # A padding slot repeats the bin's first position (a computed state), seen by no other slot.
            row_of, pos_of = [members[0]] * steps, [begins[members[0]]] * steps
            seg_of, offset = list(range(segments, segments + steps)), 0
            for g, a in enumerate(members):
                for j in range(lengths[a]):
                    row_of[offset + j], pos_of[offset + j], seg_of[offset + j] = a, begins[a] + j, g
                where[a] = [(b, offset + min(j, lengths[a] - 1)) for j in range(steps)]
                offset += lengths[a]
            slot_row.append(row_of)
            slot_pos.append(pos_of)
            slot_segment.append(seg_of)
        t = lambda x: torch.tensor(x, dtype=torch.long, device=rows.device)  # noqa: E731
        bins_rows = rows[t([members + [members[0]] * (segments - len(members)) for members in bins])]
        mask = _attention_mask(t(slot_segment), begin[bins_rows], width, dtype)
        return _Plan(rows, bins_rows, rows[t(slot_row)], t(slot_pos), t(where), mask)


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


def _per_bin(kept: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(R, H, W, D) cached keys or values per row -> (B, H, G * W, D): each bin's rows side by side."""
    per_bin = kept[bins.to(kept.device)]  # (B, G, H, W, D)
    n_bins, groups, heads, width, dim = per_bin.shape
    return per_bin.permute(0, 2, 1, 3, 4).reshape(n_bins, heads, groups * width, dim)


class SuffixForward:
    """Layers ``first+1 .. last`` of ``layers_path`` on positions ``start[r] .. end[r]`` of each row.

    ``ids``/``mask`` are right-padded rows; ``start`` (R,) is where the offset goes, ``end`` (R,)
    the last position any reader needs (``start <= end`` < row length). ``groups`` (R,) names rows
    that may begin alike (one context template before different prompts): the prefill computes the
    first tokens all rows of a group share, up to the group's earliest start, once (it compares the
    ids, so rows that share nothing cost nothing). ``at_start`` holds the outputs of
    ``capture_output_of`` at each row's start (e.g. the site where the offset goes).

    A call runs the rows of the current plan (all rows until :meth:`select` names fewer). Their
    suffixes are packed: one batch row (a bin) holds the suffixes of one or more prompt rows, each
    attending to its own row's cached keys/values and causally to itself, so short suffixes (the KL
    prompts') fill the padding of longer ones.
    """

    def __init__(self, model: nn.Module, layers_path: str, first: int, last: int, ids: torch.Tensor,
                 mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                 capture_output_of: tuple[str, ...] = (), groups: torch.Tensor | None = None) -> None:
        self.layers = get_module(model, layers_path)
        self.first, self.last, self.start, self.end = first, last, start, end
        self.cache_argument = _cache_argument(self.layers[0])
        self.rotary, self.layer_types = _rotary_of(model, layers_path)
        # Per layer above ``first``: (R, H, max(start), D), each row's keys/values before its start.
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        groups = torch.zeros_like(start) if groups is None else groups
        with torch.no_grad():
            shared = shared_prefix_lengths(ids, start, groups)
            prefixes, prefix_of = self._shared_prefixes(model, layers_path, ids, shared, groups)
            self.site, self.at_start = self._lower_layers(model, f"{layers_path}.{first}", ids, mask, shared,
                                                          groups, (prefixes, prefix_of), capture_output_of)
            self._keep_shared_keys_values(prefixes, prefix_of, shared)
            self._upper_layers(shared)
        self.select(torch.arange(len(start), device=start.device))

    # -- the prefill -----------------------------------------------------------------------------
    def _shared_prefixes(self, model: nn.Module, layers_path: str, ids: torch.Tensor, shared: torch.Tensor,
                         groups: torch.Tensor) -> tuple[DynamicCache | None, torch.Tensor]:
        """Every layer's keys/values of each group's shared tokens, one row per group that has any,
        and (R,) the row of that cache each row reads (-1: none)."""
        prefix_of = torch.full_like(shared, -1)
        firsts = [int((groups == g).nonzero()[0]) for g in groups.unique().tolist()]
        firsts = [r for r in firsts if shared[r] > 0]
        if not firsts:
            return None, prefix_of
        for k, r in enumerate(firsts):
            prefix_of[groups == groups[r]] = k
        prefix_ids, prefix_mask = pad([ids[r, : int(shared[r])].tolist() for r in firsts], 0)
        cache = DynamicCache()  # no config: no sliding-window truncation of what we keep
        forward_until(model, f"{layers_path}.{self.last}", input_ids=prefix_ids.to(ids.device),
                      attention_mask=prefix_mask.to(ids.device), past_key_values=cache, use_cache=True)
        return cache, prefix_of

    def _lower_layers(self, model: nn.Module, site_layer: str, ids: torch.Tensor, mask: torch.Tensor,
                      shared: torch.Tensor, groups: torch.Tensor, prefixes: tuple[DynamicCache | None, torch.Tensor],
                      capture_output_of: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Layers ..first on each row's positions after its shared ones up to its end, one pass per
        group: (R, T, d) the site layer's output there (zero elsewhere), and the captured outputs at
        each row's start."""
        site: torch.Tensor | None = None
        at_start: dict[str, torch.Tensor] = {}
        for g in groups.unique().tolist():
            rows = (groups == g).nonzero()[:, 0]
            p, stop = int(shared[rows[0]]), int(self.end[rows].max()) + 1
            inside = mask[rows, p:stop].bool() & (torch.arange(p, stop, device=ids.device) <= self.end[rows, None])
            past = self._shared_cache(prefixes, int(prefixes[1][rows[0]]), p, len(rows))
            attention = torch.cat([inside.new_ones(len(rows), p), inside], dim=1).long()
            with capture(model, output_of=(site_layer, *capture_output_of)) as seen:
                forward_until(model, site_layer, input_ids=ids[rows, p:stop], attention_mask=attention,
                              past_key_values=past, use_cache=True)
            out = seen.outputs[site_layer]
            if site is None:
                site = out.new_zeros(len(ids), ids.shape[1], out.shape[-1])
            i, j = _spans(self.end[rows] - p + 1)
            site[rows[i], p + j] = out[i, j]
            at = self.start[rows] - p
            for name in capture_output_of:
                kept = seen.outputs[name][torch.arange(len(rows), device=at.device), at]
                at_start.setdefault(name, kept.new_zeros(len(ids), *kept.shape[1:]))[rows] = kept
        return site, at_start

    def _shared_cache(self, prefixes: tuple[DynamicCache | None, torch.Tensor], k: int, p: int,
                      n: int) -> DynamicCache:
        """A cache holding shared prefix ``k``'s first ``p`` positions at layers ..first, for ``n`` rows."""
        cache = DynamicCache()
        if p == 0:
            return cache
        for i in range(self.first + 1):
            layer = prefixes[0].layers[i]
            cache.update(layer.keys[k : k + 1, :, :p].expand(n, -1, -1, -1),
                         layer.values[k : k + 1, :, :p].expand(n, -1, -1, -1), i)
        return cache

    def _keep_shared_keys_values(self, prefixes: DynamicCache | None, prefix_of: torch.Tensor,
                                 shared: torch.Tensor) -> None:
        """Each row's shared positions into its keys/values above ``first``."""
        if prefixes is None:
            return
        r, j = _spans(shared)
        for i in range(self.first + 1, self.last + 1):
            for kept, cached in ((self.keys, prefixes.layers[i].keys), (self.values, prefixes.layers[i].values)):
                kept[i] = self._allocate(cached)
                on = cached.device  # the layer's (a model split over devices keeps each layer's own)
                kept[i][r.to(on), :, j.to(on)] = cached[prefix_of[r].to(on), :, j.to(on)]

    def _allocate(self, like: torch.Tensor) -> torch.Tensor:
        """(R, H, max(start), D) zeros (masked, and finite: a masked score still meets its value)."""
        heads, dim = like.shape[1], like.shape[-1]
        return like.new_zeros(len(self.start), heads, int(self.start.max()), dim)

    def _upper_layers(self, shared: torch.Tensor) -> None:
        """Layers above ``first`` on each row's positions between its shared ones and its start:
        their keys/values complete each row's cache."""
        length = self.start - shared
        rows = (length > 0).nonzero()[:, 0]
        if len(rows) == 0:
            return
        plan = _Plan.build(rows, shared, length, self._width, self.site.dtype)
        cache = _PrefixKeysValues({i: _per_bin(k, plan.bins) for i, k in self.keys.items()},
                                  {i: _per_bin(v, plan.bins) for i, v in self.values.items()}, record=True)
        self._run(self.site[plan.slot_row, plan.positions], plan, cache, range(self.first + 1, self.last + 1))
        a, j = _spans(length[rows])
        r, p = rows[a], shared[rows[a]] + j
        for i in range(self.first + 1, self.last + 1):
            for kept, new in ((self.keys, cache.new_keys[i]), (self.values, cache.new_values[i])):
                if i not in kept:
                    kept[i] = self._allocate(new)
                on = new.device
                per_row = new[plan.where[..., 0].to(on), :, plan.where[..., 1].to(on)]  # (A, S, H, D)
                kept[i][r.to(on), :, p.to(on)] = per_row[a.to(on), j.to(on)]

    @property
    def _width(self) -> int:
        """Cached positions per row (0 when no row starts after its first position)."""
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    # -- the calls -------------------------------------------------------------------------------
    def select(self, rows: torch.Tensor) -> None:
        """Plan the calls for these rows only (increasing indices), from the prefill's keys/values
        and layer outputs: a row left out costs nothing from the next call on."""
        self.plan = self.base = self.prefix = None  # free the last plan's copies before building
        self.plan = _Plan.build(rows, self.start, self.end - self.start + 1, self._width, self.site.dtype)
        self.base = self.site[self.plan.slot_row, self.plan.positions]  # (B, S, d)
        self.prefix = _PrefixKeysValues({i: _per_bin(k, self.plan.bins) for i, k in self.keys.items()},
                                        {i: _per_bin(v, self.plan.bins) for i, v in self.values.items()})

    @property
    def rows(self) -> torch.Tensor:
        """The rows each call runs, in the order of its outputs."""
        return self.plan.rows

    @property
    def tokens(self) -> int:
        """Positions each call runs through each layer (padding slots included)."""
        return self.plan.positions.numel()

    def _position_embeddings(self, hidden: torch.Tensor, positions: torch.Tensor):
        """The rotary embedding of these positions: one for every layer, or (Gemma 3) one per layer type."""
        if self.rotary is None:
            return None
        if self.layer_types is None:
            return self.rotary(hidden, position_ids=positions)
        return {t: self.rotary(hidden, positions, t) for t in set(self.layer_types)}

    def __call__(self, offset: torch.Tensor, read: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """Outputs (A, S, d) of the layers in ``read`` for the planned rows, with ``offset`` (A, d)
        added to layer ``first``'s output at each row's start; suffix slot ``j`` is position ``start + j``."""
        entry = self.plan.where[:, 0]  # the slot of each row's start, where its offset goes
        hidden = self.base.index_put((entry[:, 0], entry[:, 1]), offset.to(self.base.dtype), accumulate=True)
        out = {self.first: hidden} if self.first in read else {}
        out.update(self._run(hidden, self.plan, self.prefix, range(self.first + 1, max(read) + 1), read))
        where = self.plan.where
        return {i: h[where[..., 0], where[..., 1]] for i, h in out.items()}

    def _run(self, hidden: torch.Tensor, plan: _Plan, cache: _PrefixKeysValues, layers: range,
             read: tuple[int, ...] = ()) -> dict[int, torch.Tensor]:
        """The planned slots through ``layers``: the outputs of those in ``read``."""
        kwargs = {"attention_mask": plan.mask, "position_ids": plan.positions, self.cache_argument: cache}
        embeddings = self._position_embeddings(hidden, plan.positions)
        out = {}
        with _grouped_heads_in_sdpa(hidden.device):
            for i in layers:
                if embeddings is not None:
                    kwargs["position_embeddings"] = embeddings[self.layer_types[i]] if self.layer_types else embeddings
                hidden = first_tensor(self.layers[i](hidden, **kwargs))
                if i in read:
                    out[i] = hidden
        return out

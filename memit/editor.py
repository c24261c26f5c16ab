"""The MEMIT family's engine: values z at the last edited layer, keys per layer, and a closed-form
update spread over the layers. NSE, MEMIT_seq, MEMIT_prune, MEMIT_rect and AlphaEdit are this
editor with a different solve (:meth:`MEMITEditor._solve`), a column choice
(:meth:`MEMITEditor._columns`), an application step (:meth:`MEMITEditor._apply`), rounds
(:meth:`MEMITEditor._update`) or a post-step (:meth:`MEMITEditor._after_batch`).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from memit.hparams import MEMITHyperParams
from util.architectures import get_module, model_device
from util.closed_form import float64_device, solve_update
from util.context_templates import generate_context_templates
from util.editor import EditReport, Editor
from util.keys import KeyReader, compute_keys_and_outputs
from util.discovery import post_mlp_norm_of
from util.hparams import HyperParamsError
from util.post_norm import rms_gain, through_post_norm
from util.prefix_cache import split_layer_name
from util.rewrite_weights import add_to_columns, weight_d_by_f
from util.second_moment import cached_second_moments
from util.tokens import fact_token_index
from util.value_cache import weights_tag
from util.values import Anchoring, compute_values

log = logging.getLogger(__name__)


@dataclass
class MEMITReport(EditReport):
    value_loss_mean: float = math.nan
    # Mean ||z - h|| at the last edited layer before the update and after each round.
    residual_mean_per_round: list[float] = field(default_factory=list)
    # Norm anchoring (None when it is off): requests whose value vector was dropped (|v*| > 2m, so
    # z = h0 and the batch asks no change for them: edits the run counts but never made), the ones
    # rescaled to the anchor's norm, and the dropped ones' case ids (to find them in the case files).
    anchor_dropped: int | None = None
    anchor_rescaled: int | None = None
    anchor_dropped_case_ids: list[Any] | None = None

    def log_line(self) -> str:
        res = " -> ".join(f"{r:.2f}" for r in self.residual_mean_per_round)
        line = f"{super().log_line()}; value loss {self.value_loss_mean:.3f}; residual {res}"
        if self.anchor_dropped is not None:
            line += f"; norm anchor: {self.anchor_dropped} dropped, {self.anchor_rescaled} rescaled"
        return line


class MEMITEditor(Editor):
    """MEMIT: ``Delta = R K^T (lambda C0 + K K^T)^-1`` per layer, one pass, no state across batches."""

    hparams_class: ClassVar[type] = MEMITHyperParams
    report_class = MEMITReport
    has_values = True
    rewinds_values: ClassVar[bool] = False  # NSE: z from the original weights
    accumulates_keys: ClassVar[bool] = False  # MEMIT_seq, NSE, AlphaEdit: Cp += K K^T after each batch

    def __init__(self, model, tok, hparams, *, anchor_pool: Sequence[dict] | None = None, **options) -> None:
        """``anchor_pool``: the requests norm anchoring measures its anchor on, read by the experiment
        (experiments.anchor_pool); needed only when the value spec anchors and no anchor was saved."""
        super().__init__(model, tok, hparams, **options)
        self.anchor_pool = anchor_pool
        self.value_spec = self.hparams.value_spec(model)
        # Per layer, on its weight's device in mom2_dtype, the one matrix its solve is regularised
        # by: lambda * C0, plus Cp (every edited batch's K K^T) when keys accumulate. One matrix
        # rather than C0 and Cp halves that memory, and a resumed run needs no C0.
        self.regulariser: dict[int, torch.Tensor] | None = None
        self._final_keys: dict[str, torch.Tensor] | None = None  # keys read after the batch's last change
        self.anchor: float | None = None  # norm_anchor: the anchor norm, measured before the first edit
        self.post_norm_gains = self._post_norm_gains()

    def _post_norm_gains(self) -> dict[int, torch.Tensor]:
        """Per edited layer, the gain of the RMS norm its MLP output passes through before the residual
        stream (Gemma 2/3, OLMo 2; util.post_norm); empty where the MLP output is added unchanged."""
        hp = self.hparams
        template = post_mlp_norm_of(self.model, hp.layer_module_tmp, hp.rewrite_module_tmp)
        if template is None:
            return {}
        if self.value_spec.anchoring is not None:  # NAS's v* = v0 + delta assumes the MLP output is added as it is
            raise HyperParamsError(f"norm_anchor cannot be used on this {self.model.config.model_type} model: its MLP "
                                   f"output passes through {template!r} before the residual stream")
        width = self.weights[hp.layers[0]].shape[0]
        try:
            return {l: rms_gain(get_module(self.model, template.format(l)), width, self.weights[l].device)
                    for l in hp.layers}
        except ValueError as err:
            raise HyperParamsError(f"this {self.model.config.model_type} model passes the MLP output through "
                                   f"{template!r} before the residual stream: {err}") from None

    def _edited_weights(self) -> dict[int, torch.Tensor]:
        self.modules = {l: get_module(self.model, self.hparams.rewrite_module(l)) for l in self.hparams.layers}
        return {l: weight_d_by_f(m) for l, m in self.modules.items()}  # (d, f) views

    # -- statistics and templates -------------------------------------------------------------
    @classmethod
    def make_context_templates(cls, model, tok, hparams, seed: int) -> list[list[str]]:
        return generate_context_templates(model, tok, seed=seed, counted=hparams.context_template_length)

    def _prepare(self) -> None:
        if self.context_templates is None:
            self.context_templates = self.make_context_templates(self.model, self.tok, self.hparams, self.seed)
        if self._needs_second_moments():
            self._use_second_moments(self._second_moments())

    def _second_moments(self) -> dict[int, torch.Tensor]:
        """C0 per edited layer, from the statistics cache (computed on the unedited weights)."""
        hp = self.hparams
        names = [hp.rewrite_module(l) for l in hp.layers]
        mom2 = cached_second_moments(self.model, self.tok, names, hp.stats_spec(), self.stats_dir, self.progress)
        return {l: mom2[hp.rewrite_module(l)] for l in hp.layers}

    def _needs_second_moments(self) -> bool:
        return self.regulariser is None

    def _use_second_moments(self, c0: dict[int, torch.Tensor]) -> None:
        lam = self.hparams.mom2_update_weight
        self.regulariser = {l: (lam * c0[l]).to(self.weights[l].device) for l in self.hparams.layers}

    def _is_prepared(self) -> bool:
        return self.context_templates is not None and not self._needs_second_moments()

    def _check_requests(self, requests: list[dict]) -> None:
        for r in requests:  # a subject the tokenizer cannot find in its prompt fails before any edit
            fact_token_index(self.tok, r["prompt"], r["subject"], self.hparams.fact_token)

    # -- one batch ------------------------------------------------------------------------------
    def _edit(self, requests: list[dict], report: MEMITReport) -> None:
        with self.timer("values"):
            z, losses = self._values(requests, report)
        report.value_loss_mean = float(sum(losses) / len(losses)) if losses else math.nan
        self._update(requests, z, report)
        self._after_batch(requests)

    def _values(self, requests: list[dict], report: MEMITReport) -> tuple[torch.Tensor, list[float]]:
        """z per request (from the value cache where present) and the losses of fresh ones, as the value
        spec's anchoring leaves them (the report counts what it did)."""
        tag = "" if self.rewinds_values else weights_tag(self.weights.values())
        cached = [self.value_cache.get(r, tag) if self.value_cache else None for r in requests]
        todo = [i for i, z in enumerate(cached) if z is None]
        losses: list[float] = []
        if todo:
            fresh = self._compute_values([requests[i] for i in todo])
            losses = fresh.losses
            for i, z in zip(todo, fresh.z):
                cached[i] = z
                if self.value_cache:
                    self.value_cache.put(requests[i], z, tag)
        device = model_device(self.model)
        z = torch.stack([z.to(device) for z in cached])
        return self._anchored(requests, z, report), losses

    def _anchored(self, requests: list[dict], z: torch.Tensor, report: MEMITReport) -> torch.Tensor:
        """``z`` after the value spec's anchoring (none: as it is, and the report's counts stay None).
        The anchor is measured once, on the model before any edit (the first batch's values come
        before its update), and kept in the editor state."""
        anchoring = self.value_spec.anchoring
        if anchoring is None:
            return z
        with self.rewound() if self.rewinds_values else contextlib.nullcontext():
            if self.anchor is None:
                self.anchor = self._measure_anchor(anchoring)
            anchored, dropped = anchoring.apply(self.model, self.tok, requests, z, self.anchor, self.hparams.fact_token)
        report.anchor_dropped = int(dropped.sum())
        report.anchor_rescaled = len(requests) - report.anchor_dropped
        report.anchor_dropped_case_ids = [r.get("case_id") for r, d in zip(requests, dropped.tolist()) if d]
        return anchored

    def _measure_anchor(self, anchoring: Anchoring) -> float:
        if self.num_batches:
            raise RuntimeError("norm_anchor: no anchor in an editor that has already edited; "
                               "load the state it was saved with")
        if self.anchor_pool is None:
            raise RuntimeError("norm_anchor: the editor was given no anchor_pool to measure the anchor on "
                               "(experiments.anchor_pool.editor_inputs(hparams) reads it for an experiment)")
        return anchoring.measure(self.model, self.tok, self.anchor_pool, self.value_spec)

    def _compute_values(self, requests: list[dict]):
        run = lambda: compute_values(self.model, self.tok, requests, self.value_spec,  # noqa: E731
                                     self.context_templates, self.values_batch_size, progress=self.progress)
        if not self.rewinds_values:
            return run()
        with self.rewound():  # NSE's weights rewinding: z always from the original weights
            return run()

    def _keys_and_z_layer_output(self, requests, layers: Sequence[int], templates):
        hp = self.hparams
        z_name = hp.layer_module(hp.layers[-1])
        return compute_keys_and_outputs(
            self.model, self.tok, requests, templates, [hp.rewrite_module(l) for l in layers], hp.fact_token,
            output_module=z_name, stop_after=z_name, batch_size=self.batch_size,
        )

    def _key_reader(self, requests: list[dict]) -> KeyReader:
        """Keys and z-layer outputs of these requests over the batch's layer-by-layer updates: a
        read after layer l changed runs only the layers from l up (util.layer_replay)."""
        hp = self.hparams
        layers = split_layer_name(hp.layer_module(hp.layers[0]))
        return KeyReader(self.model, self.tok, requests, self.context_templates, hp.fact_token, self.batch_size,
                         layers_path=layers[0] if layers else None, resumable=hp.layers)

    def _residual_norms(self, requests: list[dict], z: torch.Tensor, last: bool = False) -> torch.Tensor:
        """``||z_i - h_i||`` at the last edited layer, plain prompt, current weights.  (n,)

        ``last``: the weights will not change again in this batch, so when keys accumulate the
        same pass (every template, every edited layer) also reads the keys ``Cp`` takes.
        """
        with self.timer("residual reads"):
            if last and self.accumulates_keys:
                self._final_keys, h = self._keys_and_z_layer_output(requests, self.hparams.layers,
                                                                    self.context_templates)
            else:
                _, h = self._keys_and_z_layer_output(requests, [], [["{}"]])
        return (z.to(h.device) - h).norm(dim=1)

    def _update(self, requests: list[dict], z: torch.Tensor, report: MEMITReport) -> None:
        """MEMIT: one pass over the layers with every request."""
        report.residual_mean_per_round.append(float(self._residual_norms(requests, z).mean()))
        self._update_layers(requests, z)
        report.residual_mean_per_round.append(float(self._residual_norms(requests, z, last=True).mean()))

    def _update_layers(self, requests: list[dict], z: torch.Tensor) -> dict[int, int]:
        """Each layer takes its share of what is left of ``z - h``; returns columns changed per layer."""
        hp = self.hparams
        m = len(hp.layers)
        z_name = hp.layer_module(hp.layers[-1])
        reader, changed, start_at = self._key_reader(requests), {}, None
        for j, layer in enumerate(hp.layers):
            with self.timer("key reads"):
                keys, h = reader.read([hp.rewrite_module(layer)], z_name, stop_after=z_name, start_at=start_at)
            k = keys[hp.rewrite_module(layer)].T  # (f, n)
            with self.timer("solves"):
                columns = self._columns(layer, k)
                # (d, n): what is left, spread over the remaining layers; solved where the layer lives
                residual = self._as_output_change(layer, k, ((z.to(h.device) - h).T / (m - j)).to(k.device))
                delta = self._solve(layer, k[columns], residual, columns)  # (d, |columns|)
                self._apply(layer, columns, delta)
            changed[layer] = int(columns.numel())
            start_at = layer  # nothing below this layer changed since the read
        return changed

    def _as_output_change(self, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The change of W_out's output at ``keys`` (f, n) that changes the residual stream by
        ``residual`` (d, n): itself, or mapped through the norm after the MLP where the block has one."""
        gain = self.post_norm_gains.get(layer)
        if gain is None:
            return residual
        weight = self.weights[layer]
        outputs = weight.to(torch.float64) @ keys.to(weight.device, torch.float64)  # (d, n): W_out k
        return through_post_norm(outputs, residual.to(outputs.device), gain).to(residual.device, residual.dtype)

    def _columns(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """The key dimensions (columns of W_out) this update may change: all of them."""
        return torch.arange(keys.shape[0], device=keys.device)

    def _solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return solve_update(residual, keys, self._restricted(self.regulariser[layer], columns))

    def _apply(self, layer: int, columns: torch.Tensor, delta: torch.Tensor) -> None:
        self._final_keys = None  # keys read before this change are stale
        add_to_columns(self.modules[layer], columns, delta)

    @staticmethod
    def _restricted(matrix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """``matrix[S, S]`` in float64 on a device that has float64."""
        if columns.numel() != matrix.shape[0]:
            idx = columns.to(matrix.device)
            matrix = matrix.index_select(0, idx).index_select(1, idx)
        return matrix.to(float64_device(matrix.device), torch.float64)

    def _after_batch(self, requests: list[dict]) -> None:
        if self.accumulates_keys:
            with self.timer("key accumulation"):
                self._accumulate_keys(requests)

    def _accumulate_keys(self, requests: list[dict]) -> None:
        """``Cp += K K^T`` with keys of the whole batch under the final weights (read by the last
        residual pass when it could, otherwise now)."""
        keys = self._final_keys
        if keys is None:
            keys, _ = self._keys_and_z_layer_output(requests, self.hparams.layers, self.context_templates)
        self._final_keys = None
        for layer in self.hparams.layers:
            reg = self.regulariser[layer]
            k = keys[self.hparams.rewrite_module(layer)].to(reg.device, reg.dtype)  # (n, f)
            reg.addmm_(k.T, k)

    # -- persistence ----------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        anchor = {} if self.anchor is None else {"anchor": self.anchor}
        if not self.accumulates_keys or self.regulariser is None:
            return anchor  # lambda * C0 alone comes back from the statistics cache
        return {**anchor, "regulariser": {l: r.detach().to("cpu", copy=True) for l, r in self.regulariser.items()}}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.anchor = state.get("anchor", self.anchor)
        if "regulariser" in state:
            self.regulariser = {l: state["regulariser"][l].to(self.weights[l].device, copy=True)
                                for l in self.hparams.layers}


class MEMITSeqEditor(MEMITEditor):
    """MEMIT_seq: MEMIT whose regulariser also protects every earlier batch's keys (``+ Cp``)."""

    accumulates_keys = True

"""ROME: one rank-one update of one MLP output projection per request, requests one after another."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from rome.hparams import ROMEHyperParams
from rome.rank_one import key_direction, rank_one_update
from util.architectures import get_module, model_device
from util.context_templates import generate_length_templates
from util.editor import EditReport, Editor
from util.keys import compute_keys_and_outputs
from util.rewrite_weights import weight_d_by_f
from util.second_moment import cached_second_moments
from util.tokens import fact_token_index
from util.value_cache import weights_tag
from util.values import compute_values


@dataclass
class ROMEReport(EditReport):
    value_loss_mean: float = math.nan
    update_norms: list[float] = field(default_factory=list)  # Frobenius norm of each rank-one Delta

    def log_line(self) -> str:
        norms = ", ".join(f"{x:.2f}" for x in self.update_norms)
        return f"{super().log_line()}; value loss {self.value_loss_mean:.3f}; |Delta| {norms}"


class ROMEEditor(Editor):
    """For each request: ``v*`` optimised at the MLP output, ``k*`` the mean key over ROME's context
    templates, ``u = C0^-1 k*`` (``k*`` when ``mom2_adjustment`` is false), then
    ``W += (v* - W k) u^T / (u^T k)`` with ``k`` the key at the request's own prompt, as the original
    (``write_key="template_mean"``: ``k = k*``). No state across batches."""

    hparams_class: ClassVar[type] = ROMEHyperParams
    report_class = ROMEReport
    has_values = True

    def __init__(self, model, tok, hparams, **options) -> None:
        super().__init__(model, tok, hparams, **options)
        self.value_spec = self.hparams.value_spec(model)
        self.layer = self.hparams.layers[0]
        self.cov: torch.Tensor | None = None

    def _edited_weights(self) -> dict[int, torch.Tensor]:
        self.module = get_module(self.model, self.hparams.rewrite_module(self.hparams.layers[0]))
        return {self.hparams.layers[0]: weight_d_by_f(self.module)}

    @classmethod
    def make_context_templates(cls, model, tok, hparams, seed: int) -> list[list[str]]:
        return generate_length_templates(model, tok, hparams.context_template_length_params, seed=seed)

    def _prepare(self) -> None:
        hp = self.hparams
        if self.context_templates is None:
            self.context_templates = self.make_context_templates(self.model, self.tok, hp, self.seed)
        if self.cov is None and hp.mom2_adjustment:
            name = hp.rewrite_module(self.layer)
            self.cov = cached_second_moments(self.model, self.tok, [name], hp.stats_spec(), self.stats_dir,
                                             self.progress)[name]

    def _is_prepared(self) -> bool:
        return self.context_templates is not None and (self.cov is not None or not self.hparams.mom2_adjustment)

    def _check_requests(self, requests: list[dict]) -> None:
        for r in requests:
            fact_token_index(self.tok, r["prompt"], r["subject"], self.hparams.fact_token)

    def _edit(self, requests: list[dict], report: ROMEReport) -> None:
        losses = []
        for request in requests:  # one after the other: each sees the previous requests' updates
            with self.timer("values"):
                v_star, loss = self._value(request)
            if loss is not None:
                losses.append(loss)
            with self.timer("solves"):  # k* read, u = C0^-1 k*, the rank-one write
                report.update_norms.append(self._write(request, v_star))
        report.value_loss_mean = sum(losses) / len(losses) if losses else math.nan

    def _value(self, request: dict) -> tuple[torch.Tensor, float | None]:
        tag = weights_tag(self.weights.values())
        if self.value_cache and (z := self.value_cache.get(request, tag)) is not None:
            return z.to(model_device(self.model)), None
        result = compute_values(self.model, self.tok, [request], self.value_spec, self.context_templates,
                                progress=self.progress)
        if self.value_cache:
            self.value_cache.put(request, result.z[0], tag)
        return result.z[0], result.losses[0]

    @torch.no_grad()
    def _write(self, request: dict, v_star: torch.Tensor) -> float:
        w = self.weights[self.layer]
        k_star = self._key(request, self.context_templates).to(w.device)  # (f,): u's input
        k_write = k_star if self.hparams.write_key == "template_mean" else self._key(request, [["{}"]]).to(w.device)
        current_out = self.module(k_write.to(w.dtype)[None])[0]  # W k (+ bias), (d,)
        u = key_direction(k_star, self.cov)
        delta = rank_one_update(current_out, v_star, k_write, u)
        w.add_(delta.to(device=w.device, dtype=w.dtype))
        return float(delta.norm())

    def _key(self, request: dict, templates: list[list[str]]) -> torch.Tensor:
        """The rewrite module's input at the subject token, one mean over ``templates``.  (f,)"""
        name = self.hparams.rewrite_module(self.layer)
        keys, _ = compute_keys_and_outputs(self.model, self.tok, [request], templates, [name], self.hparams.fact_token,
                                           stop_after=name, batch_size=self.batch_size, two_stage=False)
        return keys[name][0]

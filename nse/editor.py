"""The NSE editor: weights rewinding, neuron selection, iterative multi-layer closed-form updates.

One object holds everything that must survive between batches (original weights of the edited
modules, accumulated keys ``Cp``, counters, context templates) and can be saved and loaded.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from nse.closed_form import float64_device, solve_update
from nse.hparams import NSEHyperParams
from nse.neuron_selection import select_neurons
from util.architectures import get_module, model_device
from util.atomic_files import save_torch_atomic
from util.context_templates import generate_context_templates
from util.keys import compute_keys_and_outputs
from util.requests import normalize_request
from util.rewrite_weights import add_to_columns, weight_d_by_f
from util.second_moment import cached_second_moments
from util.value_cache import ValueCache
from util.values import compute_values

log = logging.getLogger(__name__)
STATE_VERSION = 1


@dataclass
class BatchReport:
    """What one call of :meth:`NSEEditor.edit` did, for logs and run files."""

    batch_index: int
    n_requests: int
    total_edits: int
    value_loss_mean: float
    residual_mean_per_round: list[float] = field(default_factory=list)
    active_per_round: list[int] = field(default_factory=list)
    neurons_per_round: list[dict[int, int]] = field(default_factory=list)
    n_above_upper_bound: int = 0
    seconds: float = 0.0

    def log_line(self) -> str:
        res = " -> ".join(f"{r:.2f}" for r in self.residual_mean_per_round)
        return (
            f"batch {self.batch_index}: {self.n_requests} edits ({self.total_edits} total) in {self.seconds:.1f}s; "
            f"value loss {self.value_loss_mean:.3f}; residual {res}; edited per round {self.active_per_round}; "
            f"above upper_bound (never edited) {self.n_above_upper_bound}"
        )


class NSEEditor:
    """Applies NSE edits batch after batch to ``model`` in place."""

    def __init__(
        self,
        model: nn.Module,
        tok,
        hparams: NSEHyperParams,
        *,
        stats_dir: str | Path | None = None,
        context_templates: list[list[str]] | None = None,
        seed: int = 0,
        batch_size: int = 64,
        values_batch_size: int | None = None,
        value_cache: ValueCache | None = None,
        originals_on_cpu: bool = False,
        progress: bool = True,
    ) -> None:
        self.model, self.tok = model, tok
        self.hparams = hparams.resolved_for(model)
        self.stats_dir, self.seed, self.progress = stats_dir, seed, progress
        self.batch_size, self.values_batch_size = batch_size, values_batch_size
        self.context_templates = context_templates
        self.value_cache = value_cache
        self.modules = {l: get_module(model, self.hparams.rewrite_module(l)) for l in self.hparams.layers}
        # --conserve_memory keeps the rewinding copy in host memory instead of beside the model.
        keep_on = torch.device("cpu") if originals_on_cpu else None
        self.original = {l: weight_d_by_f(m).detach().to(keep_on, copy=True) for l, m in self.modules.items()}
        stats_dtype = getattr(torch, self.hparams.mom2_dtype)
        device = model_device(model)
        self.cp = {l: torch.zeros(w.shape[1], w.shape[1], dtype=stats_dtype, device=device) for l, w in self.original.items()}
        self.cov: dict[int, torch.Tensor] | None = None
        self.num_batches = 0
        self.num_edits = 0
        self.num_above_upper_bound = 0
        self.last_report: BatchReport | None = None

    # -- weights rewinding -------------------------------------------------------------------
    @contextmanager
    def rewound(self) -> Iterator[None]:
        """The edited modules hold their original weights inside the block (NSE's first idea)."""
        edited = {l: weight_d_by_f(m).detach().clone() for l, m in self.modules.items()}
        try:
            with torch.no_grad():
                for l, m in self.modules.items():
                    weight_d_by_f(m).copy_(self.original[l])
            yield
        finally:
            with torch.no_grad():
                for l, m in self.modules.items():
                    weight_d_by_f(m).copy_(edited[l])

    def prepare(self) -> None:
        """Generate context templates and load/collect C0 now (otherwise the first edit does it),
        so a missing corpus fails before hours of other work."""
        with self.rewound():
            self._prepare()

    def _prepare(self) -> None:
        """Templates and C0 describe the unedited model: call inside :meth:`rewound`."""
        if self.context_templates is None:
            self.context_templates = generate_context_templates(self.model, self.tok, seed=self.seed)
        if self.cov is None and self.hparams.mom2_adjustment:
            hp = self.hparams
            names = [hp.rewrite_module(l) for l in hp.layers]
            mom2 = cached_second_moments(
                self.model, self.tok, names, hp.mom2_dataset, hp.mom2_n_samples, hp.mom2_max_length,
                getattr(torch, hp.mom2_dtype), self.stats_dir, self.progress,
            )
            self.cov = {l: mom2[hp.rewrite_module(l)] for l in hp.layers}

    # -- one batch ---------------------------------------------------------------------------
    def edit(self, requests: Sequence[dict]) -> BatchReport:
        """Apply one batch of edit requests to the model in place."""
        start = time.time()
        # Targets get their leading space before values are computed (the original did it after).
        requests = [normalize_request(r) for r in requests]
        if not requests:
            raise ValueError("edit() needs at least one request")
        with self.rewound():
            self._prepare()
            z, losses = self._values(requests)
        report = BatchReport(self.num_batches, len(requests), self.num_edits + len(requests),
                             float(sum(losses) / len(losses)) if losses else float("nan"))
        self._update_rounds(requests, z, report)
        self._accumulate_keys(requests)
        self.num_batches += 1
        self.num_edits += len(requests)
        self.num_above_upper_bound += report.n_above_upper_bound
        report.seconds = time.time() - start
        self.last_report = report
        log.info(report.log_line())
        return report

    def _values(self, requests: list[dict]) -> tuple[torch.Tensor, list[float]]:
        """z per request (from the value cache where present) and the losses of fresh ones."""
        cached = [self.value_cache.get(r) if self.value_cache else None for r in requests]
        todo = [i for i, z in enumerate(cached) if z is None]
        losses: list[float] = []
        if todo:
            fresh = compute_values(self.model, self.tok, [requests[i] for i in todo], self.hparams,
                                   self.context_templates, self.values_batch_size, progress=self.progress)
            losses = fresh.losses
            for i, z in zip(todo, fresh.z):
                cached[i] = z
                if self.value_cache:
                    self.value_cache.put(requests[i], z)
        device = model_device(self.model)
        return torch.stack([z.to(device) for z in cached]), losses

    def _keys_and_z_layer_output(self, requests, layers: Sequence[int], templates):
        hp = self.hparams
        z_name = hp.layer_module(hp.layers[-1])
        return compute_keys_and_outputs(
            self.model, self.tok, requests, templates, [hp.rewrite_module(l) for l in layers], hp.fact_token,
            output_module=z_name, stop_after=z_name, batch_size=self.batch_size,
        )

    def _update_rounds(self, requests: list[dict], z: torch.Tensor, report: BatchReport) -> None:
        hp = self.hparams
        m = len(hp.layers)
        for round_ in range(1, hp.max_iterations + 1):
            _, h = self._keys_and_z_layer_output(requests, [], [["{}"]])
            residual = (z - h).norm(dim=1)
            active = (residual > hp.alpha) & (residual < hp.upper_bound)
            report.residual_mean_per_round.append(float(residual.mean()))
            if round_ == 1:
                report.n_above_upper_bound = int((residual >= hp.upper_bound).sum())
            if not bool(active.any()) or round_ == hp.max_iterations:
                break
            idx = active.nonzero().flatten().tolist()
            report.active_per_round.append(len(idx))
            report.neurons_per_round.append(self._update_layers([requests[i] for i in idx], z[idx], m))

    def _update_layers(self, requests: list[dict], z: torch.Tensor, m: int) -> dict[int, int]:
        hp = self.hparams
        n_neurons = {}
        for j, layer in enumerate(hp.layers):
            keys, h = self._keys_and_z_layer_output(requests, [layer], self.context_templates)
            k = keys[hp.rewrite_module(layer)].T  # (f, n)
            chosen = select_neurons(k, hp.neuron_threshold)
            residual = (z - h).T / (m - j)  # (d, n): spread what is left over the remaining layers
            delta = solve_update(residual, k[chosen], self._regulariser(layer, chosen))
            add_to_columns(self.modules[layer], chosen, delta)
            n_neurons[layer] = int(chosen.numel())
        return n_neurons

    def _regulariser(self, layer: int, chosen: torch.Tensor) -> torch.Tensor:
        """``lambda * C0[S, S] + Cp[S, S]`` in float64 (on the CPU for devices without float64)."""
        device = float64_device(self.cp[layer].device)

        def restrict(mat: torch.Tensor) -> torch.Tensor:
            if chosen.numel() != mat.shape[0]:
                idx = chosen.to(mat.device)
                mat = mat.index_select(0, idx).index_select(1, idx)
            return mat.to(device, torch.float64)

        reg = restrict(self.cp[layer])
        if self.cov is not None:
            reg = reg + self.hparams.mom2_update_weight * restrict(self.cov[layer])
        return reg

    def _accumulate_keys(self, requests: list[dict]) -> None:
        """``Cp += K K^T`` with keys of the whole batch under the final weights."""
        keys, _ = self._keys_and_z_layer_output(requests, self.hparams.layers, self.context_templates)
        for layer in self.hparams.layers:
            k = keys[self.hparams.rewrite_module(layer)].to(self.cp[layer].dtype)  # (n, f)
            self.cp[layer].addmm_(k.T, k)

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "hparams": self.hparams.to_dict(),
            "context_templates": self.context_templates,
            "num_batches": self.num_batches,
            "num_edits": self.num_edits,
            "num_above_upper_bound": self.num_above_upper_bound,
            # copies: on CPU .cpu() would alias the live tensors, which later edits change in place
            "original": {l: w.detach().to("cpu", copy=True) for l, w in self.original.items()},
            "current": {l: weight_d_by_f(m).detach().to("cpu", copy=True) for l, m in self.modules.items()},
            "cp": {l: c.detach().to("cpu", copy=True) for l, c in self.cp.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore counters, ``Cp``, original weights and the edited weights into the model."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"editor state version {state.get('version')} is not {STATE_VERSION}")
        if sorted(state["cp"]) != sorted(self.modules):
            raise ValueError(f"saved state edits layers {sorted(state['cp'])}, these hparams edit {sorted(self.modules)}")
        with torch.no_grad():
            for l, m in self.modules.items():
                w = weight_d_by_f(m)
                saved = state["current"][l]
                if tuple(saved.shape) != tuple(w.shape) or saved.dtype != w.dtype:
                    raise ValueError(f"saved weights of layer {l} are {tuple(saved.shape)} {saved.dtype}, the model's are "
                                     f"{tuple(w.shape)} {w.dtype}: resume with the same model and --dtype")
                w.copy_(state["current"][l])
                self.original[l] = state["original"][l].to(device=self.original[l].device, dtype=w.dtype)
                self.cp[l] = state["cp"][l].to(self.cp[l].device, copy=True)
        self.context_templates = state["context_templates"]
        self.num_batches = state["num_batches"]
        self.num_edits = state["num_edits"]
        self.num_above_upper_bound = state.get("num_above_upper_bound", 0)

    def save(self, path: str | Path) -> None:
        """Atomic: a crash while saving leaves the previous file intact."""
        save_torch_atomic(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))


def apply_nse_to_model(
    model: nn.Module,
    tok,
    requests: Sequence[dict],
    hparams: NSEHyperParams,
    editor: NSEEditor | None = None,
    **editor_kwargs,
) -> tuple[nn.Module, NSEEditor]:
    """Functional form: edit ``model`` in place with one batch; pass the returned editor back
    in for the next batch so it keeps rewinding to the original weights and protecting keys."""
    if editor is None:
        editor = NSEEditor(model, tok, hparams, **editor_kwargs)
    elif editor.model is not model:
        raise ValueError("the editor passed in was built for another model")
    editor.edit(requests)
    return model, editor

"""Optional on-disk cache of target values z per case (``--use_cache``)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from util.atomic_files import atomic_path


class ValueCache:
    """One file per case under a folder that names everything z depends on.

    The original keyed z by model, dataset, layer and clamp only; the folder here also hashes the
    other value hyperparameters and the context templates, so a changed setting cannot reuse
    stale values.
    """

    def __init__(self, root: str | Path, model_id: str, ds_name: str, hparams, templates: list[list[str]]) -> None:
        settings = {k: getattr(hparams, k) for k in (
            "layers", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay", "kl_factor",
            "clamp_norm_factor", "fact_token")}
        digest = hashlib.sha1(json.dumps([settings, templates], sort_keys=True).encode()).hexdigest()[:10]
        safe_model = model_id.replace("/", "_")
        tag = f"layer{hparams.layers[-1]}_clamp{hparams.clamp_norm_factor}_{digest}"
        self.folder = Path(root) / safe_model / ds_name / tag

    def _path(self, case_id) -> Path:
        return self.folder / f"case_{case_id}.pt"

    def get(self, case_id) -> torch.Tensor | None:
        path = self._path(case_id)
        return torch.load(path, weights_only=True) if path.is_file() else None

    def put(self, case_id, z: torch.Tensor) -> None:
        with atomic_path(self._path(case_id)) as tmp:
            torch.save(z.detach().cpu(), tmp)

"""Optional on-disk cache of target values z per case (``--use_cache``)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from util.atomic_files import save_torch_atomic


class ValueCache:
    """One file per case under a folder that names everything z depends on.

    The original keyed z by model, dataset, layer and clamp only; the folder here also hashes the
    other value hyperparameters and the context templates, so a changed setting cannot reuse
    stale values.
    """

    def __init__(self, root: str | Path, model_id: str, ds_name: str, hparams, templates: list[list[str]]) -> None:
        """``model_id`` should identify the weights and dtype (name + fingerprint), not just a name."""
        settings = {k: getattr(hparams, k) for k in (
            "layers", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay", "kl_factor",
            "clamp_norm_factor", "fact_token")}
        digest = hashlib.sha1(json.dumps([settings, templates], sort_keys=True).encode()).hexdigest()[:10]
        safe_model = model_id.replace("/", "_")
        tag = f"layer{hparams.layers[-1]}_clamp{hparams.clamp_norm_factor}_{digest}"
        self.folder = Path(root) / safe_model / ds_name / tag

    def _path(self, request: dict) -> Path:
        # The request's text is in the name too: two dataset files may reuse a case id.
        text = "\x1f".join((request["prompt"], request["subject"], request["target_new"]["str"]))
        return self.folder / f"case_{request['case_id']}_{hashlib.sha1(text.encode()).hexdigest()[:8]}.pt"

    def get(self, request: dict) -> torch.Tensor | None:
        path = self._path(request)
        return torch.load(path, weights_only=True) if path.is_file() else None

    def put(self, request: dict, z: torch.Tensor) -> None:
        save_torch_atomic(z.detach().cpu(), self._path(request))

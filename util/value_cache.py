"""Optional on-disk cache of target values z per case (``--use_cache``)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from util.atomic_files import save_torch_atomic
from util.values import DEFAULT_STOP, ValueSpec


class ValueCache:
    """One file per case under a folder that names everything z depends on.

    The original keyed z by model, dataset, layer and clamp only; the folder here also hashes the
    other value hyperparameters and the context templates, so a changed setting cannot reuse
    stale values.
    """

    def __init__(self, root: str | Path, model_id: str, ds_name: str, spec: ValueSpec,
                 templates: list[list[str]]) -> None:
        """``model_id`` should identify the weights and dtype (name + fingerprint), not just a name;
        ``spec`` says where and how z is optimised (it names the site, so ROME's values at the MLP
        output never mix with the MEMIT family's at the block output)."""
        # z is kept before anchoring (applied after the cache), so the anchoring is no part of the key.
        settings = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("stop", "anchoring")}
        if spec.stop != DEFAULT_STOP:  # the default rule is left out: caches written before it was a field stay valid
            settings["stop"] = repr(spec.stop)
        digest = hashlib.sha1(json.dumps([settings, templates], sort_keys=True).encode()).hexdigest()[:10]
        safe_model = model_id.replace("/", "_")
        tag = f"{spec.site}_clamp{spec.clamp_norm_factor}_{digest}"
        self.folder = Path(root) / safe_model / ds_name / tag

    def _path(self, request: dict, weights_tag: str) -> Path:
        # The request's text is in the name too: two dataset files may reuse a case id.
        text = "\x1f".join((request["prompt"], request["subject"], request["target_new"]["str"], weights_tag))
        return self.folder / f"case_{request['case_id']}_{hashlib.sha1(text.encode()).hexdigest()[:8]}.pt"

    def get(self, request: dict, weights_tag: str = "") -> torch.Tensor | None:
        """``weights_tag`` identifies the edited weights z was computed under; "" means the
        original weights (NSE rewinds, so its values never depend on earlier edits)."""
        path = self._path(request, weights_tag)
        return torch.load(path, weights_only=True) if path.is_file() else None

    def put(self, request: dict, z: torch.Tensor, weights_tag: str = "") -> None:
        save_torch_atomic(z.detach().cpu(), self._path(request, weights_tag))


def weights_tag(tensors) -> str:
    """A short digest of edited weights, for values computed under them (a strided sample of each
    tensor: any dense update changes it, and hashing gigabytes per batch would cost seconds)."""
    h = hashlib.sha1()
    for w in tensors:
        flat = w.detach().flatten()
        step = max(1, flat.numel() // 65536)
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]

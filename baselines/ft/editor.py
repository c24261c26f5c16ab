"""FT: constrained fine-tuning of the listed weights on the batch's rewrite prompts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from baselines.ft.hparams import FTHyperParams
from util.architectures import model_device
from util.editor import EditReport, Editor
from util.requests import fill_prompt
from util.tokens import encode, encode_target, pad, pad_token_id
from util.values import frozen

STOP_LOSS = 1e-2  # the original stops when an epoch's mean loss falls below this


@dataclass
class FTReport(EditReport):
    final_loss: float = math.nan
    epochs: int = 0

    def log_line(self) -> str:
        return f"{super().log_line()}; loss {self.final_loss:.4f} after {self.epochs} epoch(s)"


class FTEditor(Editor):
    """Adam on the weights ``rewrite_module_tmp`` names, ``num_steps`` epochs or until the loss is
    below 1e-2; after each step every entry is clamped to ``theta0 +- norm_constraint``.

    As the original by default: every target token is read off the last prompt position
    (``ft_loss``), ``theta0`` is the weights when the batch began (``ft_theta0``), and
    ``wd_power_law`` is not applied (``apply_wd_power_law``).
    """

    hparams_class: ClassVar[type] = FTHyperParams
    report_class = FTReport

    def _edited_weights(self) -> dict[str, torch.Tensor]:
        params: dict[str, nn.Parameter] = {}
        for layer in self.hparams.layers:
            params.update(self.hparams.parameters_of(self.model, layer))
        return params

    def _weight_decay(self, n_requests: int) -> float:
        if self.hparams.wd_power_law is not None and self.hparams.apply_wd_power_law:
            a, b = self.hparams.wd_power_law
            return n_requests ** a * math.exp(b)
        return float(self.hparams.weight_decay or 0.0)

    def _edit(self, requests: list[dict], report: FTReport) -> None:
        hp = self.hparams
        # Adam steps float32 master copies: in float16 its eps (1e-8) underflows and steps blow up.
        masters = {k: w.detach().float().clone() for k, w in self.weights.items()}
        self._theta0 = ({k: m.clone() for k, m in masters.items()} if hp.ft_theta0 == "batch_start"
                        else {k: w.detach().float() for k, w in self.original.items()})
        optimizer = torch.optim.Adam(masters.values(), lr=hp.lr, weight_decay=self._weight_decay(len(requests)))
        chunks = [requests[s : s + hp.batch_size] for s in range(0, len(requests), hp.batch_size)]
        with frozen(self.model), self.timer("training"):
            for w in self.weights.values():
                w.requires_grad_(True)
            for epoch in range(hp.num_steps):
                total = 0.0
                for chunk in chunks:
                    loss = self._loss(chunk)
                    value = float(loss.detach())
                    total += value * len(chunk)
                    if value >= STOP_LOSS:
                        loss.backward()
                        self._step(optimizer, masters)
                report.final_loss, report.epochs = total / len(requests), epoch + 1
                if report.final_loss < STOP_LOSS:
                    break

    @torch.no_grad()
    def _step(self, optimizer: torch.optim.Optimizer, masters: dict[str, torch.Tensor]) -> None:
        """One Adam step on the masters, the constraint, and the result written into the model."""
        for k, w in self.weights.items():
            masters[k].grad = w.grad.float()
            w.grad = None
        optimizer.step()
        eps = self.hparams.norm_constraint
        for k, w in self.weights.items():
            if not isinstance(eps, bool):  # false: unconstrained
                theta0 = self._theta0[k].to(w.device)
                masters[k].copy_(torch.clamp(masters[k], min=theta0 - eps, max=theta0 + eps))
            w.copy_(masters[k].to(w.dtype))

    def _loss(self, requests: list[dict]) -> torch.Tensor:
        if self.hparams.ft_loss == "last_position":
            return self._loss_at_last_position(requests)
        return self._loss_teacher_forced(requests)

    def _loss_at_last_position(self, requests: list[dict]) -> torch.Tensor:
        """The original's loss: the log-probabilities at the last prompt position of every token of
        ``" " + target`` (the tokenizer's specials included, so Llama's BOS counts), masked where the
        token is unk (no unk token: nothing masked, so target padding counts too); per request the
        masked mean, then the mean over requests."""
        pad_id = pad_token_id(self.tok)
        prompts = [encode(self.tok, fill_prompt(r["prompt"], r["subject"])) for r in requests]
        texts = [r["target_new"]["str"] for r in requests]
        targets = [list(self.tok(t if t.startswith(" ") else " " + t)["input_ids"]) for t in texts]
        device = model_device(self.model)
        ids, mask = pad(prompts, pad_id, side="right")
        target_ids, _ = pad(targets, pad_id, side="right")
        target_ids = target_ids.to(device)
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        last = mask.sum(1).to(device) - 1
        log_probs = torch.log_softmax(logits[torch.arange(len(requests), device=device), last].float(), dim=-1)
        unk = self.tok.unk_token_id
        keep = (target_ids != unk).float() if unk is not None else torch.ones_like(target_ids, dtype=torch.float)
        picked = log_probs.gather(1, target_ids)
        return -((picked * keep).sum(1) / keep.sum(1)).mean()

    def _loss_teacher_forced(self, requests: list[dict]) -> torch.Tensor:
        """Mean over requests of the mean NLL of the target tokens, teacher forced."""
        seqs, rows, positions, targets, weights = [], [], [], [], []
        for i, r in enumerate(requests):
            prompt = encode(self.tok, fill_prompt(r["prompt"], r["subject"]))
            target = encode_target(self.tok, r["target_new"]["str"])
            for j, token in enumerate(target):  # token j is predicted at the position before it
                rows.append(i)
                positions.append(len(prompt) - 1 + j)
                targets.append(token)
                weights.append(1.0 / (len(target) * len(requests)))
            seqs.append(prompt + target[:-1])
        device = model_device(self.model)
        ids, mask = pad(seqs, pad_token_id(self.tok), side="right")
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        t = lambda x: torch.tensor(x, device=device)  # noqa: E731
        log_probs = torch.log_softmax(logits[t(rows), t(positions)].float(), dim=-1)
        picked = log_probs.gather(1, t(targets)[:, None]).squeeze(1)
        return -(picked * t(weights)).sum()

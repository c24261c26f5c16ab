"""Target values z: optimise a residual-stream offset per request, all requests together.

Each request i gets its own delta_i (added at its fact tokens in every one of its prompts);
losses are per request and summed, so one forward/backward per step serves the whole batch
with the same math as one request at a time. Each step runs only what delta changes: the positions
from the fact token on, through the layers above the site (:mod:`util.prefix_cache`).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from util.architectures import get_module, model_device
from util.context_templates import apply_template, flat_templates
from util.hooks import capture, edit_output, forward_until
from util.prefix_cache import SuffixForward, layer_of, split_layer_name, unsupported_reason
from util.requests import fill_prompt
from util.tokens import encode, encode_target, fact_token_index, pad, pad_token_id

log = logging.getLogger(__name__)
# Where delta is added: the block output (residual stream) for the MEMIT family, the MLP output
# of the edited layer for ROME.
SITES = ("block_output", "mlp_output")
# How a rewriting prompt's row is built: "ids" (the prompt's ids, then the target's ids but the last) or
# "text" (the original's: the prompt's text with the decoded target but its last token appended, then
# tokenized whole, targets scored at the row's last positions). They differ only where that text does
# not tokenize back into the same ids, and there the original scores target ids at shifted tokens.
PROMPT_BUILDS = ("ids", "text")


@dataclass(frozen=True)
class StepState:
    """What a stopping rule sees after each step's forward pass (n requests, T target tokens)."""

    loss: torch.Tensor       # (n,) NLL + KL + weight decay, per request
    nll: torch.Tensor        # (n,) the target's weighted NLL, per request
    target_lp: torch.Tensor  # (T,) log-probability of each target token
    target_request: torch.Tensor  # (T,) the request each target token belongs to
    # (T,) whether each target token is the most probable token at its position (None: not computed)
    target_is_argmax: torch.Tensor | None = None
    # (T,) whether each target token is read in a context-prefixed prompt (not the plain "{}" one)
    target_in_context: torch.Tensor | None = None


@dataclass(frozen=True)
class LossBelow:
    """The original's rule: a request stops once its total loss is below ``threshold``."""

    threshold: float = 5e-2

    def __call__(self, state: StepState) -> torch.Tensor:
        return state.loss < self.threshold


# A stopping rule: (StepState) -> (n,) bool, True where a request has reached its target; a stopped
# request takes no more steps. A method with its own rule (ENCORE's, say) puts it in its ValueSpec. A
# rule that counts across steps has ``start(n)``, called once per optimisation, returning the rule for it.
StopRule = Callable[[StepState], torch.Tensor]
DEFAULT_STOP = LossBelow()


@dataclass(frozen=True)
class ValueSpec:
    """Where z is optimised and with which settings (module paths resolved for one model)."""

    site: str               # module whose output gets delta at the fact token
    loss_layer: str         # block whose output, through ln_f and the LM head, scores the target
    final_layer: str        # the model's last block: its logits give the KL term, as in the original
    ln_f: str
    lm_head: str            # a Linear, or an Embedding whose weight is tied (GPT-2's transformer.wte)
    fact_token: str
    num_steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    # Each step runs only the positions from the fact token on, through the layers above the site
    # (util.prefix_cache); False, or a model it does not support, runs the whole model every step.
    suffix_only: bool = True
    stop: StopRule = DEFAULT_STOP
    prompt_build: str = "ids"  # see PROMPT_BUILDS


@dataclass
class ValueResult:
    z: torch.Tensor        # (n, d) float32: h0 + delta
    h0: torch.Tensor       # (n, d) float32: layer output at the plain prompt's fact token
    losses: list[float]    # final loss per request
    updates: list[int]     # Adam steps taken per request


@dataclass
class _Batch:
    ids: torch.Tensor         # (R, T)
    mask: torch.Tensor        # (R, T)
    fact_pos: torch.Tensor    # (R,) fact token of every row
    row_req: torch.Tensor     # (R,) request of every row
    plain_rows: torch.Tensor  # (n,) the "{}" row of each request
    kl_rows: torch.Tensor     # (n,) the "{subject} is a" row of each request
    tgt_row: torch.Tensor     # (N,) one entry per target token to score
    tgt_pos: torch.Tensor
    tgt_id: torch.Tensor
    tgt_req: torch.Tensor
    tgt_weight: torch.Tensor  # 1 / (n target tokens * n rewriting prompts of the request)
    tgt_context: torch.Tensor  # (N,) bool: read in a context-prefixed prompt (not the plain one)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients (only delta is optimised); restores the flags afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def compute_values(
    model: nn.Module,
    tok,
    requests: Sequence[dict],
    spec: ValueSpec,
    templates: list[list[str]],
    batch_size: int | None = None,
    progress: bool = False,
) -> ValueResult:
    """z for every request, optimised ``batch_size`` requests at a time (None: all at once)."""
    step = batch_size or len(requests)
    parts, start = [], 0
    while start < len(requests):
        try:
            parts.append(_optimise(model, tok, requests[start : start + step], spec, templates, progress))
            start += step
        except torch.OutOfMemoryError:
            if step == 1:
                raise
            step = max(1, step // 2)  # same z either way: requests are optimised independently
            log.warning("out of memory optimising values; retrying %d requests at a time", step)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return ValueResult(
        z=torch.cat([p.z for p in parts]),
        h0=torch.cat([p.h0 for p in parts]),
        losses=[x for p in parts for x in p.losses],
        updates=[x for p in parts for x in p.updates],
    )


def _rewriting_row(tok, filled_prompt: str, target: list[int], prompt_build: str) -> list[int]:
    """One rewriting prompt's ids: the prompt and every target token but the last."""
    if prompt_build == "ids":
        return encode(tok, filled_prompt) + target[:-1]  # no re-tokenisation of text
    if prompt_build == "text":
        return encode(tok, filled_prompt + tok.decode(target[:-1]))
    raise ValueError(f"prompt_build must be one of {PROMPT_BUILDS}, got {prompt_build!r}")


def _build_batch(tok, requests: Sequence[dict], templates: list[list[str]], fact_token: str,
                 prompt_build: str = "ids") -> _Batch:
    seqs, fact, row_req, plain_rows, kl_rows = [], [], [], [], []
    tgt_row, tgt_pos, tgt_id, tgt_req, tgt_w, tgt_ctx = [], [], [], [], [], []
    contexts = flat_templates(templates)
    for i, r in enumerate(requests):
        target = encode_target(tok, r["target_new"]["str"])
        prompts = [apply_template(c, r["prompt"]) for c in contexts]
        for j, prompt in enumerate(prompts):
            row = _rewriting_row(tok, fill_prompt(prompt, r["subject"]), target, prompt_build)
            if j == 0:
                plain_rows.append(len(seqs))
            for k, token in enumerate(target):  # the last len(target) logits predict the target's tokens
                tgt_row.append(len(seqs))
                tgt_pos.append(len(row) - len(target) + k)
                tgt_id.append(token)
                tgt_req.append(i)
                tgt_w.append(1.0 / (len(target) * len(prompts)))
                tgt_ctx.append(j > 0)
            fact.append(fact_token_index(tok, prompt, r["subject"], fact_token))
            row_req.append(i)
            seqs.append(row)
        kl_prompt = "{} is a"
        kl_rows.append(len(seqs))
        fact.append(fact_token_index(tok, kl_prompt, r["subject"], fact_token))
        row_req.append(i)
        seqs.append(encode(tok, fill_prompt(kl_prompt, r["subject"])))
    ids, mask = pad(seqs, pad_token_id(tok), side="right")  # right padding keeps fact positions
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return _Batch(ids, mask, t(fact), t(row_req), t(plain_rows), t(kl_rows), t(tgt_row), t(tgt_pos), t(tgt_id),
                  t(tgt_req), torch.tensor(tgt_w, dtype=torch.float32), torch.tensor(tgt_ctx, dtype=torch.bool))


class _FullForward:
    """The whole model on every row and position each step, delta added by a hook (the reference path)."""

    def __init__(self, model: nn.Module, spec: ValueSpec, b: _Batch) -> None:
        self.model, self.spec, self.b = model, spec, b
        self.rows = torch.arange(b.ids.shape[0], device=b.ids.device)
        self._h0: list[torch.Tensor] = []

    @property
    def h0(self) -> torch.Tensor:
        return self._h0[0]

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, spec = self.b, self.spec

        def add_delta(out: torch.Tensor) -> torch.Tensor:  # out: (R, T, d)
            if not self._h0:
                self._h0.append(out[b.plain_rows, b.fact_pos[b.plain_rows]].detach().float())
            return out.index_put((self.rows, b.fact_pos), delta[b.row_req].to(out.dtype), accumulate=True)

        read = [spec.loss_layer, spec.final_layer]
        with edit_output(self.model, spec.site, add_delta), capture(self.model, output_of=read, detach=False) as seen:
            forward_until(self.model, spec.final_layer, input_ids=b.ids, attention_mask=b.mask)
        return (seen.outputs[spec.loss_layer][b.tgt_row, b.tgt_pos],
                seen.outputs[spec.final_layer][b.kl_rows, b.fact_pos[b.kl_rows]])


class _SuffixOnlyForward:
    """Same outputs as :class:`_FullForward`, computing only what delta changes (util.prefix_cache)."""

    def __init__(self, model: nn.Module, spec: ValueSpec, b: _Batch, layers_path: str) -> None:
        self.b = b
        first = layer_of(spec.site, layers_path)
        self.loss_index = split_layer_name(spec.loss_layer)[1]
        self.final_index = split_layer_name(spec.final_layer)[1]
        # The last position any loss reads in each row (its fact token for the KL rows).
        end = b.fact_pos.clone().scatter_reduce(0, b.tgt_row, b.tgt_pos, reduce="amax")
        self.run = SuffixForward(model, layers_path, first, self.final_index, b.ids, b.mask, b.fact_pos, end,
                                 capture_output_of=(spec.site,))
        self.h0 = self.run.captured[spec.site][b.plain_rows, b.fact_pos[b.plain_rows]].float()

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.b
        # delta at the site's output reaches the site layer's output unchanged: every block in the
        # module table adds its MLP output to the residual stream last (tests pin this for ROME).
        out = self.run(delta[b.row_req], read=(self.loss_index, self.final_index))
        return (out[self.loss_index][b.tgt_row, b.tgt_pos - b.fact_pos[b.tgt_row]],
                out[self.final_index][b.kl_rows, 0])


def _value_forward(model: nn.Module, spec: ValueSpec, b: _Batch) -> _FullForward | _SuffixOnlyForward:
    """The suffix-only forward where it applies (and is asked for), else the full one."""
    reason = _suffix_only_unsupported(model, spec, b)
    if reason is None:
        return _SuffixOnlyForward(model, spec, b, split_layer_name(spec.final_layer)[0])
    if spec.suffix_only:
        log.info("value optimisation runs the whole model each step: %s", reason)
    return _FullForward(model, spec, b)


def _suffix_only_unsupported(model: nn.Module, spec: ValueSpec, b: _Batch) -> str | None:
    if not spec.suffix_only:
        return "suffix_only=False"
    final = split_layer_name(spec.final_layer)
    loss = split_layer_name(spec.loss_layer)
    if final is None or loss is None or loss[0] != final[0]:
        return f"cannot read layer indices from {spec.loss_layer!r} and {spec.final_layer!r}"
    first = layer_of(spec.site, final[0])
    if first is None or not first <= loss[1] <= final[1]:
        return f"site {spec.site!r} is not in or below the loss layer of {final[0]}"
    if bool((b.tgt_pos < b.fact_pos[b.tgt_row]).any()):
        return "a target is scored before its fact token"
    return unsupported_reason(model, final[0], b.ids.shape[1])


def _optimise(model: nn.Module, tok, requests: Sequence[dict], spec: ValueSpec, templates: list[list[str]],
              progress: bool = False) -> ValueResult:
    device = model_device(model)
    b = _build_batch(tok, requests, templates, spec.fact_token, spec.prompt_build)
    b = _Batch(**{k: v.to(device) for k, v in vars(b).items()})
    n = len(requests)
    ln_f, lm_head = get_module(model, spec.ln_f), get_module(model, spec.lm_head)
    d = model.config.get_text_config().hidden_size
    delta = torch.zeros(n, d, dtype=torch.float32, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=spec.lr)

    def log_probs(hidden: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, vocab)
        # The head's weight, not the module: GPT-2 files name the tied embedding transformer.wte.
        logits = F.linear(ln_f(hidden), lm_head.weight, getattr(lm_head, "bias", None))
        return torch.log_softmax(logits.float(), dim=-1)

    stopped = torch.zeros(n, dtype=torch.bool, device=device)
    losses = torch.zeros(n, device=device)
    updates = torch.zeros(n, dtype=torch.long)
    kl_init = None
    stop = spec.stop.start(n) if hasattr(spec.stop, "start") else spec.stop
    bar = tqdm(total=spec.num_steps, desc=f"values ({n} requests)", unit="step", disable=not progress,
               leave=False)
    with frozen(model), bar:
        forward = _value_forward(model, spec, b)
        for it in range(spec.num_steps):
            with torch.set_grad_enabled(it < spec.num_steps - 1):  # the last evaluation takes no step
                target_hidden, kl_hidden = forward(delta)
            h0 = forward.h0
            target_all = log_probs(target_hidden)
            target_lp = target_all.gather(1, b.tgt_id[:, None]).squeeze(1)
            nll = torch.zeros(n, device=device).index_add(0, b.tgt_req, -target_lp * b.tgt_weight)
            # The KL term reads the model's final logits (as the original does), whatever v_loss_layer is.
            kl_lp = log_probs(kl_hidden)
            if kl_init is None:
                kl_init = kl_lp.detach()
            kl = spec.kl_factor * (kl_lp.exp() * (kl_lp - kl_init)).sum(-1)  # KL(P_delta || P_0)
            decay = spec.weight_decay * delta.norm(dim=1) / h0.norm(dim=1) ** 2
            loss = nll + kl + decay
            losses = torch.where(stopped, losses, loss.detach())
            state = StepState(loss.detach(), nll.detach(), target_lp.detach(), b.tgt_req,
                              target_all.detach().argmax(dim=1) == b.tgt_id, b.tgt_context)
            stopped = stopped | stop(state)
            bar.set_postfix(loss=f"{float(losses.mean()):.3f}", active=int((~stopped).sum()))
            bar.update()
            if it == spec.num_steps - 1 or bool(stopped.all()):
                break
            optimizer.zero_grad()
            (loss * (~stopped)).sum().backward()
            before = delta.detach().clone()
            optimizer.step()
            with torch.no_grad():
                # Adam's momentum moves a zero-gradient parameter: mask the step, not the gradient.
                delta[stopped] = before[stopped]
                max_norm = spec.clamp_norm_factor * h0.norm(dim=1)
                scale = (max_norm / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale[:, None])
            updates += (~stopped).long().cpu()
    h0 = forward.h0
    return ValueResult(z=(h0 + delta.detach()), h0=h0, losses=losses.tolist(), updates=updates.tolist())

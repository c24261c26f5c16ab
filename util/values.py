"""Target values z: optimise a residual-stream offset per request, all requests together.

Each request i gets its own delta_i (added at its fact tokens in every one of its prompts);
losses are per request and summed, so one forward/backward per step serves the whole batch
with the same math as one request at a time. Each step runs only what delta changes: the positions
from the fact token on, through the layers above the site (:mod:`util.prefix_cache`), for the
requests that have not stopped (a stopped request's rows leave the batch, as in the original's one
optimisation per request).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

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
    """What a stopping rule sees after each step's forward pass (n requests, T target tokens).

    A stopped request's rows no longer run: its entries keep the values of the forward pass at
    which it stopped (a rule's answer for it no longer matters)."""

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


class Anchoring(Protocol):
    """What becomes of the optimised values before an update, against a number measured once on the
    unedited model (NAS norm anchoring: util.norm_anchor.NormAnchoring). A value spec holds one or none."""

    def measure(self, model: nn.Module, tok, pool: Sequence[dict], spec: ValueSpec) -> float:
        """The anchor, from value optimisations of ``pool``'s requests on ``model`` as it is."""

    def apply(self, model: nn.Module, tok, requests: Sequence[dict], z: torch.Tensor, anchor: float,
              fact_token: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The anchored targets (n, d), and which rows asked for no change at all (bool, (n,))."""


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
    # The block passes the MLP output through a norm before the residual stream (Gemma 2/3, OLMo 2):
    # an offset at an MLP output is then not one at the layer output, so such a site runs the whole model.
    post_mlp_norm: bool = False
    # Applied to z after its optimisation, by the editor (not by compute_values: the value cache keeps z
    # before it); None: z as optimised. A method's hparams put it here, as a stopping rule goes in ``stop``.
    anchoring: Anchoring | None = None


@dataclass
class ValueResult:
    z: torch.Tensor        # (n, d) float32: h0 + delta
    h0: torch.Tensor       # (n, d) float32: layer output at the plain prompt's fact token
    # Per request, the loss of its last forward pass: for a request that stopped, the loss that
    # stopped it (z's own); for one that took every step, the loss before its last step (no
    # forward pass runs after the last step: it would only log).
    losses: list[float]
    updates: list[int]     # Adam steps taken per request


@dataclass
class ValueBatch:
    """Every request's rows of one value optimisation (rewriting prompts per template, then its KL
    prompt), padded on the right, and where each target token is scored."""

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
    # (R,) the row's context template (the KL rows: one more); rows of one template begin alike
    row_template: torch.Tensor

    def every_request(self) -> torch.Tensor:
        return torch.ones(len(self.plain_rows), dtype=torch.bool, device=self.plain_rows.device)

    def targets_of(self, active: torch.Tensor) -> torch.Tensor:
        """Indices of the target tokens of the requests where ``active`` (n,) holds."""
        return active[self.tgt_req].nonzero()[:, 0]


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


def build_batch(tok, requests: Sequence[dict], templates: list[list[str]], fact_token: str,
                 prompt_build: str = "ids") -> ValueBatch:
    """The rows of ``requests`` under ``templates`` (``[["{}"]]``: the plain prompts alone, as norm
    anchoring reads them)."""
    seqs, fact, row_req, plain_rows, kl_rows, row_template = [], [], [], [], [], []
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
            row_template.append(j)
            seqs.append(row)
        kl_prompt = "{} is a"
        kl_rows.append(len(seqs))
        fact.append(fact_token_index(tok, kl_prompt, r["subject"], fact_token))
        row_req.append(i)
        row_template.append(len(prompts))
        seqs.append(encode(tok, fill_prompt(kl_prompt, r["subject"])))
    ids, mask = pad(seqs, pad_token_id(tok), side="right")  # right padding keeps fact positions
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return ValueBatch(ids, mask, t(fact), t(row_req), t(plain_rows), t(kl_rows), t(tgt_row), t(tgt_pos), t(tgt_id),
                  t(tgt_req), torch.tensor(tgt_w, dtype=torch.float32), torch.tensor(tgt_ctx, dtype=torch.bool),
                  t(row_template))


class _FullForward:
    """The whole model on every row and position each step, delta added by a hook (the reference
    path: stopped requests' rows run too, and are not read)."""

    def __init__(self, model: nn.Module, spec: ValueSpec, b: ValueBatch) -> None:
        self.model, self.spec, self.b = model, spec, b
        self.rows = torch.arange(b.ids.shape[0], device=b.ids.device)
        self._h0: list[torch.Tensor] = []

    @property
    def h0(self) -> torch.Tensor:
        return self._h0[0]

    def __call__(self, delta: torch.Tensor, active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states of the active requests' target tokens, in target order; of their KL rows);
        ``active`` (n,) bool, None: every request."""
        b, spec = self.b, self.spec
        active = b.every_request() if active is None else active

        def add_delta(out: torch.Tensor) -> torch.Tensor:  # out: (R, T, d)
            if not self._h0:
                self._h0.append(out[b.plain_rows, b.fact_pos[b.plain_rows]].detach().float())
            return out.index_put((self.rows, b.fact_pos), delta[b.row_req].to(out.dtype), accumulate=True)

        read = [spec.loss_layer, spec.final_layer]
        with edit_output(self.model, spec.site, add_delta), capture(self.model, output_of=read, detach=False) as seen:
            forward_until(self.model, spec.final_layer, input_ids=b.ids, attention_mask=b.mask)
        targets, kl_rows = b.targets_of(active), b.kl_rows[active]
        return (seen.outputs[spec.loss_layer][b.tgt_row[targets], b.tgt_pos[targets]],
                seen.outputs[spec.final_layer][kl_rows, b.fact_pos[kl_rows]])


class _SuffixOnlyForward:
    """Same outputs as :class:`_FullForward`, computing only what delta changes (util.prefix_cache),
    and only for the active requests' rows."""

    def __init__(self, model: nn.Module, spec: ValueSpec, b: ValueBatch, layers_path: str) -> None:
        self.b = b
        first = layer_of(spec.site, layers_path)
        self.loss_index = split_layer_name(spec.loss_layer)[1]
        self.final_index = split_layer_name(spec.final_layer)[1]
        # The last position any loss reads in each row (its fact token for the KL rows).
        end = b.fact_pos.clone().scatter_reduce(0, b.tgt_row, b.tgt_pos, reduce="amax")
        self.run = SuffixForward(model, layers_path, first, self.final_index, b.ids, b.mask, b.fact_pos, end,
                                 capture_output_of=(spec.site,), groups=b.row_template)
        self.h0 = self.run.at_start[spec.site][b.plain_rows].float()

    def __call__(self, delta: torch.Tensor, active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.b
        active = b.every_request() if active is None else active
        rows = active[b.row_req].nonzero()[:, 0]
        if not torch.equal(rows, self.run.rows):  # a request stopped: its rows leave the batch
            self.run.select(rows)
        # delta at the site's output reaches the site layer's output unchanged: every block in the
        # module table adds its MLP output to the residual stream last (tests pin this for ROME).
        out = self.run(delta[b.row_req[rows]], read=(self.loss_index, self.final_index))
        slot = torch.full_like(b.row_req, -1)
        slot[rows] = torch.arange(len(rows), device=rows.device)  # row -> its place among the rows run
        targets, kl_rows = b.targets_of(active), b.kl_rows[active]
        tgt_row = b.tgt_row[targets]
        return (out[self.loss_index][slot[tgt_row], b.tgt_pos[targets] - b.fact_pos[tgt_row]],
                out[self.final_index][slot[kl_rows], 0])


def _value_forward(model: nn.Module, spec: ValueSpec, b: ValueBatch) -> _FullForward | _SuffixOnlyForward:
    """The suffix-only forward where it applies (and is asked for), else the full one."""
    reason = _suffix_only_unsupported(model, spec, b)
    if reason is None:
        return _SuffixOnlyForward(model, spec, b, split_layer_name(spec.final_layer)[0])
    if spec.suffix_only:
        log.info("value optimisation runs the whole model each step: %s", reason)
    return _FullForward(model, spec, b)


def _suffix_only_unsupported(model: nn.Module, spec: ValueSpec, b: ValueBatch) -> str | None:
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
    if spec.site != f"{final[0]}.{first}" and spec.post_mlp_norm:  # the suffix path adds delta at the layer output
        return f"the output of {spec.site!r} passes through a norm before the residual stream"
    return unsupported_reason(model, final[0], b.ids.shape[1])


class _Objective:
    """The loss of the active requests at delta (NLL of the targets at the loss layer, KL at the
    final layer, weight decay), and the :class:`StepState` a stopping rule reads."""

    def __init__(self, model: nn.Module, spec: ValueSpec, b: ValueBatch,
                 forward: _FullForward | _SuffixOnlyForward) -> None:
        self.spec, self.b, self.forward = spec, b, forward
        self.ln_f, self.lm_head = get_module(model, spec.ln_f), get_module(model, spec.lm_head)
        # Gemma 2 caps its logits (cap * tanh(logits / cap)) after the head: the model's own logits.
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self.kl_init: torch.Tensor | None = None
        n, t = len(b.plain_rows), len(b.tgt_req)
        zeros = lambda k, dtype=torch.float32: torch.zeros(k, dtype=dtype, device=b.tgt_req.device)  # noqa: E731
        self.state = StepState(zeros(n), zeros(n), zeros(t), b.tgt_req, zeros(t, torch.bool), b.tgt_context)

    @property
    def h0(self) -> torch.Tensor:
        return self.forward.h0

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, vocab)
        # The head's weight, not the module: GPT-2 files name the tied embedding transformer.wte.
        logits = F.linear(self.ln_f(hidden), self.lm_head.weight, getattr(self.lm_head, "bias", None))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return torch.log_softmax(logits.float(), dim=-1)

    def __call__(self, delta: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, StepState]:
        """(A,) the loss of each active request (``active``: (n,) bool), in request order."""
        b, spec = self.b, self.spec
        target_hidden, kl_hidden = self.forward(delta, active)
        requests, targets = active.nonzero()[:, 0], b.targets_of(active)
        place = active.long().cumsum(0) - 1  # a request's index among the active ones
        target_all = self.log_probs(target_hidden)  # only the active requests' tokens meet the head
        target_lp = target_all.gather(1, b.tgt_id[targets, None]).squeeze(1)
        nll = torch.zeros(len(requests), device=delta.device).index_add(
            0, place[b.tgt_req[targets]], -target_lp * b.tgt_weight[targets])
        # The KL term reads the model's final logits (as the original does), whatever v_loss_layer is.
        kl_lp = self.log_probs(kl_hidden)
        if self.kl_init is None:  # the first pass: every request active, delta = 0
            self.kl_init = kl_lp.detach()
        kl = spec.kl_factor * (kl_lp.exp() * (kl_lp - self.kl_init[requests])).sum(-1)  # KL(P_delta || P_0)
        h0 = self.h0[requests]
        loss = nll + kl + spec.weight_decay * delta[requests].norm(dim=1) / h0.norm(dim=1) ** 2
        is_argmax = target_all.detach().argmax(dim=1) == b.tgt_id[targets]
        self.state = self._updated_state(requests, targets, loss, nll, target_lp, is_argmax)
        return loss, self.state

    def _updated_state(self, requests: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, nll: torch.Tensor,
                       target_lp: torch.Tensor, is_argmax: torch.Tensor) -> StepState:
        """The last state with this pass's values where they were computed (new tensors: a rule
        may keep a state)."""
        last = self.state
        return StepState(last.loss.index_put((requests,), loss.detach()), last.nll.index_put((requests,), nll.detach()),
                         last.target_lp.index_put((targets,), target_lp.detach()), last.target_request,
                         last.target_is_argmax.index_put((targets,), is_argmax), last.target_in_context)


def _optimise(model: nn.Module, tok, requests: Sequence[dict], spec: ValueSpec, templates: list[list[str]],
              progress: bool = False) -> ValueResult:
    device = model_device(model)
    b = build_batch(tok, requests, templates, spec.fact_token, spec.prompt_build)
    b = ValueBatch(**{k: v.to(device) for k, v in vars(b).items()})
    n = len(requests)
    d = model.config.get_text_config().hidden_size
    delta = torch.zeros(n, d, dtype=torch.float32, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=spec.lr)
    stopped = torch.zeros(n, dtype=torch.bool, device=device)
    updates = torch.zeros(n, dtype=torch.long)
    stop = spec.stop.start(n) if hasattr(spec.stop, "start") else spec.stop
    # Every forward pass but a lone one is followed by a step: the original's pass after the last
    # step only logged its loss (z, the steps and the stops are the same without it).
    passes = max(spec.num_steps - 1, 1)
    bar = tqdm(total=passes, desc=f"values ({n} requests)", unit="step", disable=not progress, leave=False)
    with frozen(model), bar:
        objective = _Objective(model, spec, b, _value_forward(model, spec, b))
        for _ in range(passes):
            active = ~stopped
            with torch.set_grad_enabled(spec.num_steps > 1):
                loss, state = objective(delta, active)
            stopped = stopped | stop(state)
            bar.set_postfix(loss=f"{float(state.loss.mean()):.3f}", active=int((~stopped).sum()))
            bar.update()
            if spec.num_steps == 1 or bool(stopped.all()):
                break
            optimizer.zero_grad()
            (loss * ~stopped[active]).sum().backward()  # a request that stops now takes no step
            before = delta.detach().clone()
            optimizer.step()
            with torch.no_grad():
                # Adam's momentum moves a zero-gradient parameter: mask the step, not the gradient.
                delta[stopped] = before[stopped]
                max_norm = spec.clamp_norm_factor * objective.h0.norm(dim=1)
                scale = (max_norm / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale[:, None])
            updates += (~stopped).long().cpu()
    h0 = objective.h0
    return ValueResult(z=(h0 + delta.detach()), h0=h0, losses=objective.state.loss.tolist(),
                       updates=updates.tolist())

"""Batched value optimisation equals one request at a time; z does what it should."""
import dataclasses

import pytest
import torch
from helpers import REQUESTS, stories_hparams

from util.fact_reads import read_at_fact_tokens
from util.hooks import edit_output
from util.requests import normalize_request
from util.tokens import encode, encode_target, fact_token_index
from util.values import compute_values

TEMPLATES = [["{}"], ["Once upon a time. {}", "The sun was up. {}"]]


@dataclasses.dataclass(frozen=True)
class StopAfter:
    """A stopping rule that stops request i at its pass ``steps[i]`` (0-based), after as many
    Adam steps (None: never), whatever its loss."""

    steps: tuple

    def start(self, n: int):
        passes = []

        def stop(state):
            passes.append(state)
            return torch.tensor([s is not None and len(passes) > s for s in self.steps])
        return stop


def _setup(tiny_llama, **overrides):
    model, tok = tiny_llama
    hp = stories_hparams(**overrides).resolved_for(model)
    return model, tok, hp, [normalize_request(r) for r in REQUESTS]


def test_batched_equals_one_at_a_time(tiny_llama):
    # Different requests stop at different steps, which exercises the masked Adam step.
    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=12)
    batched = compute_values(model, tok, reqs, hp.value_spec(model), TEMPLATES)
    singles = [compute_values(model, tok, [r], hp.value_spec(model), TEMPLATES) for r in reqs]
    single_z = torch.cat([s.z for s in singles])
    # Tolerance: padding changes matmul shapes, so float32 round-off differs per step.
    assert torch.allclose(batched.z, single_z, rtol=1e-4, atol=1e-4), (batched.z - single_z).abs().max()
    assert batched.updates == [s.updates[0] for s in singles]
    assert batched.losses == pytest.approx([s.losses[0] for s in singles], rel=1e-3, abs=1e-5)
    assert 0 < min(batched.updates) and max(batched.updates) <= hp.v_num_grad_steps - 1


def test_chunked_equals_all_at_once(tiny_llama):
    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=6)
    whole = compute_values(model, tok, reqs, hp.value_spec(model), TEMPLATES)
    chunked = compute_values(model, tok, reqs, hp.value_spec(model), TEMPLATES, batch_size=3)
    assert torch.allclose(whole.z, chunked.z, rtol=1e-4, atol=1e-4)


def test_one_evaluation_means_no_update(tiny_llama):
    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=1)
    out = compute_values(model, tok, reqs, hp.value_spec(model), TEMPLATES)
    z_layer = hp.layer_module(hp.layers[-1])
    _, outs = read_at_fact_tokens(model, tok, [r["prompt"] for r in reqs], [r["subject"] for r in reqs],
                                  hp.fact_token, output_of=[z_layer])
    assert out.updates == [0] * len(reqs)
    assert torch.allclose(out.z, outs[z_layer], atol=1e-5)  # z = h0 when delta never moved


def test_delta_respects_clamp(tiny_llama):
    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=15, clamp_norm_factor=0.05)
    out = compute_values(model, tok, reqs, hp.value_spec(model), TEMPLATES)
    ratio = (out.z - out.h0).norm(dim=1) / out.h0.norm(dim=1)
    assert (ratio <= 0.05 + 1e-5).all() and (ratio > 0.04).all()


def test_z_raises_probability_of_new_target(tiny_llama):
    model, tok, hp, reqs = _setup(tiny_llama)
    out = compute_values(model, tok, reqs[:1], hp.value_spec(model), TEMPLATES)
    r = reqs[0]
    prompt_ids = encode(tok, r["prompt"].replace("{}", r["subject"]))
    target = encode_target(tok, r["target_new"]["str"])
    fact = fact_token_index(tok, r["prompt"], r["subject"])
    ids = torch.tensor([prompt_ids + target])

    def nll():
        lp = torch.log_softmax(model(ids).logits[0], -1)
        return -sum(lp[len(prompt_ids) - 1 + i, t] for i, t in enumerate(target)).item() / len(target)

    before = nll()

    def put_z(h):
        h = h.clone()
        h[0, fact] = out.z[0]
        return h

    with edit_output(model, hp.layer_module(hp.layers[-1]), put_z):
        after = nll()
    assert after < before - 0.5, (before, after)


def test_rows_are_built_from_token_ids(tiny_llama):
    """The original decoded target ids and re-tokenised the text, which glues words together
    under SentencePiece ("eat" + "apple" -> "eatapple"); we concatenate ids."""
    from util.values import build_batch

    _, tok = tiny_llama
    r = normalize_request({"case_id": 0, "prompt": "Lily loved to {}", "subject": "eat",
                           "target_new": {"str": "apple pie"}, "target_true": {"str": "cake"}})
    batch = build_batch(tok, [r], [["{}"]], "subject_last")
    prompt_ids, target_ids = encode(tok, "Lily loved to eat"), encode_target(tok, " apple pie")
    row = batch.ids[0][batch.mask[0].bool()].tolist()
    assert row == prompt_ids + target_ids[:-1]
    retokenised = encode(tok, "Lily loved to eat" + tok.decode(target_ids[:-1]))
    assert row != retokenised  # the bug this avoids is real for this tokenizer
    assert batch.tgt_id.tolist() == target_ids
    assert batch.tgt_pos.tolist() == [len(prompt_ids) - 1 + k for k in range(len(target_ids))]


def test_value_prompts_text_rebuilds_the_originals_rows(tiny_llama):
    """``value_prompts: "text"``: the original's rows, text with the decoded target appended and tokenized
    whole, the target's ids scored at the row's last positions, whatever the re-tokenisation did."""
    from util.values import build_batch

    model, tok = tiny_llama
    r = normalize_request({"case_id": 0, "prompt": "Lily loved to {}", "subject": "eat",
                           "target_new": {"str": "apple pie"}, "target_true": {"str": "cake"}})
    target_ids = encode_target(tok, " apple pie")
    batch = build_batch(tok, [r], [["{}", "Once. {}"]], "subject_last", prompt_build="text")
    for row_index, text in enumerate(["Lily loved to eat", "Once. Lily loved to eat"]):
        row = batch.ids[row_index][batch.mask[row_index].bool()].tolist()
        original = encode(tok, text + tok.decode(target_ids[:-1]))
        assert row == original
        assert batch.tgt_pos[batch.tgt_row == row_index].tolist() == [len(row) - len(target_ids) + k
                                                                      for k in range(len(target_ids))]
    assert batch.tgt_id.tolist() == target_ids * 2
    ids_batch = build_batch(tok, [r], [["{}", "Once. {}"]], "subject_last")
    assert torch.equal(ids_batch.fact_pos, batch.fact_pos)  # the subject's token is read at the same place
    assert not torch.equal(ids_batch.ids, batch.ids)


def test_value_prompts_reaches_the_value_spec_and_changes_z_where_text_retokenises(tiny_llama):
    from util.hparams import HyperParamsError

    model, tok = tiny_llama
    assert stories_hparams().value_prompts == "ids"
    with pytest.raises(HyperParamsError, match="value_prompts"):
        stories_hparams(value_prompts="strings")
    spec = stories_hparams(value_prompts="text").resolved_for(model).value_spec(model)
    assert spec.prompt_build == "text"
    reqs = [normalize_request(r) for r in REQUESTS[:2]]
    by_text = compute_values(model, tok, reqs, spec, TEMPLATES).z
    by_ids = compute_values(model, tok, reqs, stories_hparams().resolved_for(model).value_spec(model), TEMPLATES).z
    assert not torch.allclose(by_text, by_ids)  # SentencePiece glues the decoded target to the prompt


def test_targets_without_space_are_normalised_first(tiny_llama):
    """The original computed values before prepending the space; we normalise first."""
    model, tok, hp, _ = _setup(tiny_llama, v_num_grad_steps=4)
    bare = dict(REQUESTS[0], target_new={"str": "red"})
    spaced = dict(REQUESTS[0], target_new={"str": " red"})
    z_bare = compute_values(model, tok, [normalize_request(bare)], hp.value_spec(model), TEMPLATES).z
    z_spaced = compute_values(model, tok, [normalize_request(spaced)], hp.value_spec(model), TEMPLATES).z
    assert torch.equal(z_bare, z_spaced)


def test_out_of_memory_halves_the_chunk(tiny_llama, monkeypatch):
    import util.values as values

    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=4)
    expected = compute_values(model, tok, reqs, hp.value_spec(model), TEMPLATES).z
    real, sizes = values._optimise, []

    def small_memory(model, tok, requests, *args):
        sizes.append(len(requests))
        if len(requests) > 1:
            raise torch.OutOfMemoryError("pretend the device is full")
        return real(model, tok, requests, *args)

    monkeypatch.setattr(values, "_optimise", small_memory)
    out = compute_values(model, tok, reqs, hp.value_spec(model), TEMPLATES)
    assert sizes[:3] == [4, 2, 1] and torch.allclose(out.z, expected, rtol=1e-4, atol=1e-4)


def test_kl_term_reads_the_final_logits(tiny_llama):
    """As in the original: the KL term uses the model's last block (its logits), the target NLL
    uses v_loss_layer; they differ when v_loss_layer is not the last layer."""
    from util.architectures import get_module

    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=1, v_loss_layer=3)  # stories260K: 5 layers
    spec = hp.value_spec(model)
    assert spec.loss_layer != spec.final_layer
    seen = []
    handle = get_module(model, spec.ln_f).register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        compute_values(model, tok, reqs[:1], spec, TEMPLATES)
    finally:
        handle.remove()
    kl_hidden = seen[1][0]  # ln_f's second input: the KL row (the first holds the target rows)
    r = reqs[0]
    _, outs = read_at_fact_tokens(model, tok, ["{} is a"], [r["subject"]], hp.fact_token,
                                  output_of=[spec.final_layer, spec.loss_layer])
    assert torch.allclose(kl_hidden, outs[spec.final_layer][0], atol=1e-5)
    assert not torch.allclose(kl_hidden, outs[spec.loss_layer][0], atol=1e-2)


def test_the_stopping_rule_belongs_to_the_value_spec(tiny_llama):
    """A method brings its own rule in its ValueSpec; the default is the original's loss threshold."""
    import dataclasses

    from util.values import DEFAULT_STOP, LossBelow, StepState

    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=8)
    spec = hp.value_spec(model)
    assert spec.stop == DEFAULT_STOP == LossBelow(5e-2)
    seen = []

    def first_request_at_once(state: StepState) -> torch.Tensor:
        seen.append(state)
        return torch.arange(len(state.loss)) == 0  # request 0 stops before its first step; the others never

    out = compute_values(model, tok, reqs, dataclasses.replace(spec, stop=first_request_at_once), TEMPLATES)
    assert out.updates == [0] + [7] * (len(reqs) - 1)
    assert torch.allclose(out.z[0], out.h0[0])
    assert seen[0].target_lp.shape == seen[0].target_request.shape and seen[0].nll.shape == (len(reqs),)
    never = compute_values(model, tok, reqs, dataclasses.replace(spec, stop=LossBelow(-1.0)), TEMPLATES)
    assert never.updates == [7] * len(reqs)


def test_value_cache_folders_do_not_move_with_the_default_rule(tmp_path, tiny_llama):
    """Caches written before the rule (and the anchoring) were fields stay valid: the default rule is
    not in the folder's digest, and the anchoring never is (z is cached before it)."""
    import dataclasses
    import hashlib
    import json

    from util.value_cache import ValueCache
    from util.values import LossBelow

    model, tok, hp, _ = _setup(tiny_llama)
    spec = hp.value_spec(model)
    before = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("stop", "anchoring")}
    digest = hashlib.sha1(json.dumps([before, TEMPLATES], sort_keys=True).encode()).hexdigest()[:10]
    assert ValueCache(tmp_path, "m", "mcf", spec, TEMPLATES).folder.name.endswith(digest)
    other = ValueCache(tmp_path, "m", "mcf", dataclasses.replace(spec, stop=LossBelow(1e-3)), TEMPLATES)
    assert not other.folder.name.endswith(digest)


def test_a_stopped_requests_rows_leave_the_forward(tiny_llama, monkeypatch):
    """From the pass after a request stops, none of its rows runs and none of its target tokens
    or KL rows meets the LM head."""
    import util.prefix_cache as prefix_cache
    from util.architectures import get_module
    from util.values import build_batch

    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=8)
    schedule = (1, 3, None, 5)
    spec = dataclasses.replace(hp.value_spec(model), stop=StopAfter(schedule))
    rows_run, head_rows = [], []
    real_call = prefix_cache.SuffixForward.__call__

    def spy(self, offset, read):
        rows_run.append(self.rows.clone())
        return real_call(self, offset, read)

    monkeypatch.setattr(prefix_cache.SuffixForward, "__call__", spy)
    handle = get_module(model, spec.ln_f).register_forward_pre_hook(lambda _m, args: head_rows.append(len(args[0])))
    try:
        out = compute_values(model, tok, reqs, spec, TEMPLATES)
    finally:
        handle.remove()
    assert out.updates == [1, 3, 7, 5]
    b = build_batch(tok, reqs, TEMPLATES, spec.fact_token)
    assert len(rows_run) == 7 and len(head_rows) == 2 * 7  # 8 steps: 7 passes, each followed by a step
    for k, rows in enumerate(rows_run):
        active = [i for i, s in enumerate(schedule) if s is None or k <= s]
        assert sorted(set(b.row_req[rows].tolist())) == active, k
        assert len(rows) == 4 * len(active)  # 3 prompts and the KL prompt per request
        targets = sum(int((b.tgt_req == i).sum()) for i in active)
        assert head_rows[2 * k : 2 * k + 2] == [targets, len(active)], k


def test_z_of_a_request_that_stops_is_its_z_alone_with_as_many_steps(tiny_llama):
    """Requests stop at different passes and their rows leave the batch; each z is the z of the
    request optimised alone for as many steps (Adam's state is per coordinate)."""
    from util.values import LossBelow

    model, tok, hp, reqs = _setup(tiny_llama, v_num_grad_steps=10)
    schedule = (1, 4, None, 6)
    spec = dataclasses.replace(hp.value_spec(model), stop=StopAfter(schedule))
    out = compute_values(model, tok, reqs, spec, TEMPLATES)
    for i, s in enumerate(schedule):
        steps = spec.num_steps - 1 if s is None else s
        alone = compute_values(model, tok, [reqs[i]], dataclasses.replace(spec, num_steps=steps + 1,
                                                                          stop=LossBelow(-1.0)), TEMPLATES)
        assert out.updates[i] == alone.updates[0] == steps
        # Measured: 5e-7 .. 2e-6 (the batch's shapes change the round-off, nothing else)
        assert float((out.z[i] - alone.z[0]).norm() / alone.z[0].norm()) < 1e-4, i


def test_losses_are_those_of_each_requests_last_pass(tiny_llama):
    """No pass runs after the last step: with 2 steps, the one pass (delta = 0) gives the loss, as
    with 1 step (no step at all); a request that stops reports the loss that stopped it."""
    from util.values import LossBelow, StepState

    model, tok, hp, reqs = _setup(tiny_llama)
    never = dataclasses.replace(hp.value_spec(model), stop=LossBelow(-1.0))
    one = compute_values(model, tok, reqs, dataclasses.replace(never, num_steps=1), TEMPLATES)
    two = compute_values(model, tok, reqs, dataclasses.replace(never, num_steps=2), TEMPLATES)
    assert one.updates == [0] * len(reqs) and two.updates == [1] * len(reqs)
    assert two.losses == pytest.approx(one.losses, rel=1e-6)
    assert not torch.allclose(two.z, one.z)
    seen: list[StepState] = []

    def record(state: StepState) -> torch.Tensor:
        seen.append(state)
        return torch.arange(len(state.loss)) == 0  # request 0 stops at the first pass

    out = compute_values(model, tok, reqs, dataclasses.replace(never, num_steps=4, stop=record), TEMPLATES)
    assert len(seen) == 3 and out.updates == [0, 3, 3, 3]
    assert out.losses[0] == seen[0].loss[0] == seen[-1].loss[0]  # kept from the pass that stopped it
    assert out.losses[1:] == seen[-1].loss[1:].tolist()

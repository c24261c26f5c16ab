"""Fact-token lookup under padding/BOS, and hooks that read, edit and always clean up."""
import pytest
import torch
from helpers import tiny_model

from util.hooks import capture, edit_output, forward_until
from util.tokens import encode, fact_token_index, pad, padded_positions


class NoBos:
    """The stories tokenizer with its BOS switched off (like SmolLM2's)."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text, add_special_tokens=True, **kw):
        return self.tok(text, add_special_tokens=False, **kw)


class AppendsEos(NoBos):
    """The stories tokenizer with a post-processor that also appends EOS (as some tokenizers do)."""

    def __call__(self, text, add_special_tokens=True, **kw):
        out = self.tok(text, add_special_tokens=add_special_tokens, **kw)
        return {"input_ids": list(out["input_ids"]) + [self.tok.eos_token_id] * add_special_tokens}

    def __getattr__(self, name):  # bos_token_id, eos_token_id, ... of the wrapped tokenizer
        return getattr(self.tok, name)


CASES = [("The mother tongue of {} is", "Danielle Darrieux"), ("{} was born in", "Lily"),
         ("Yesterday {} and Tom went to the park", "Ben")]


@pytest.mark.parametrize("bos", [True, False])
def test_subject_last_points_at_last_subject_token(tiny_llama, bos):
    _, tok = tiny_llama
    t = tok if bos else NoBos(tok)
    for prompt, subject in CASES:
        ids = encode(t, prompt.replace("{}", subject))
        idx = fact_token_index(t, prompt, subject, "subject_last")
        assert (ids[0] == tok.bos_token_id) == bos
        upto = tok.decode(ids[: idx + 1], skip_special_tokens=True)
        assert upto.strip().endswith(subject), (upto, subject)
        assert not tok.decode(ids[: idx], skip_special_tokens=True).strip().endswith(subject)
        first = fact_token_index(t, prompt, subject, "subject_first")
        assert tok.decode(ids[first : idx + 1]).strip() == subject
        assert fact_token_index(t, prompt, subject, "last") == len(ids) - 1


def test_encode_keeps_leading_specials_and_drops_a_trailing_eos(tiny_llama):
    """Prompts stay open for their continuation, and the fact token is never an appended EOS."""
    _, tok = tiny_llama
    t = AppendsEos(tok)
    for prompt, subject in CASES:
        filled = prompt.replace("{}", subject)
        assert encode(t, filled) == encode(tok, filled) == tok(filled)["input_ids"]  # [BOS] + text
        for strategy in ("subject_first", "subject_last", "last"):
            assert fact_token_index(t, prompt, subject, strategy) == fact_token_index(tok, prompt, subject, strategy)
    assert encode(t, "") == [tok.bos_token_id]  # the empty prefix of "{} was born in"
    assert encode(NoBos(tok), "") == []


@pytest.mark.parametrize("side", ["left", "right"])
def test_positions_survive_padding(tiny_llama, side):
    _, tok = tiny_llama
    seqs = [encode(tok, p.replace("{}", s)) for p, s in CASES]
    unpadded = [fact_token_index(tok, p, s) for p, s in CASES]
    ids, mask = pad(seqs, pad_id=0, side=side)
    positions = padded_positions(unpadded, mask)
    for row, (seq, i) in enumerate(zip(seqs, unpadded)):
        assert ids[row, positions[row]].item() == seq[i]


def test_unknown_strategy(tiny_llama):
    with pytest.raises(ValueError, match="fact_token='middle'"):
        fact_token_index(tiny_llama[1], "{} is", "Tom", "middle")


@pytest.mark.parametrize("kind", ["gptj", "llama"])  # GPT-J's block returns a tuple here
def test_capture_and_edit_layer_output(kind):
    model = tiny_model(kind)
    ids = torch.tensor([[5, 6, 7, 8]])
    name = "transformer.h.1" if kind == "gptj" else "model.layers.1"
    base = model(ids).logits
    with capture(model, output_of=[name]) as seen:
        model(ids)
    assert seen.outputs[name].shape == (1, 4, 32)
    with edit_output(model, name, lambda h: h + 1.0):
        edited = model(ids).logits
    assert not torch.allclose(base, edited)
    assert torch.allclose(model(ids).logits, base)  # the edit hook is gone


def test_hooks_removed_after_error_and_early_stop():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(RuntimeError):
        with capture(model, input_of=["model.layers.0.mlp.down_proj"]):
            raise RuntimeError("boom")
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    with capture(model, input_of=["model.layers.0.mlp.down_proj"], output_of=["model.layers.2"]) as seen:
        assert forward_until(model, "model.layers.0", input_ids=ids) is None
    assert "model.layers.0.mlp.down_proj" in seen.inputs and "model.layers.2" not in seen.outputs
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())

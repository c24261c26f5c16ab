"""Keys are a two-stage mean: over each template group, then over the group means."""
import torch
from helpers import REQUESTS

from util.context_templates import apply_template
from util.fact_reads import read_at_fact_tokens
from util.keys import compute_keys_and_outputs
from util.requests import normalize_request

MODULE = "model.layers.2.mlp.down_proj"
OUTPUT = "model.layers.3"


def test_two_stage_mean_and_plain_outputs(tiny_llama):
    model, tok = tiny_llama
    reqs = [normalize_request(r) for r in REQUESTS[:2]]
    generated = ["Once upon a time. {}", "The sun was up. {}", "Mom said no. {}"]
    keys, plain = compute_keys_and_outputs(model, tok, reqs, [["{}"], generated], [MODULE], "subject_last",
                                           output_module=OUTPUT, batch_size=4)

    def read(template):
        prompts = [apply_template(template, r["prompt"]) for r in reqs]
        return read_at_fact_tokens(model, tok, prompts, [r["subject"] for r in reqs], "subject_last",
                                   input_of=[MODULE], output_of=[OUTPUT])

    plain_keys, plain_out = read("{}")
    generated_mean = torch.stack([read(t)[0][MODULE] for t in generated]).mean(0)
    expected = 0.5 * plain_keys[MODULE] + 0.5 * generated_mean  # not the flat mean over 4 templates
    assert torch.allclose(keys[MODULE], expected, atol=1e-5)
    flat = (plain_keys[MODULE] + 3 * generated_mean) / 4
    assert not torch.allclose(keys[MODULE], flat, atol=1e-3)
    assert torch.allclose(plain, plain_out[OUTPUT], atol=1e-5)

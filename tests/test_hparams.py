"""Hyperparameter files: shipped ones load; every bad input names the key and the fix."""
import json
from pathlib import Path

import pytest
from helpers import tiny_hparams, tiny_model

from nse import NSEHyperParams
from util.hparams import HyperParamsError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "hparams" / "NSE").glob("*.json"))


def _write(tmp_path, data, name="h.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _valid() -> dict:
    return json.loads((ROOT / "hparams/NSE/Llama3-8B.json").read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_files_load(path):
    hp = NSEHyperParams.from_json(path)
    assert hp.layers and 0 < hp.neuron_threshold <= 1


def test_original_values_are_shipped():
    gpt2, gptj, llama = (NSEHyperParams.from_json(ROOT / "hparams/NSE" / f) for f in
                         ("gpt2-xl.json", "EleutherAI_gpt-j-6B.json", "Llama3-8B.json"))
    assert (gpt2.layers, gpt2.mom2_update_weight, gpt2.v_lr, gpt2.alpha, gpt2.upper_bound) == ([13, 14, 15, 16, 17], 10000, 0.5, 35, 150)
    assert (gptj.layers, gptj.neuron_threshold, gptj.v_num_grad_steps, gptj.v_loss_layer) == ([3, 4, 5, 6, 7, 8], 0.8, 25, 27)
    assert (llama.layers, llama.v_lr, llama.alpha, llama.upper_bound, llama.neuron_threshold) == ([4, 5, 6, 7, 8], 0.1, 2.5, 50, 1.0)


def test_unknown_key(tmp_path):
    with pytest.raises(HyperParamsError, match=r"unknown key\(s\) \['v_lrr'\].*remove"):
        NSEHyperParams.from_json(_write(tmp_path, {**_valid(), "v_lrr": 0.1}))


def test_missing_key(tmp_path):
    data = _valid()
    del data["alpha"]
    with pytest.raises(HyperParamsError, match=r"missing required key\(s\) \['alpha'\]"):
        NSEHyperParams.from_json(_write(tmp_path, data))


def test_not_json(tmp_path):
    with pytest.raises(HyperParamsError, match="is not valid JSON"):
        NSEHyperParams.from_json(_write(tmp_path, "{layers: [1,"))


def test_missing_file(tmp_path):
    with pytest.raises(HyperParamsError, match="does not exist"):
        NSEHyperParams.from_json(tmp_path / "nope.json")


def test_wrong_type(tmp_path):
    with pytest.raises(HyperParamsError, match="'v_lr' must be float, got '0.1'"):
        NSEHyperParams.from_json(_write(tmp_path, {**_valid(), "v_lr": "0.1"}))


@pytest.mark.parametrize("bad", [0, 1.5, -0.2])
def test_threshold_outside_unit_interval(tmp_path, bad):
    with pytest.raises(HyperParamsError, match=r"'neuron_threshold' must be in \(0, 1\]"):
        NSEHyperParams.from_json(_write(tmp_path, {**_valid(), "neuron_threshold": bad}))


def test_alpha_not_below_upper_bound(tmp_path):
    with pytest.raises(HyperParamsError, match="alpha < upper_bound"):
        NSEHyperParams.from_json(_write(tmp_path, {**_valid(), "alpha": 60}))


def test_unsorted_layers(tmp_path):
    with pytest.raises(HyperParamsError, match="increasing"):
        NSEHyperParams.from_json(_write(tmp_path, {**_valid(), "layers": [5, 4]}))


def test_layer_out_of_range():
    with pytest.raises(HyperParamsError, match=r"'layers' \[3\] out of range: the model has 3 layers"):
        tiny_hparams(layers=[1, 3]).resolved_for(tiny_model("llama"))


def test_loss_layer_out_of_range():
    with pytest.raises(HyperParamsError, match="'v_loss_layer'=5"):
        tiny_hparams(v_loss_layer=5).resolved_for(tiny_model("llama"))


def test_module_template_the_model_lacks():
    hp = tiny_hparams(rewrite_module_tmp="transformer.h.{}.mlp.c_proj")
    with pytest.raises(HyperParamsError, match=r"'rewrite_module_tmp'='transformer.h.\{\}.mlp.c_proj' names no module of this llama model"):
        hp.resolved_for(tiny_model("llama"))


def test_templates_filled_from_table_per_architecture():
    for kind, expected in [("gpt2", "transformer.h.{}.mlp.c_proj"), ("gptj", "transformer.h.{}.mlp.fc_out"),
                           ("gpt_neox", "gpt_neox.layers.{}.mlp.dense_4h_to_h"), ("llama", "model.layers.{}.mlp.down_proj"),
                           ("mistral", "model.layers.{}.mlp.down_proj"), ("qwen2", "model.layers.{}.mlp.down_proj"),
                           ("qwen3", "model.layers.{}.mlp.down_proj")]:
        assert tiny_hparams().resolved_for(tiny_model(kind)).rewrite_module_tmp == expected


@pytest.mark.parametrize("change, message", [
    ({"mom2_dtype": "float16"}, "'mom2_dtype' must be one of"),
    ({"mom2_update_weight": 0}, "'mom2_update_weight' > 0"),
    ({"mom2_adjustment": False}, "'mom2_adjustment': true"),
    ({"max_iterations": 1}, "'max_iterations' must be >= 2"),
])
def test_settings_that_would_break_the_solve(tmp_path, change, message):
    with pytest.raises(HyperParamsError, match=message):
        NSEHyperParams.from_json(_write(tmp_path, {**_valid(), **change}))

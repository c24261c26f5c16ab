"""Models split over devices: every read, solve and accumulation follows its layer's device."""
from __future__ import annotations

import pytest
import torch
from helpers import REQUESTS, prefers_new, stories_hparams, tiny_model
from transformers import AutoModelForCausalLM

from nse import NSEEditor
from util.rewrite_weights import weight_d_by_f

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="needs a CUDA GPU: the model is split over the GPU and the CPU")


def _split_over_gpu_and_cpu(model):
    """Embedding and layers 0-1 on the CPU, layers 2+ (edited layers 2 and 3 among them) and the head
    on the GPU. main_device='cpu' keeps the CPU part resident (not offloaded), so it can be edited."""
    from accelerate import dispatch_model

    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": 0, "lm_head": 0}
    for i in range(len(model.model.layers)):
        device_map[f"model.layers.{i}"] = "cpu" if i < 2 else 0
    return dispatch_model(model, device_map=device_map, main_device="cpu")


@pytest.mark.gpu
@needs_gpu
def test_nse_on_a_model_split_over_gpu_and_cpu_equals_one_device(tiny_llama, tiny_llama_path, tmp_path):
    _, tok = tiny_llama
    hp = stories_hparams(v_num_grad_steps=5)
    whole = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    split = _split_over_gpu_and_cpu(AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval())
    editors = [NSEEditor(m, tok, hp, stats_dir=tmp_path, progress=False, seed=0) for m in (whole, split)]
    for editor in editors:
        editor.edit(REQUESTS[:2])
        editor.edit(REQUESTS[2:])
    one, two = editors
    assert {w.device.type for w in two.weights.values()} == {"cpu", "cuda"}  # the edit really spans devices
    for layer in hp.layers:
        assert two.regulariser[layer].device == two.weights[layer].device
        # Tolerance: GPU and CPU float32 kernels sum in different orders.
        assert torch.allclose(weight_d_by_f(one.modules[layer]), weight_d_by_f(two.modules[layer]).cpu(), atol=1e-4)
        assert torch.allclose(one.regulariser[layer], two.regulariser[layer].cpu(), rtol=1e-4)
    assert all(prefers_new(split, tok, r) for r in REQUESTS)


def test_offloaded_weights_are_refused_by_name(tiny_llama):
    """A device map that offloads an edited module leaves its weight on 'meta'; editing it would
    write nowhere, so the editor says which module and what to do."""
    _, tok = tiny_llama
    model = tiny_model("llama")
    hp = stories_hparams(layers=[0, 1], v_loss_layer=2)
    mlp = model.model.layers[1].mlp
    mlp.down_proj.weight = torch.nn.Parameter(torch.empty_like(mlp.down_proj.weight, device="meta"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj.*offloaded"):
        NSEEditor(model, tok, hp, progress=False)


def test_device_map_loads_through_accelerate(tiny_llama_path, monkeypatch):
    """--device_map hands placement to accelerate (on a CPU-only machine everything lands on the CPU)."""
    from transformers import AutoModelForCausalLM

    from util.model_loading import ModelLoadError, load_model_and_tokenizer

    seen = {}
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    model, _ = load_model_and_tokenizer(str(tiny_llama_path), device_map="auto")
    assert seen["device_map"] == "auto" and next(model.parameters()).device.type in ("cpu", "cuda")
    with pytest.raises(ModelLoadError, match="--device_map='everywhere' is not one of auto"):
        load_model_and_tokenizer(str(tiny_llama_path), device_map="everywhere")

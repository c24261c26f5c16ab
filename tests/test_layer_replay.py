"""Key reads after a layer changed start at that layer (util/layer_replay.py) and read what a
full pass reads, on every architecture of the module table; the MEMIT family's updates are the same."""
import pytest
import torch
from helpers import REQUESTS, tiny_hparams, tiny_model

from memit.editor import MEMITEditor
from nse.editor import NSEEditor
from util.architectures import MODULE_LAYOUTS, get_module
from util.keys import KeyReader, compute_keys_and_outputs
from util.requests import normalize_request

TEMPLATES = [["{}"], ["Once upon a time. {}", "The sun was up. {}"]]
ARCHITECTURES = sorted(MODULE_LAYOUTS)


def _bump(module: torch.nn.Module, seed: int) -> None:
    with torch.no_grad():
        w = module.weight
        w.add_(0.5 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)))


class _LayerCalls:
    """Counts the calls of each decoder layer while installed."""

    def __init__(self, layers: torch.nn.ModuleList) -> None:
        self.count = [0] * len(layers)
        self.handles = [layer.register_forward_pre_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, i):
        def hook(*_):
            self.count[i] += 1
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reads_resumed_at_the_changed_layer_equal_full_reads(arch, tok):
    model = tiny_model(arch)
    hp = tiny_hparams(layers=[0, 1, 2]).resolved_for(model)
    reqs = [normalize_request(r) for r in REQUESTS]
    layers_path = hp.layer_module(0).rsplit(".", 1)[0]
    z_name = hp.layer_module(2)
    reader = KeyReader(model, tok, reqs, TEMPLATES, hp.fact_token, batch_size=5,  # several chunks
                       layers_path=layers_path, resumable=[0, 1, 2])
    calls = _LayerCalls(get_module(model, layers_path))
    try:
        reader.read([hp.rewrite_module(0)], z_name, stop_after=z_name)
        for layer in (0, 1):
            _bump(get_module(model, hp.rewrite_module(layer)), seed=layer)
            before = list(calls.count)
            keys, h = reader.read([hp.rewrite_module(layer + 1)], z_name, stop_after=z_name, start_at=layer)
            ran = [a - b for a, b in zip(calls.count, before)]
            assert ran[:layer] == [0] * layer and all(n > 0 for n in ran[layer:]), ran  # nothing below `layer`
            want_keys, want_h = compute_keys_and_outputs(model, tok, reqs, TEMPLATES, [hp.rewrite_module(layer + 1)],
                                                         hp.fact_token, z_name, stop_after=z_name)
            name = hp.rewrite_module(layer + 1)
            assert torch.allclose(keys[name], want_keys[name], rtol=1e-5, atol=1e-6), (arch, layer)
            assert torch.allclose(h, want_h, rtol=1e-5, atol=1e-6), (arch, layer)
    finally:
        calls.remove()


def test_a_read_stops_after_the_module_it_needs(tok):
    model = tiny_model("llama")
    hp = tiny_hparams(layers=[0, 1, 2]).resolved_for(model)
    reader = KeyReader(model, tok, [normalize_request(REQUESTS[0])], [["{}"]], hp.fact_token,
                       layers_path="model.layers", resumable=[0, 1, 2])
    calls = _LayerCalls(get_module(model, "model.layers"))
    try:
        reader.read([hp.rewrite_module(0)], hp.layer_module(2), stop_after=hp.layer_module(2))
        reader.read([hp.rewrite_module(1)], stop_after=hp.rewrite_module(1), start_at=1)
    finally:
        calls.remove()
    assert calls.count == [1, 2, 1]


@pytest.mark.parametrize("cls", [MEMITEditor, NSEEditor])
def test_editors_update_the_same_with_resumed_reads(cls, tok, tmp_path, monkeypatch):
    """A whole batch (NSE: several rounds over 3 layers) with resumed key reads against full reads."""
    hp = tiny_hparams(layers=[0, 1, 2], v_num_grad_steps=5)
    reqs = [normalize_request(r) for r in REQUESTS]
    weights = []
    for resume in (True, False):
        if not resume:
            monkeypatch.setattr(KeyReader, "__init__", _full_reads_only(KeyReader.__init__))
        editor = cls(tiny_model("llama"), tok, hp, stats_dir=tmp_path, progress=False)
        editor.edit(reqs)
        weights.append({l: w.detach().clone() for l, w in editor.weights.items()})
    for layer in hp.layers:
        assert not torch.equal(weights[0][layer], editor.original[layer])  # it edited
        assert torch.allclose(weights[0][layer], weights[1][layer], rtol=1e-4, atol=1e-6), layer


def _full_reads_only(init):
    def without_resume(self, *args, **kwargs):
        kwargs.update(layers_path=None, resumable=())
        init(self, *args, **kwargs)
    return without_resume


@pytest.fixture(scope="module")
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_llama_path)
    t.pad_token = t.pad_token or t.eos_token
    return t

"""C0 = E[k k^T] over corpus tokens: one pass for all layers, padding excluded, cached on disk."""
import pytest
import torch
from helpers import CORPUS

from util.corpus import CorpusUnavailable, load_corpus_texts
from util.stats_spec import StatsSpec
from util.second_moment import (
    SecondMomentStats,
    cached_second_moments,
    collect_second_moments,
)
from util.tokens import encode

LAYERS = ["model.layers.1.mlp.down_proj", "model.layers.3.mlp.down_proj"]


def _manual_mom2(model, tok, texts, name, max_length):
    keys = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: keys.append(a[0][0]))
    try:
        with torch.no_grad():
            for text in texts:  # one text at a time: no padding at all
                model(torch.tensor([encode(tok, text)[:max_length]]))
    finally:
        handle.remove()
    k = torch.cat(keys).double()
    return k.T @ k / k.shape[0]


def test_one_pass_matches_per_text_computation(tiny_llama):
    model, tok = tiny_llama
    texts = load_corpus_texts(CORPUS, 12)
    stats = collect_second_moments(model, tok, LAYERS, texts, max_length=48, dtype=torch.float64, progress=False)
    for name in LAYERS:
        # float32 forward passes of a padded batch vs single texts differ by round-off only
        assert torch.allclose(stats[name].mom2(), _manual_mom2(model, tok, texts, name, 48), rtol=1e-4, atol=1e-6)
    lengths = [min(len(encode(tok, t)), 48) for t in texts]
    assert stats[LAYERS[0]].count == sum(lengths)  # every real token, no padding


def test_shards_add_up(tiny_llama):
    model, tok = tiny_llama
    texts = load_corpus_texts(CORPUS, 8)
    whole = collect_second_moments(model, tok, LAYERS[:1], texts, 32, torch.float64, progress=False)[LAYERS[0]]
    a = collect_second_moments(model, tok, LAYERS[:1], texts[:3], 32, torch.float64, progress=False)[LAYERS[0]]
    b = collect_second_moments(model, tok, LAYERS[:1], texts[3:], 32, torch.float64, progress=False)[LAYERS[0]]
    a.merge(b)
    assert a.count == whole.count and torch.allclose(a.mom2(), whole.mom2(), atol=1e-10)
    restored = SecondMomentStats.from_state_dict(a.state_dict())
    assert torch.equal(restored.total, a.total)


def test_cache_is_written_then_reused(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    args = (model, tok, LAYERS, StatsSpec(CORPUS, 10, 32, "float32"), tmp_path)
    first = cached_second_moments(*args, progress=False)
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    import util.second_moment

    def no_pass(*a, **k):  # the corpus is read (its content is part of the key), the model is not run
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(util.second_moment, "collect_second_moments", no_pass)
    second = cached_second_moments(*args, progress=False)
    for name in LAYERS:
        assert torch.equal(first[name], second[name])


def test_local_corpus_forms(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph.\n \nSecond one.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "from jsonl"}\n')
    (tmp_path / "c.json").write_text('["from json", {"text": "object"}]')
    assert load_corpus_texts(str(tmp_path), 10) == ["First paragraph.", "Second one.", "from jsonl", "from json", "object"]
    assert load_corpus_texts(str(tmp_path), 2) == ["First paragraph.", "Second one."]


def test_hub_corpus_offline_says_how_to_use_local_text(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusUnavailable, match=r"'wikipedia'.*local \.txt/\.jsonl/\.json file or a folder"):
        load_corpus_texts("wikipedia", 100)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_edit_in_half_precision(tiny_llama_path, dtype):
    from helpers import REQUESTS, prefers_new, stories_hparams
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nse import NSEEditor

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    editor = NSEEditor(model, tok, stories_hparams(), progress=False)
    editor.edit(REQUESTS[:2])
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(prefers_new(model, tok, r) for r in REQUESTS[:2]), editor.last_report.log_line()


def test_missing_local_corpus_is_not_sent_to_the_hub():
    with pytest.raises(CorpusUnavailable, match=r"local statistics corpus './no/such/corpus' does not exist"):
        load_corpus_texts("./no/such/corpus", 10)


def test_cache_file_of_a_module_does_not_depend_on_the_other_layers(tmp_path):
    """ROME's one layer reuses C0 that a MEMIT-family run collected for its five."""
    from helpers import tiny_model

    from util.second_moment import stats_cache_paths

    from transformers import AutoTokenizer

    from helpers import ROOT

    tok = AutoTokenizer.from_pretrained(ROOT / "assets" / "tinystories-260k-llama")
    model = tiny_model("llama")
    names = [f"model.layers.{l}.mlp.down_proj" for l in range(3)]
    together = stats_cache_paths(model, tok, names, StatsSpec("wikitext", 10, 32, "float32"), tmp_path)
    alone = stats_cache_paths(model, tok, names[1:2], StatsSpec("wikitext", 10, 32, "float32"), tmp_path)
    assert alone[names[1]] == together[names[1]] and len(set(together.values())) == 3
    other = tiny_model("llama", seed=1)  # other weights: another file
    assert stats_cache_paths(other, tok, names[1:2], StatsSpec("wikitext", 10, 32, "float32"), tmp_path)[names[1]] != alone[names[1]]

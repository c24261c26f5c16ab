"""The statistics pass at scale: content-keyed cache, bad corpus lines, truncated files, logging,
checkpoint/resume, and 2 gloo processes giving the 1-process C0."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import pytest
import torch
from helpers import ROOT, tiny_model

from util.corpus import CorpusFormatError, load_corpus_texts
from util.stats_spec import StatsSpec
from util.second_moment import cached_second_moments, collect_second_moments, stats_cache_paths

STORIES = ROOT / "assets" / "tinystories-260k-llama"
NAMES = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
WORDS = "the cat sat on a warm mat while two dogs ran after one red ball in the big green park".split()


def write_corpus(folder, n: int = 24):
    """``n`` paragraphs of different lengths (6..40 words) in one text file."""
    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6 + (i * 5) % 35)) for i in range(n)]
    (folder / "stories.txt").write_text("\n\n".join(paragraphs) + "\n")
    return folder


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


@pytest.fixture()
def model():
    return tiny_model("llama")


def c0(model, tok, corpus, cache, **kw):
    return cached_second_moments(model, tok, NAMES, StatsSpec(str(corpus), 20, 48, "float64"), cache, progress=False, **kw)


def forbid_pass(monkeypatch):
    import util.second_moment

    def no_pass(*a, **k):
        raise AssertionError("C0 was recomputed although a cache file with its key exists")

    monkeypatch.setattr(util.second_moment, "collect_second_moments", no_pass)


# -- corpus errors -----------------------------------------------------------------------------------
def test_bad_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": broken\n')
    with pytest.raises(CorpusFormatError, match=r"a\.jsonl:4: not a JSON object"):
        load_corpus_texts(str(tmp_path), 10)
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(CorpusFormatError, match=r"a\.jsonl:2: each item must be a string or an object"):
        load_corpus_texts(str(tmp_path), 10)


def test_bad_json_and_bad_bytes_name_the_line(tmp_path):
    (tmp_path / "b.json").write_text('[\n "one",\n "two"\n "three"\n]')
    with pytest.raises(CorpusFormatError, match=r"b\.json:4: not valid JSON"):
        load_corpus_texts(str(tmp_path / "b.json"), 10)
    (tmp_path / "c.txt").write_bytes(b"good line\nsecond line\n\xff\xfe bad bytes\n")
    with pytest.raises(CorpusFormatError, match=r"c\.txt:3: not UTF-8"):
        load_corpus_texts(str(tmp_path / "c.txt"), 10)


def test_bad_corpus_fails_before_the_model_runs(model, tok, tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "x.jsonl").write_text('{"text": "ok"}\nnot json\n')
    forbid_pass(monkeypatch)  # an AssertionError here would mean the pass started
    with pytest.raises(CorpusFormatError, match=r"x\.jsonl:2"):
        c0(model, tok, tmp_path / "corpus", tmp_path / "stats")


# -- the cache key -------------------------------------------------------------------------------------
def test_cache_is_keyed_by_content_not_by_spelling(model, tok, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    first = c0(model, tok, corpus, tmp_path / "stats")
    copy = shutil.copytree(corpus, tmp_path / "elsewhere" / "same_texts")
    model.config._name_or_path = "/some/other/spelling/of/the-model/"
    forbid_pass(monkeypatch)
    again = c0(model, tok, os.path.relpath(copy), tmp_path / "stats")  # other path, other model name
    for name in NAMES:
        assert torch.equal(first[name], again[name])


def test_cache_key_follows_what_c0_depends_on(model, tok, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")

    def path(m=model, corpus=corpus, n=20, length=48, dtype="float64", name=NAMES[1]) -> str:
        """The key part of the file name (the corpus label in it is the folder's name, not keyed)."""
        file = stats_cache_paths(m, tok, [name], StatsSpec(str(corpus), n, length, dtype), tmp_path / "stats")[name]
        return file.stem.rsplit("-", 1)[1]

    base = path()
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight.add_(1.0)  # after the read layer: same statistics
        assert path() == base
        model.model.layers[1].mlp.down_proj.weight.add_(1.0)  # the read module's own layer: keyed (simplest)
        assert path() != base
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[3, 0] += 1e-3  # one entry below the layer
    assert path(model) != base
    fresh = tiny_model("llama")
    assert path(fresh) == base
    assert len({base, path(fresh, n=19), path(fresh, length=40), path(fresh, dtype="float32")}) == 4
    other = write_corpus(tmp_path / "other", n=25)  # one more text, the first 20 the same: same texts used
    assert path(fresh, corpus=other) == base
    (other / "stories.txt").write_text((other / "stories.txt").read_text().replace("cat", "bat", 1))
    assert path(fresh, corpus=other) != base


def test_cache_layout_is_plain_and_described(model, tok, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    model.config._name_or_path = "org/Tiny-Model"
    c0(model, tok, corpus, tmp_path / "stats")
    files = sorted(p.relative_to(tmp_path / "stats") for p in (tmp_path / "stats").rglob("*") if p.is_file())
    assert all(not part.startswith(".") for f in files for part in f.parts)
    assert {f.parts[0] for f in files} == {"Tiny-Model"}
    stems = sorted(f.stem for f in files if f.suffix == ".pt")
    assert stems == sorted(f.stem for f in files if f.suffix == ".json") and len(stems) == 2
    assert stems[0].startswith("model.layers.0.mlp.down_proj_corpus-20x48-float64-")
    meta = json.loads((tmp_path / "stats" / files[0]).read_text())
    assert meta["key"]["module"] == NAMES[0] and meta["key"]["corpus"]["n_texts"] == 20
    assert meta["tokens"] > 0 and meta["model_name_or_path"] == "org/Tiny-Model"
    assert not list((tmp_path / "stats").rglob("partial-*"))  # the checkpoint went with the pass


def test_more_samples_than_the_corpus_holds_warns_and_names_the_cache_by_what_was_used(model, tok, tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus", n=12)
    with caplog.at_level(logging.WARNING, logger="util.corpus"):
        files = stats_cache_paths(model, tok, NAMES, StatsSpec(str(corpus), 20, 48, "float64"), tmp_path / "stats")
    assert "mom2_n_samples=20" in caplog.text and "holds 12 non-empty texts" in caplog.text
    assert files[NAMES[0]].stem.startswith("model.layers.0.mlp.down_proj_corpus-12x48-float64-")
    # Asking for 12 or for 20 from these 12 texts is the same C0: one cache file.
    assert stats_cache_paths(model, tok, NAMES, StatsSpec(str(corpus), 12, 48, "float64"), tmp_path / "stats") == files


def test_texts_are_cut_where_the_original_cuts_them():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    from util.stats_cache import effective_max_length, original_context_length

    assert original_context_length(GPT2Config(n_positions=1024)) == 1024
    assert original_context_length(LlamaConfig(max_position_embeddings=8192)) == 8192
    assert original_context_length(MistralConfig(sliding_window=None)) == 4096
    assert original_context_length(MistralConfig(sliding_window=2048)) == 2048
    assert original_context_length(Qwen2Config(max_position_embeddings=32768)) == 4096
    model = tiny_model("llama")
    context = model.config.max_position_embeddings
    assert effective_max_length(model, None) == context  # the file sets no cap: the model's context
    assert effective_max_length(model, 16) == 16 and effective_max_length(model, 10 * context) == context


def test_a_hub_corpus_is_the_originals_seeded_random_subset(monkeypatch):
    """random.Random(1) shuffles every row index of the split and the first N are read (the
    original's FixedRandomSubsetSampler), not the first N rows."""
    import random
    import sys
    import types

    from util.corpus import hub_sample_indices, load_corpus_texts

    rows = [{"text": f"article {i}"} for i in range(50)]
    fake = types.SimpleNamespace(load_dataset=lambda name, config, split: rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    order = list(range(50))
    random.Random(1).shuffle(order)
    assert hub_sample_indices(50, 7) == order[:7] != list(range(7))
    assert load_corpus_texts("wikitext", 7) == [f"article {i}" for i in order[:7]]


# -- damaged files ---------------------------------------------------------------------------------------
def test_truncated_cache_file_is_named_and_recomputed(model, tok, tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    first = c0(model, tok, corpus, tmp_path / "stats")
    path = stats_cache_paths(model, tok, NAMES[:1], StatsSpec(str(corpus), 20, 48, "float64"), tmp_path / "stats")[NAMES[0]]
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="util.second_moment"):
        again = c0(model, tok, corpus, tmp_path / "stats")
    assert str(path) in caplog.text and "recomputing" in caplog.text
    assert torch.equal(first[NAMES[0]], again[NAMES[0]])
    torch.load(path, weights_only=True)  # rewritten whole


def test_truncated_projector_is_recomputed(tmp_path):
    from alphaedit.projection import cached_projector

    cov = torch.diag(torch.tensor([1.0, 0.001, 2.0, 0.0]))
    c0_path = tmp_path / "c0.pt"
    first = cached_projector(cov, 0.01, c0_path, "float32")
    saved = tmp_path / "c0_nullspace0.01_float32svd.pt"  # the original's float32 SVD, the default
    saved.write_bytes(saved.read_bytes()[:50])
    assert torch.equal(cached_projector(cov, 0.01, c0_path, "float32"), first)


def test_float64_projectors_keep_their_former_file_name(tmp_path):
    from alphaedit.projection import cached_projector

    cov = torch.diag(torch.tensor([1.0, 0.001, 2.0, 0.0]))
    cached_projector(cov, 0.01, tmp_path / "c0.pt", "float64")
    cached_projector(cov, 0.01, tmp_path / "c0.pt", "float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c0_nullspace0.01.pt", "c0_nullspace0.01_float32svd.pt"]


# -- visible progress -------------------------------------------------------------------------------------
def test_pass_logs_start_progress_and_end(model, tok, tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    with caplog.at_level(logging.INFO, logger="util.second_moment"):
        c0(model, tok, corpus, tmp_path / "stats", batch_tokens=64)  # several batches
    lines = [r.getMessage() for r in caplog.records if r.name == "util.second_moment"]
    assert any(l.startswith("collecting C0 for model.layers.0.mlp.down_proj") for l in lines)
    assert any(l.startswith("statistics pass: 20 texts") for l in lines)
    progress = [l for l in lines if "tokens/s per process" in l]
    assert 5 <= len(progress) <= 21  # every ~5% of the texts, not every batch or token
    assert any(l.startswith("statistics pass done") for l in lines)
    assert sum("written to" in l for l in lines) == 2


# -- checkpoint and resume ----------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def test_interrupted_pass_resumes_to_the_same_c0(model, tok, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    kw = dict(checkpoint_every=6, batch_tokens=64)
    whole = c0(model, tok, corpus, None, **kw)  # no cache folder: uninterrupted, nothing written

    calls = {"n": 0}

    def kill_after_some_batches(_module, _args):
        calls["n"] += 1
        if calls["n"] > 9:  # in the third chunk of 6 texts (batches hold 1-3 texts)
            raise Interrupted

    handle = model.model.layers[0].register_forward_pre_hook(kill_after_some_batches)
    with pytest.raises(Interrupted):
        c0(model, tok, corpus, tmp_path / "stats", **kw)
    handle.remove()
    partial = list((tmp_path / "stats").rglob("partial-*.pt"))
    assert len(partial) == 1 and 6 <= torch.load(partial[0], weights_only=True)["texts_done"] < 20

    seen = []
    resumed_texts = model.model.layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    resumed = c0(model, tok, corpus, tmp_path / "stats", **kw)
    resumed_texts.remove()
    done = 20 - sum(seen)
    assert done >= 6  # the resumed pass skipped the checkpointed texts
    for name in NAMES:
        assert torch.equal(resumed[name], whole[name])  # same batches, same order: bit for bit
    assert not list((tmp_path / "stats").rglob("partial-*"))


def test_unreadable_checkpoint_starts_over(model, tok, tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    kw = dict(checkpoint_every=6, batch_tokens=64)
    whole = c0(model, tok, corpus, None, **kw)
    paths = stats_cache_paths(model, tok, NAMES, StatsSpec(str(corpus), 20, 48, "float64"), tmp_path / "stats")
    from util.stats_cache import CacheEntry, partial_path

    partial = partial_path([CacheEntry(paths[n], {}) for n in NAMES])
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING, logger="util.second_moment"):
        again = c0(model, tok, corpus, tmp_path / "stats", **kw)
    assert str(partial) in caplog.text
    assert all(torch.equal(again[n], whole[n]) for n in NAMES)


# -- several processes -----------------------------------------------------------------------------------------
def _gloo_worker(rank: int, world: int, store: str, corpus: str, out: str) -> None:
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = tiny_model("llama")  # same seed: the same weights in every process
        tok = AutoTokenizer.from_pretrained(STORIES)
        texts = load_corpus_texts(corpus, 20)
        stats = collect_second_moments(model, tok, NAMES, texts, 48, torch.float64, progress=False, batch_tokens=1)
        torch.save({n: s.state_dict() for n, s in stats.items()}, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_give_the_one_process_c0(model, tok, tmp_path):
    import torch.multiprocessing as mp

    corpus = str(write_corpus(tmp_path / "corpus"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same float32 forward, bit for bit
    try:
        single = collect_second_moments(model, tok, NAMES, load_corpus_texts(corpus, 20), 48, torch.float64,
                                        progress=False, batch_tokens=1)  # one text per forward
    finally:
        torch.set_num_threads(threads)
    out = str(tmp_path / "c0")
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "store"), corpus, out), nprocs=2)
    for rank in range(2):  # all-reduced: every rank holds the whole sums
        shards = torch.load(f"{out}.{rank}", weights_only=True)
        for name in NAMES:
            assert shards[name]["count"] == single[name].count
            # float64 sums of identical float32 keys in another order: round-off ~1e-16 relative
            torch.testing.assert_close(shards[name]["total"], single[name].total, rtol=1e-10, atol=0)


# -- the precompute entry point ----------------------------------------------------------------------------------
def test_precomputed_c0_is_what_editors_read(tmp_path, monkeypatch):
    from experiments.precompute_stats import main
    from util.model_loading import load_model_and_tokenizer

    corpus = write_corpus(tmp_path / "corpus")
    paths = main(["--alg_name=MEMIT", f"--model_name={STORIES}", "--hparams_fname=tinystories-260k.json",
                  f"--stats_dir={tmp_path / 'stats'}", f"--mom2_dataset={corpus}"])
    assert len(paths) == 3 and all(p.is_file() and p.with_suffix(".json").is_file() for p in paths.values())
    forbid_pass(monkeypatch)
    model, tok = load_model_and_tokenizer(str(STORIES), device="cpu")
    name = sorted(paths)[1]  # one layer of MEMIT's three, as ROME would ask for it (hparams: n=1000, length 256)
    c = cached_second_moments(model, tok, [name], StatsSpec(str(corpus), 1000, 256, "float32"), tmp_path / "stats")[name]
    assert c.shape == (172, 172) and c.device == model.model.layers[1].mlp.down_proj.weight.device


def test_pass_stops_before_the_last_read_module(model, tok, tmp_path):
    ran = []
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: ran.append(n)) for n in NAMES]
    handles.append(model.model.norm.register_forward_hook(lambda m, a, o: ran.append("norm")))
    try:
        stats = collect_second_moments(model, tok, NAMES, ["a short text", "another one"], 16, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert set(ran) == {NAMES[0]} and stats[NAMES[1]].count > 0  # its input was read, it did not run


# File names computed by the code before the statistics settings became one StatsSpec (commit
# af252b8: eight positional arguments), for the shipped stories260K model and corpus: caches
# written then are found now.
NAMES_BEFORE_SPEC = {
    ("assets/corpus", 30, 64, "float32"): {
        "model.layers.1.mlp.down_proj": "model.layers.1.mlp.down_proj_corpus-30x64-float32-df4525abcec7522b.pt",
        "model.layers.3.mlp.down_proj": "model.layers.3.mlp.down_proj_corpus-30x64-float32-a33a681c521067b0.pt"},
    ("assets/corpus", 10, None, "float64"): {
        "model.layers.1.mlp.down_proj": "model.layers.1.mlp.down_proj_corpus-10x512-float64-0eed8cd09e19be78.pt",
        "model.layers.3.mlp.down_proj": "model.layers.3.mlp.down_proj_corpus-10x512-float64-b94e3e143dc60d2e.pt"},
}


@pytest.mark.parametrize("settings", sorted(NAMES_BEFORE_SPEC, key=str))
def test_cache_files_keep_their_names_from_before_the_spec(settings, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from nse import NSEHyperParams

    model = AutoModelForCausalLM.from_pretrained(STORIES)
    corpus, n, length, dtype = settings
    hp = NSEHyperParams.from_json(ROOT / "hparams/NSE/tinystories-260k.json")
    spec = dataclasses.replace(hp, mom2_dataset=corpus, mom2_n_samples=n, mom2_max_length=length,
                               mom2_dtype=dtype).stats_spec()
    assert spec == StatsSpec(corpus, n, length, dtype)  # what hparams build is what callers pass
    names = list(NAMES_BEFORE_SPEC[settings])
    assert {k: p.name for k, p in stats_cache_paths(model, tok, names, spec, tmp_path).items()} == NAMES_BEFORE_SPEC[settings]

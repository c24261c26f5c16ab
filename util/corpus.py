"""Texts for covariance statistics: a local text/JSONL file or folder, or a `datasets` hub name."""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

# Hub names of the original project and the (dataset, config) they stand for. The original's
# ("wikipedia", "20200501.en") is gone from the hub: its name now means the current English dump
# of the maintained Wikipedia dataset.
WIKIPEDIA = ("wikimedia/wikipedia", "20231101.en")
HUB_CORPORA = {
    "wikipedia": WIKIPEDIA,
    "wikimedia/wikipedia": WIKIPEDIA,
    "wikitext": ("wikitext", "wikitext-103-raw-v1"),
}
TEXT_SUFFIXES = (".txt", ".jsonl", ".json")


class CorpusUnavailable(RuntimeError):
    """The statistics corpus could not be read; the message says how to point at local text."""


REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def local_path(spec: str) -> Path | None:
    """The local file/folder ``spec`` names, or None for a hub name.

    Relative paths are tried from the current folder, then from the repository root (the shipped
    hparams name ``assets/corpus`` that way, so they work from any folder). Anything that looks like a path but exists
    nowhere is an error, not a hub lookup with a misleading message.
    """
    path = Path(spec).expanduser()
    for candidate in (path, REPO_ROOT / path):
        if candidate.exists():
            return candidate.resolve()
    if spec.startswith((".", "~", "/")) or path.suffix in TEXT_SUFFIXES:  # "org/name" stays a hub id
        looked = "" if path.is_absolute() else f" (looked in {', '.join(dict.fromkeys(map(str, (Path.cwd(), REPO_ROOT))))})"
        raise CorpusUnavailable(f"local statistics corpus {spec!r} does not exist{looked}")
    return None


def load_corpus_texts(spec: str, n_samples: int) -> list[str]:
    """At most ``n_samples`` non-empty texts from ``spec`` (a path or a hub dataset name)."""
    path = local_path(spec)
    texts = _read_local(path, n_samples) if path is not None else _read_hub(spec, n_samples)
    texts = [t for t in texts if t.strip()][:n_samples]
    if not texts:
        raise CorpusUnavailable(f"statistics corpus {spec!r} holds no text")
    return texts


@dataclass
class CorpusRef:
    """A statistics corpus as the cache sees it.

    ``key``: what the statistics depend on. A local corpus is read now (a bad line fails before
    any model work) and keyed by the digest of the texts actually used, so neither the spelling of
    its path nor files beyond the first ``n_samples`` texts matter. A hub corpus is keyed by the
    dataset and config it resolves to plus ``n_samples``, so a cached run needs no network (the
    hub's content at a name is trusted not to change). ``about``: where it came from (not keyed).
    """

    spec: str
    n_samples: int
    key: dict
    about: dict
    texts: list[str] | None = None

    def load(self) -> list[str]:
        if self.texts is None:
            self.texts = load_corpus_texts(self.spec, self.n_samples)
        return self.texts

    @property
    def label(self) -> str:
        """A short readable name for file names."""
        return self.about["label"]


def resolve_corpus(spec: str, n_samples: int) -> CorpusRef:
    path = local_path(spec)
    if path is None:
        name, config = hub_dataset(spec)
        key = {"hub_dataset": name, "config": config, "n_samples": n_samples}
        return CorpusRef(spec, n_samples, key, {"spec": spec, "label": corpus_id(spec)})
    texts = load_corpus_texts(spec, n_samples)
    if len(texts) < n_samples:
        # The statistics are over what is there; the cache file is named by that count, not the request.
        log.warning("mom2_n_samples=%d but statistics corpus %s holds %d non-empty texts: C0 is estimated from "
                    "those %d (lower mom2_n_samples to silence this, or point mom2_dataset at a larger corpus)",
                    n_samples, path, len(texts), len(texts))
    key = {"texts_sha256": texts_digest(texts), "n_texts": len(texts)}
    return CorpusRef(spec, len(texts), key, {"spec": spec, "path": str(path), "label": path.stem}, texts)


def texts_digest(texts: list[str]) -> str:
    """SHA-256 over the texts, each prefixed by its length (so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def corpus_id(spec: str) -> str:
    """A short name for cache files: local paths get a hash of their absolute location, hub names
    the dataset and config they resolve to (an alias shares the cache of what it stands for)."""
    path = local_path(spec)
    if path is not None:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        return f"{path.name}-{digest}"
    name, config = hub_dataset(spec)
    return "-".join(part.replace("/", "_") for part in (name, config) if part)


def hub_dataset(spec: str) -> tuple[str, str | None]:
    """The (hub dataset, config) a hub name stands for; names not in HUB_CORPORA go as they are."""
    return HUB_CORPORA.get(spec, (spec, None))


class CorpusFormatError(CorpusUnavailable):
    """A corpus file that cannot be parsed; the message names the file and the line."""


def _read_local(path: Path, n_samples: int) -> list[str]:
    """Texts from the file or the folder's files (sorted), stopping once ``n_samples`` non-empty
    texts are in hand: later files are not read (nor checked)."""
    files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise CorpusUnavailable(f"folder {path} has no {'/'.join(TEXT_SUFFIXES)} files for statistics")
    texts: list[str] = []
    for file in files:
        texts.extend(_read_file(file))
        if sum(1 for t in texts if t.strip()) >= n_samples:
            break
    return texts


def _read_file(file: Path) -> list[str]:
    raw = _decode(file)
    if file.suffix == ".jsonl":
        return [_jsonl_text(line, file, number) for number, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if file.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise CorpusFormatError(f"{file}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(data, list):
            raise CorpusFormatError(f"{file}: expected a JSON list of strings or {{'text': ...}} objects")
        return [_text_of(item, f"{file}: item {i}") for i, item in enumerate(data)]
    # Plain text: paragraphs are separated by blank lines (WikiText's hold a single space).
    return [p.strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]


def _decode(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise CorpusFormatError(f"{file}:{line}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def _jsonl_text(line: str, file: Path, number: int) -> str:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusFormatError(f"{file}:{number}: not a JSON object ({err.msg}): {line[:80]!r}") from None
    return _text_of(item, f"{file}:{number}")


def _text_of(item, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise CorpusFormatError(f"{where}: each item must be a string or an object with a 'text' field, got {item!r:.80}")


HUB_SAMPLE_SEED = 1  # the original's FixedRandomSubsetSampler(seed=1)


def hub_sample_indices(n_rows: int, n_samples: int) -> list[int]:
    """The original's sample of a hub split: ``random.Random(1)`` shuffles every row index and the
    first ``n_samples`` are read, so it depends on the split's length and order (not the first N)."""
    order = list(range(n_rows))
    random.Random(HUB_SAMPLE_SEED).shuffle(order)
    return order[:n_samples]


def _read_hub(spec: str, n_samples: int) -> list[str]:
    name, config = hub_dataset(spec)
    try:
        import datasets

        # The whole split, not a stream: the original's sample needs its length (Wikipedia: a large download).
        ds = datasets.load_dataset(name, config, split="train")
        return [ds[i]["text"] for i in hub_sample_indices(len(ds), n_samples)]
    except Exception as err:  # offline, removed dataset, missing 'text' column...
        raise CorpusUnavailable(
            f"could not load the statistics corpus {spec!r} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Offline, point mom2_dataset (hparams) or --mom2_dataset "
            "at a local .txt/.jsonl/.json file or a folder of them, e.g. assets/corpus (shipped: WikiText)"
        ) from None

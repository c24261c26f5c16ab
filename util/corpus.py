"""Texts for covariance statistics: a local text/JSONL file or folder, or a `datasets` hub name."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

# Hub names of the original project and the (dataset, config) they stand for. The original's
# ("wikipedia", "20200501.en") is gone from the hub: its name now means the current English dump
# of the maintained Wikipedia dataset (streamed, so nothing is downloaded in full).
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
        raise CorpusUnavailable(f"local statistics corpus {spec!r} does not exist (looked in {Path.cwd()} and {REPO_ROOT})")
    return None


def load_corpus_texts(spec: str, n_samples: int) -> list[str]:
    """At most ``n_samples`` non-empty texts from ``spec`` (a path or a hub dataset name)."""
    path = local_path(spec)
    texts = _read_local(path) if path is not None else _read_hub(spec, n_samples)
    texts = [t for t in texts if t.strip()][:n_samples]
    if not texts:
        raise CorpusUnavailable(f"statistics corpus {spec!r} holds no text")
    return texts


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


def _read_local(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise CorpusUnavailable(f"folder {path} has no {'/'.join(TEXT_SUFFIXES)} files for statistics")
    texts: list[str] = []
    for file in files:
        texts.extend(_read_file(file))
    return texts


def _read_file(file: Path) -> list[str]:
    raw = file.read_text(encoding="utf-8")
    if file.suffix == ".jsonl":
        return [_text_of(json.loads(line), file) for line in raw.splitlines() if line.strip()]
    if file.suffix == ".json":
        data = json.loads(raw)
        if not isinstance(data, list):
            raise CorpusUnavailable(f"{file}: expected a JSON list of strings or {{'text': ...}} objects")
        return [_text_of(item, file) for item in data]
    # Plain text: paragraphs are separated by blank lines (WikiText's hold a single space).
    return [p.strip() for p in re.split(r"\n\s*\n", raw) if p.strip()]


def _text_of(item, file: Path) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise CorpusUnavailable(f"{file}: each item must be a string or an object with a 'text' field, got {item!r:.80}")


def _read_hub(spec: str, n_samples: int) -> list[str]:
    name, config = hub_dataset(spec)
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split="train", streaming=True)
        return [row["text"] for row, _ in zip(ds, range(n_samples))]
    except Exception as err:  # offline, removed dataset, missing 'text' column...
        raise CorpusUnavailable(
            f"could not load the statistics corpus {spec!r} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Offline, point mom2_dataset (hparams) or --mom2_dataset "
            "at a local .txt/.jsonl/.json file or a folder of them, e.g. assets/corpus (shipped: WikiText)"
        ) from None

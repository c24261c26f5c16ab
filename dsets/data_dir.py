"""Where data files live, and fetching a missing one from the canonical download root.

The data folder is DATA_DIR of ``globals.yml`` (:mod:`util.globals`) unless a caller overrides it.
"""
from __future__ import annotations

import http.client
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from util.atomic_files import atomic_path
from util.globals import DEFAULT_GLOBALS, GLOBALS_FILE, REPO_ROOT, load_globals, resolve_global_dir  # noqa: F401 (re-exported)

DOWNLOAD_TIMEOUT_S = 60.0

Downloader = Callable[[str, Path], None]


class DataFileMissing(FileNotFoundError):
    """A data file is neither on disk nor downloadable; the message says where to put it."""

    def __init__(self, filename: str, url: str, folder: Path, reason: str) -> None:
        super().__init__(filename, url, folder, reason)
        self.filename, self.url, self.folder, self.reason = filename, url, Path(folder), reason
        self.message = (
            f"data file {filename!r} is not in {self.folder} and could not be downloaded from {url} "
            f"({reason}). Fetch it on a machine with internet access and put it at "
            f"{self.folder / filename}, or point DATA_DIR in globals.yml (or --data_dir) at a "
            "folder that has it."
        )

    def __str__(self) -> str:  # OSError would format its args as "[Errno ...]"
        return self.message

    def __reduce__(self):  # OSError's own pickling loses the arguments (worker processes re-raise it)
        return type(self), (self.filename, self.url, self.folder, self.reason)


def resolve_data_dir(override: str | Path | None = None) -> Path:
    """The data folder: ``override`` if given, else DATA_DIR from globals.yml."""
    return resolve_global_dir("DATA_DIR", override)


def dataset_url(filename: str) -> str:
    """Canonical URL of a data file of the original project."""
    root = load_globals()["REMOTE_ROOT_URL"].rstrip("/")
    return f"{root}/data/dsets/{filename}"


def download_file(url: str, dest: Path) -> None:
    """Stream ``url`` to ``dest`` with a progress bar; a partial download never takes dest's name."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            written = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(dest).name}") as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        if total is not None and written != total:
            raise OSError(f"connection closed after {written} of {total} bytes")


def ensure_file(
    data_dir: str | Path,
    filename: str,
    url: str | None = None,
    download: Downloader | None = None,
) -> Path:
    """Path of ``data_dir/filename``, downloading it first if it is missing.

    ``download`` defaults to :func:`download_file` looked up at call time, so tests can
    monkeypatch ``dsets.data_dir.download_file`` (or pass their own) and never touch the network.
    """
    folder = Path(data_dir)
    path = folder / filename
    if path.is_file():
        return path
    url = dataset_url(filename) if url is None else url
    fetch = download_file if download is None else download
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fetch(url, path)
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, refused, short reads
        raise DataFileMissing(filename, url, folder, f"{type(exc).__name__}: {exc}") from exc
    if not path.is_file():
        raise DataFileMissing(filename, url, folder, "the download finished but wrote no file")
    return path

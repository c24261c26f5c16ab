"""Atomic file writes: a reader (or a crash) never sees half a file under the final name."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class WriteError(OSError):
    """A file could not be written (disk full, folder not writable); the message names it and the fix."""

    def __str__(self) -> str:  # OSError would format its args as "[Errno ...]"
        return self.args[1] if len(self.args) > 1 else super().__str__()


def is_write_failure(err: BaseException) -> bool:
    """An OSError that says the disk is full or the folder is not writable (not a network or logic error)."""
    return isinstance(err, OSError) and err.errno in FULL | NOT_WRITABLE


def write_error(path: str | Path, err: OSError) -> WriteError:
    """``err`` (a write failure) restated: which file, what happened, what to do."""
    if err.errno in FULL:
        hint = ("the disk is full: free space or write to another disk (--results_dir, --stats_dir), "
                "then resume (--continue_from_run)")
    else:
        hint = "the folder is not writable: pass a writable folder (--results_dir, --stats_dir)"
    # The path as filename too: a caller with its own flags to suggest can restate the message.
    return WriteError(err.errno, f"cannot write {path} ({err.strerror or err}); {hint}", str(path))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; once the block has written it, it replaces ``path``.

    The temp file lives in the target folder, so ``os.replace`` is a same-filesystem rename. If
    the block raises, the temp file is removed and ``path`` keeps its previous content. A full disk
    or an unwritable folder is a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise (write_error(path, err) if is_write_failure(err) else err) from None
    os.close(handle)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: the file gets the mode open() would give it
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if not is_write_failure(err) or isinstance(err, WriteError):
            raise
        raise write_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically; NaN/inf are refused (they are not JSON)."""
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def save_torch_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (tensors, state dicts)."""
    import torch

    with atomic_path(path) as tmp:
        # Through our own file object: torch then reports a failed write as a RuntimeError whose
        # context is the OSError (disk full...), which is what the caller needs to see.
        with open(tmp, "wb") as out:
            try:
                torch.save(obj, out)
                out.flush()
                os.fsync(out.fileno())
            except RuntimeError as err:
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise
    return Path(path)

"""A run's hyperparameter file: found by name or path, read as its method's class, or said to be another's."""
from __future__ import annotations

from pathlib import Path

from experiments.algorithms import ALGORITHMS
from experiments.settings import RunError
from util.hparams import HyperParamsError


def resolve_hparams_path(hparams_dir: str, fname: str, hparams_root: Path) -> Path:
    """``fname`` as a path, else under ``hparams/<hparams_dir>/`` (MEMIT_seq/prune/rect read MEMIT's)."""
    given = Path(fname).expanduser()
    for candidate in (given, hparams_root / hparams_dir / fname):
        if candidate.is_file():
            return candidate
    available = sorted(p.name for p in (hparams_root / hparams_dir).glob("*.json"))
    raise RunError(f"hyperparameter file {fname!r} not found as a path nor under {hparams_root / hparams_dir}/ "
                   f"(available: {', '.join(available) or 'none'})")


def load_hparams(alg_name: str, path: Path):
    """The method's hyperparameters from ``path``; a file of another method's keys says which method."""
    alg = ALGORITHMS[alg_name]
    try:
        return alg.hparams_class.from_json(path)
    except HyperParamsError as err:
        if "unknown key" not in str(err) and "missing required key" not in str(err):
            raise
        for name, other in ALGORITHMS.items():
            if other.hparams_class is alg.hparams_class:
                continue
            try:
                other.hparams_class.from_json(path)
            except HyperParamsError:
                continue
            raise HyperParamsError(f"{err}. The file reads as {name}'s hyperparameters: run it with "
                                   f"--alg_name={name}, or pass a {alg_name} file (hparams/{alg.hparams_dir}/)") from None
        raise

"""Typed hyperparameters loaded from JSON, with errors that name the key and the fix."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_type_hints

log = logging.getLogger(__name__)

T = TypeVar("T", bound="HyperParams")


class HyperParamsError(ValueError):
    """A bad hyperparameter file or value; the message says which key and how to fix it."""


@dataclasses.dataclass
class HyperParams:
    """Base for every method's hyperparameters: JSON round trip and key checking.

    Subclasses are dataclasses (``kw_only``, so a subclass may add required fields after the
    base's defaulted ones); fields without a default are required in the JSON.
    ``LEGACY_IGNORED``: keys the original files carry that this method does not use (dropped,
    logged). ``ALIASES``: old key name -> field name (renamed, logged). Any other unknown key,
    e.g. a misspelt one, stays an error naming it.
    """

    LEGACY_IGNORED: ClassVar[tuple[str, ...]] = ()
    ALIASES: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        path = Path(path)
        if not path.is_file():
            raise HyperParamsError(f"hyperparameter file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise HyperParamsError(f"hyperparameter file {path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
        if not isinstance(data, dict):
            raise HyperParamsError(f"{source}: expected a JSON object of hyperparameters, got {type(data).__name__}")
        data = cls._drop_legacy_keys(data, source)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise HyperParamsError(
                f"{source}: unknown key(s) {unknown} for {cls.__name__}; remove them "
                f"(known keys: {sorted(fields)})"
            )
        missing = [n for n, f in fields.items() if n not in data and _is_required(f)]
        if missing:
            raise HyperParamsError(f"{source}: missing required key(s) {missing} for {cls.__name__}; add them")
        hints = get_type_hints(cls)
        for name, value in data.items():
            _check_type(source, name, value, hints[name])
        try:
            return cls(**data)
        except HyperParamsError as err:
            raise HyperParamsError(f"{source}: {err}") from None

    @classmethod
    def _drop_legacy_keys(cls, data: dict[str, Any], source: str) -> dict[str, Any]:
        data = dict(data)
        ignored = sorted(k for k in data if k in cls.LEGACY_IGNORED)
        if ignored:
            log.info("%s: %s ignores key(s) %s (kept in the original files)", source, cls.__name__, ignored)
        for old, new in cls.ALIASES.items():
            if old in data:
                if new in data:
                    raise HyperParamsError(f"{source}: both '{old}' and its new name '{new}' are set; keep '{new}'")
                log.info("%s: key '%s' read as '%s'", source, old, new)
                data[new] = data.pop(old)
        return {k: v for k, v in data.items() if k not in cls.LEGACY_IGNORED}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_type(source: str, name: str, value: Any, hint: Any) -> None:
    """Catch the common JSON mistakes (a string for a number, a number for a list) early."""
    text = str(hint)
    if value is None:
        if "None" not in text:
            raise HyperParamsError(f"{source}: key '{name}' must not be null")
        return
    if hint is bool or text == "bool":
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str or text.startswith("str"):
        ok = isinstance(value, str)
    elif text.startswith("list"):
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        kind = getattr(hint, "__name__", text)
        raise HyperParamsError(f"{source}: key '{name}' must be {kind}, got {value!r}")

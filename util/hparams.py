"""Typed hyperparameters loaded from JSON, with errors that name the key and the fix."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import string
import typing
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
            data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_unique_keys(path),
                              parse_constant=_no_constant(path))
        except json.JSONDecodeError as err:
            raise HyperParamsError(f"hyperparameter file {path} is not valid JSON: {err}") from None
        except UnicodeDecodeError as err:
            raise HyperParamsError(f"hyperparameter file {path} is not UTF-8 text ({err.reason}); is it the right file?") \
                from None
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


def _unique_keys(path: Path):
    """A JSON object hook refusing a key given twice (json keeps the last one silently)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise HyperParamsError(f"{path}: key '{key}' is given twice; keep one")
            seen.add(key)
        return dict(pairs)
    return hook


def _no_constant(path: Path):
    """NaN and Infinity are not JSON; Python's reader takes them, and a NaN learning rate fails hours later."""
    def refuse(name: str) -> Any:
        raise HyperParamsError(f"{path}: {name} is not a usable hyperparameter value (nor standard JSON); write a number")
    return refuse


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
        if ok and not math.isfinite(value):
            raise HyperParamsError(f"{source}: key '{name}' must be a finite number, got {value!r}")
    elif hint is str or text.startswith("str"):
        ok = isinstance(value, str)
        if ok and name.endswith("_tmp"):
            _check_template(source, name, value)
    elif text.startswith("list"):
        ok = isinstance(value, list)
        if ok:
            _check_elements(source, name, value, hint)
    else:
        ok = True
    if not ok:
        kind = getattr(hint, "__name__", text)
        raise HyperParamsError(f"{source}: key '{name}' must be {kind}, got {value!r}")


def _check_elements(source: str, name: str, value: list, hint: Any) -> None:
    """``list[int]`` etc.: every element of the element type (a bool is not an int)."""
    lists = [h for h in (hint, *typing.get_args(hint)) if typing.get_origin(h) is list]  # list[int] | None too
    element = (typing.get_args(lists[0]) or (Any,))[0] if lists else Any
    for index, item in enumerate(value):
        if element is int:
            ok = isinstance(item, int) and not isinstance(item, bool)
        elif element is float:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)
        elif element is str:
            ok = isinstance(item, str)
        else:
            ok = True
        if not ok:
            raise HyperParamsError(f"{source}: key '{name}' must be a list of {element.__name__}, "
                                   f"but element {index} is {item!r}")


def _check_template(source: str, name: str, value: str) -> None:
    """A module template names one module per layer: exactly one empty ``{}`` placeholder."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as err:
        raise HyperParamsError(f"{source}: key '{name}'={value!r} is not a module template ({err}); "
                               "write the layer's place as {}, e.g. 'model.layers.{}.mlp.down_proj'") from None
    if fields != [""]:
        raise HyperParamsError(f"{source}: key '{name}'={value!r} must hold the layer's place as one empty {{}} "
                               "(e.g. 'model.layers.{}.mlp.down_proj')")

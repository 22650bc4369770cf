"""Reading a run config: one YAML file plus ``--set key=value`` overrides, validated at the edge.

The model is the caller's (``pipelines.registry.RunConfig`` for ``synthrag run``): unknown keys are
errors, so a typo never falls back to a default silently. A config that does not validate raises
:class:`ConfigError`, whose message a person can act on: one line per problem, naming the dotted
key, the value given and the type expected, and for an unknown key the closest valid one.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config (file, ``--set`` or flags) that does not validate; the message says how to fix it."""


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is a value ({nxt!r}), not a section")
        d = nxt
    d[keys[-1]] = value


def read_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_path(data, key.strip(), value)
    return validate(model, data, source=str(path) if path else None)


def validate(model: type[M], data: dict, *, source: str | None = None, prefix: str = "") -> M:
    """``model.model_validate(data)``, its errors explained (:func:`explain`) as a ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(explain(e, model, source=source, prefix=prefix)) from None


# ----------------------------------------------------------------------------- explaining errors
def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``; other annotations as they are."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _field_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, Any]:
    """The model that holds the last key of ``loc`` and that key's annotation (None if unknown);
    for an empty ``loc``, ``model`` itself."""
    holder: Any = None
    ann: Any = model
    for part in loc:
        ann = _unwrap(ann)
        if isinstance(part, int):  # an item of a list/tuple/dict value
            args = typing.get_args(ann)
            ann = args[-1] if args else Any
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            holder = ann
            field = ann.model_fields.get(part)
            if field is None:
                return holder, None
            ann = field.annotation
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[-1] if typing.get_args(ann) else Any
        else:
            return None, None
    return holder, ann


def type_name(ann: Any) -> str:
    """A person's name for a type: ``int``, ``list[str]``, ``'model' or 'regex'``, ``a section``."""
    ann = _unwrap(ann)
    if typing.get_origin(ann) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(ann))
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "a section (mapping)"
        return ann.__name__
    text = str(ann).replace("typing.", "").replace("pathlib.", "")
    return re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)


def _key(loc: tuple, prefix: str) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def explain(e: ValidationError, model: type[BaseModel], *, source: str | None = None, prefix: str = "") -> str:
    """One line per error of ``e``: the key, what was given, what is expected."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = _key(loc, prefix)
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            _, parent_type = _field_at(model, loc[:-1])
            parent_type = _unwrap(parent_type)
            valid = list(parent_type.model_fields) if isinstance(parent_type, type) and issubclass(
                parent_type, BaseModel) else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
            parent = _key(loc[:-1], prefix)
            where = f"{parent}." if loc[:-1] or prefix else ""
            hint = (f"did you mean {where}{close[0]}?" if close
                    else f"valid keys{' of ' + parent if loc[:-1] or prefix else ''}: {', '.join(valid)}")
            lines.append(f"unknown key {key} ({hint})")
            continue
        _, ann = _field_at(model, loc)
        if err["type"] == "missing":
            lines.append(f"{key} is required" + (f" ({type_name(ann)})" if ann is not None else ""))
        elif err["type"] in ("value_error", "assertion_error") or ann is None:
            lines.append(f"{key}: {msg}")
        else:
            given = repr(err.get("input"))
            given = given if len(given) <= 60 else given[:57] + "..."
            expected = "" if err["type"] == "literal_error" else f" (expected {type_name(ann)})"
            lines.append(f"{key} = {given}: {msg[0].lower() + msg[1:]}{expected}")
    head = f"invalid config{f' in {source}' if source else ''}: "
    return head + ("; ".join(lines) if len(lines) <= 1 else "\n  " + "\n  ".join(lines))

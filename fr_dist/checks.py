"""Checks of user values at start-up: each refusal is one FRError naming the key, the value and the fix.

config.validate, models.check_options and data.check_options use them, so
every message reads alike: ``KEY=VALUE must be RULE: FIX``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from fr_dist.errors import FRError


def show(value) -> str:
    """`value` as written in an override: null, true, 'abc', [3,32,32]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(show, value)) + "]"
    return repr(value)


def reason(e: BaseException) -> str:
    """An exception's first line, without torch's allocator preamble: "can't allocate memory: ... bytes"."""
    line = (str(e).splitlines() or [type(e).__name__])[0]
    return line.split("DefaultCPUAllocator: ", 1)[-1].split(". Error code", 1)[0][:200]


def refuse(key: str, value, rule: str, fix: str):
    raise FRError(f"{key}={show(value)} must be {rule}: {fix}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(key: str, value, low: int = 1, null: bool = False, fix: str | None = None) -> None:
    """An int >= `low` (or null, where allowed)."""
    if (value is None and null) or (is_int(value) and value >= low):
        return
    rule = ("a positive integer" if low == 1 else f">= {low}") + (" or null" if null else "")
    refuse(key, value, rule, fix or f"set {key}={low} or more" + (f", or {key}=null" if null else ""))


def number(key: str, value, example, low: float = 0.0, high: float | None = None, open_low: bool = False,
           null: bool = False) -> None:
    """A finite number in [low, high) ((low, high) with `open_low`; no upper end without `high`)."""
    if value is None and null:
        return
    if is_number(value) and (value > low if open_low else value >= low) and (high is None or value < high):
        return
    if high is not None:
        rule = f"a number in {'(' if open_low else '['}{low:g}, {high:g})"
    else:
        rule = "a positive number" if (open_low and low == 0) else f"a number {'>' if open_low else '>='} {low:g}"
    refuse(key, value, rule + (" or null" if null else ""), f"set e.g. {key}={show(example)}")


def probability(key: str, value, example) -> None:
    """A rate in [0, 1): dropout, momentum."""
    number(key, value, example, 0.0, 1.0)


def int_list(key: str, value, example, low: int = 1, empty: bool = True, increasing: bool = False) -> None:
    """A list of ints >= `low`; with `increasing`, strictly increasing."""
    element = "a positive integer" if low == 1 else f"an integer >= {low}"
    fix = f"set e.g. {key}={show(example)}"
    if not isinstance(value, (list, tuple)):
        refuse(key, value, f"a list of {'positive integers' if low == 1 else f'integers >= {low}'}", fix)
    for v in value:
        if not is_int(v) or v < low:
            raise FRError(f"{key}={show(value)}: the element {show(v)} must be {element}: {fix}")
    if not value and not empty:
        refuse(key, value, "a non-empty list", fix)
    if increasing and any(a >= b for a, b in zip(value, value[1:])):
        refuse(key, value, "strictly increasing", f"sort it and drop repeats, e.g. {key}={show(sorted(set(value)))}")


def choice(key: str, value, options) -> None:
    """One of `options`."""
    if value not in options:
        refuse(key, value, f"one of {', '.join(map(str, options))}", f"set e.g. {key}={options[0]}")


# ---------------------------------------------------------------------------------------
# Keys and types of a dataclass schema (config.Config): every key a field, every value of its type.

KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
EXAMPLES = {bool: True, int: 1, float: 0.1, str: "NAME", list: []}


def field_of(schema, key: str):
    """(type, optional, example) of field `key` of dataclass `schema`; None for no such field."""
    found = {f.name: f for f in fields(schema)}
    if key not in found:
        return None
    tp = get_type_hints(schema)[key]
    optional = get_origin(tp) is Union and type(None) in get_args(tp)
    if optional:
        tp = next(a for a in get_args(tp) if a is not type(None))
    f = found[key]
    example = f.default if f.default is not MISSING else None
    if f.default_factory is not MISSING:
        example = f.default_factory()
    if example is None or (isinstance(example, str) and "${" in example):
        example = EXAMPLES.get(tp)
    return tp, optional, example


def fits(value, tp) -> bool:
    """`value` is of type `tp`: no bool for a number, no number for a bool, no container for a string."""
    if isinstance(value, str) and tp in (int, float, bool):
        return True  # OmegaConf converts '12' and 'true'; what it refuses, `converted` reports
    return {bool: isinstance(value, bool), int: is_int(value), list: isinstance(value, list),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, (str, int, float)) and not isinstance(value, bool)}.get(tp, True)


def type_error(key: str, value, tp, optional: bool, example) -> str:
    return (f"bad configuration: {key}={show(value)} must be {KINDS.get(tp, getattr(tp, '__name__', tp))}"
            f"{' or null' if optional else ''}: set e.g. {key}={show(example)}")


def unknown_key(key: str, value, names: list[str]) -> str:
    section, _, last = key.rpartition(".")
    close = difflib.get_close_matches(last, names, 1)
    where = f"a key of {section} (its keys: {', '.join(names)})" if section else "a configuration key"
    return (f"bad configuration: {key}={show(value)} is not {where}: remove it"
            + (f" (did you mean {close[0]}?)" if close else ""))


def check_keys(section: dict, schema, prefix: str, unknown=unknown_key) -> None:
    """Every key of `section` (plain containers) is a field of dataclass `schema`, its value of the field's type.

    `unknown(key, value, field names)` words the refusal of a key the schema lacks. Refusals start
    with "bad configuration:", as Hydra's do: the config's shape is wrong, not a value's range.
    """
    names = [f.name for f in fields(schema)]
    for key, value in section.items():
        full, found = prefix + key, field_of(schema, key)
        if found is None:
            raise FRError(unknown(full, value, names))
        tp, optional, example = found
        if tp is Any or (value is None and optional):
            continue
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise FRError(f"bad configuration: {full}={show(value)} must be a section with the keys "
                              f"{', '.join(f.name for f in fields(tp))}: remove the override")
            check_keys(value, tp, full + ".")
        elif value is None or not fits(value, tp):
            raise FRError(type_error(full, value, tp, optional, example))


def converted(full_key: str, msg: str, section: dict, schema, prefix: str) -> str:
    """OmegaConf's refusal `msg` of the value at `full_key` (several lines) as one line: key, value, fix."""
    found, value = None, None
    for part in (full_key or "").split("."):
        value = section.get(part) if isinstance(section, dict) else None
        found = field_of(schema, part) if is_dataclass(schema) else None
        section, schema = value, found[0] if found else None
    if found is None:
        return f"bad configuration: {prefix}{full_key}: {str(msg).splitlines()[0]}"
    return type_error(prefix + full_key, value, *found)

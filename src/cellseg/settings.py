"""Settings declared once: a dataclass field carries its default, bounds, help and label.

A config class (:class:`cellseg.config.ModelConfig`, :class:`cellseg.config.TrainConfig`) declares each
parameter with :func:`setting`; :func:`check_settings` validates all of them when an instance is made, the
CLI derives its flags with :func:`add_arguments`/:func:`from_arguments`, and the KNIME nodes derive their
parameters from :func:`describe`. Changing a default or a bound is one line in the config class.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from cellseg.errors import InputError, require_bool, require_int, require_number, require_pair, require_str

KINDS = ("int", "float", "bool", "pair", "str", "dict")


@dataclass(frozen=True)
class Setting:
    """What is known of one parameter besides its default (kept in the field's metadata)."""

    kind: str
    help: str
    label: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None is a valid value ("use the model's own", "keep it")
    flag: str | None = None  # the CLI flag; "" = no flag
    advanced: bool = False

    def check(self, value: Any, name: str) -> Any:
        """``value`` normalised (pairs to tuples, ints to floats), or :class:`InputError` naming ``name``."""
        if value is None and self.optional:
            return None
        if self.kind == "int":
            value = require_int(value, name, _int(self.lo), _int(self.hi))
        elif self.kind == "float":
            value = require_number(value, name, self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open)
        elif self.kind == "bool":
            value = require_bool(value, name)
        elif self.kind == "pair":
            value = require_pair(value, name, _int(self.lo))
            if self.choices and any(v not in self.choices for v in value):
                raise InputError(f"{name}={value} must be {_or(self.choices)} per axis")
            if self.hi is not None and max(value) > self.hi:
                raise InputError(f"{name}={value} must be integers <= {_int(self.hi)}")
            return value
        elif self.kind == "str":
            value = require_str(value, name)
        elif self.kind == "dict":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise InputError(f"{name}={value!r} must be a dict of names to values")
            return dict(value)
        if self.choices and value not in self.choices:
            raise InputError(f"{name}={value!r} must be {_or(self.choices)}")
        return value

    def bounds_text(self) -> str:
        lo, hi = _num(self.lo), _num(self.hi)
        if lo is not None and hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return ""


def setting(default: Any, help: str, kind: str | None = None, *, label: str = "", lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
            choices: Sequence[Any] | None = None, optional: bool = False, flag: str | None = None,
            advanced: bool = False) -> Any:
    """A dataclass field declaring one parameter: its default and everything the CLI and the nodes show.

    ``kind`` is guessed from the default when it is not given (``None`` defaults need it).
    """
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict", tuple: "pair"}[type(default)]
    assert kind in KINDS, kind
    meta = Setting(kind, help, label, lo, hi, lo_open, hi_open, tuple(choices) if choices else None,
                   optional or default is None, flag, advanced)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"setting": meta})
    return field(default=default, metadata={"setting": meta})


def settings_of(cls: Any) -> dict[str, tuple[Setting, Any]]:
    """``{name: (Setting, default)}`` of a config class, in declaration order."""
    return {f.name: (f.metadata["setting"], _default(f)) for f in fields(cls) if "setting" in f.metadata}


def describe(cls: Any, name: str) -> tuple[Setting, Any]:
    """The :class:`Setting` and default of one parameter (``KeyError`` for an unknown name: a bug)."""
    return settings_of(cls)[name]


def check_settings(obj: Any) -> None:
    """Check and normalise every declared field of ``obj`` in place (first bad one raises)."""
    for name, (meta, _) in settings_of(type(obj)).items():
        setattr(obj, name, meta.check(getattr(obj, name), name))


def strict_init(cls: type) -> type:
    """Make a dataclass refuse unknown or surplus arguments with an :class:`InputError` naming them (as
    csbdeep's configs do) instead of Python's ``TypeError``."""
    init = cls.__init__
    names = [f.name for f in fields(cls)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InputError(f"{cls.__name__}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(names)}")
        if len(args) > len(names):
            raise InputError(f"{cls.__name__}: {len(args)} positional arguments given, it has {len(names)} "
                             f"parameters ({', '.join(names)})")
        twice = sorted(set(names[:len(args)]) & set(kwargs))
        if twice:
            raise InputError(f"{cls.__name__}: parameter(s) {', '.join(twice)} given twice")
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


# -- command line ---------------------------------------------------------------------------------

def flag_of(name: str, meta: Setting, default: Any) -> str:
    """The CLI flag of a parameter: ``--steps-per-epoch``; booleans on by default get ``--no-...``."""
    if meta.flag:
        return meta.flag
    base = name.replace("_", "-")
    return f"--no-{base}" if meta.kind == "bool" and default else f"--{base}"


def arg_type(meta: Setting, name: str) -> Callable[[str], Any]:
    """An argparse ``type`` that parses the text and checks it as the config would (one-line errors)."""

    def parse(text: str) -> Any:
        t = text.strip()
        if meta.optional and t.lower() in ("none", "off"):
            return None
        try:
            if meta.kind == "int":
                value: Any = int(t)
            elif meta.kind == "float":
                value = float(t)
            elif meta.kind == "pair":
                parts = [int(p) for p in t.replace("x", ",").split(",") if p.strip()]
                value = parts * 2 if len(parts) == 1 else parts
            else:
                value = t
            return meta.check(value, name)
        except (ValueError, InputError):
            raise argparse.ArgumentTypeError(f"expected {expected(meta)}, got {text!r}") from None

    parse.__name__ = {"int": "integer", "float": "number", "pair": "pair"}.get(meta.kind, meta.kind)
    return parse


def expected(meta: Setting) -> str:
    """What a valid value looks like, in words (for CLI errors)."""
    if meta.kind == "pair":
        return f"N or N,M with {_or(meta.choices)}" if meta.choices else f"N or N,M with integers >= {_num(meta.lo)}"
    what = {"int": "an integer", "float": "a number"}.get(meta.kind, "a value")
    if meta.choices:
        return f"one of {_or(meta.choices)}"
    bounds = meta.bounds_text()
    return f"{what} {bounds}" if bounds else what


def add_arguments(parser: Any, cls: Any, names: Sequence[str], defaults: dict[str, Any] | None = None) -> None:
    """Add one flag per named parameter of ``cls`` to ``parser`` (or an argument group), with the declared
    help, bounds and default (``defaults`` overrides some, e.g. the retraining budget)."""
    table = settings_of(cls)
    for name in names:
        meta, default = table[name]
        default = (defaults or {}).get(name, default)
        flag = flag_of(name, meta, default)
        shown = "" if default is None else f" (default {_show(default)})"
        if meta.kind == "bool":
            parser.add_argument(flag, dest=name, action="store_false" if default else "store_true",
                                help=f"turn off: {meta.help}" if default else meta.help)
            parser.set_defaults(**{name: bool(default)})
        else:
            parser.add_argument(flag, dest=name, type=arg_type(meta, name), default=default,
                                help=f"{meta.help}{shown}", metavar=_METAVARS.get(meta.kind, "VALUE"))


_METAVARS = {"int": "N", "float": "X", "pair": "N[,M]", "str": "NAME"}


def from_arguments(cls: Any, args: argparse.Namespace, names: Sequence[str], **extra: Any) -> Any:
    """An instance of ``cls`` from the parsed flags of :func:`add_arguments` (plus ``extra``)."""
    return cls(**{n: getattr(args, n) for n in names}, **extra)


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None  # type: ignore[misc]


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def _num(v: float | None) -> Any:
    if v is None:
        return None
    return int(v) if float(v).is_integer() and abs(v) < 1e15 else v


def _or(values: Sequence[Any] | None) -> str:
    items = [str(v) for v in values or ()]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _show(value: Any) -> str:
    """A default as the help shows it: a square pair ``(128, 128)`` as ``128``."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        return str(value[0])
    return str(value)

"""Exceptions raised by the cellseg backend.

Every error caused by user input is an :class:`InputError` whose message names the offending file,
row, column or parameter, so that the CLI and the KNIME nodes can show it as it is.
"""

from __future__ import annotations


class CellsegError(Exception):
    """Base class of all cellseg errors."""


class InputError(CellsegError, ValueError):
    """Bad user input: a file, image, mask, table row or parameter that cannot be used."""


class ModelLoadError(CellsegError):
    """A model could not be loaded (missing files, offline download, incompatible bundle)."""


class CancelledError(CellsegError):
    """Long-running work was cancelled by the user."""


# -- parameter checks -----------------------------------------------------------------------------
# Small helpers that turn a wrong type or value of a public parameter into an InputError naming it
# (instead of a bare TypeError/ValueError from deep inside numpy or TensorFlow).


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        if not lo_open and not hi_open and isinstance(lo, int) and isinstance(hi, int):
            return f"between {lo} and {hi}"
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return "valid"


def require_int(value: object, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an ``int``; :class:`InputError` naming ``name`` unless it is an integer (not a bool, str
    or float) within ``[lo, hi]``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name}={value!r} must be an integer, not {type(value).__name__}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(f"{name}={v} must be {_range_text(lo, hi)}")
    return v


def require_number(value: object, name: str, lo: float | None = None, hi: float | None = None, *,
                   lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite ``float``; :class:`InputError` naming ``name`` unless it is a real number (not a
    bool or str) within the range (``lo_open``/``hi_open`` exclude the bound)."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name}={value!r} must be a number, not {type(value).__name__}")
    v = float(value)
    bad = (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
           or (hi is not None and (v >= hi if hi_open else v > hi)))
    if bad:
        raise InputError(f"{name}={v} must be {_range_text(lo, hi, lo_open, hi_open)}")
    return v


def require_pair(value: object, name: str, lo: int | None = None) -> tuple[int, int]:
    """``value`` as ``(int, int)``: an integer ``n`` means ``(n, n)``; otherwise a list/tuple/array of two
    integers. :class:`InputError` naming ``name`` for anything else (e.g. the string ``"2,2"``)."""
    import numbers

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise InputError(f"{name}={value!r} must be an integer or a pair of integers, e.g. (2, 2)")
    items = list(value)  # type: ignore[call-overload]
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
        raise InputError(f"{name}={value!r} must be an integer or a pair of integers, e.g. (2, 2)")
    pair = (int(items[0]), int(items[1]))
    if lo is not None and min(pair) < lo:
        raise InputError(f"{name}={pair} must be integers >= {lo}")
    return pair


def require_bool(value: object, name: str) -> bool:
    """``value`` as a ``bool``; :class:`InputError` naming ``name`` unless it is ``True``/``False`` (or 0/1)."""
    import numbers

    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and int(value) in (0, 1)):
        return bool(value)
    raise InputError(f"{name}={value!r} must be True or False, not {type(value).__name__}")


def require_callable(value: object, name: str) -> None:
    """:class:`InputError` naming ``name`` unless ``value`` is ``None`` or callable."""
    if value is not None and not callable(value):
        raise InputError(f"{name}={value!r} must be a function (or None), not {type(value).__name__}")


def require_str(value: object, name: str, allow_empty: bool = False) -> str:
    """``value`` if it is a (non-empty) string; otherwise :class:`InputError` naming ``name``."""
    if not isinstance(value, str):
        raise InputError(f"{name}={value!r} must be a string, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InputError(f"{name} must not be empty")
    return value

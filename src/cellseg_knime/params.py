"""Node parameters derived from the backend's settings declarations (:mod:`cellseg.config`).

A node declares ``epochs = param(TrainConfig, "epochs")`` and gets the label, help, default and bounds the
CLI shows too; :func:`config_from` turns a node's parameter groups into the config in one explicit call
and refuses a parameter it would otherwise drop.
"""

from __future__ import annotations

from typing import Any

import knime.extension as knext

from cellseg.errors import InputError
from cellseg.settings import Setting, describe


def _validator(meta: Setting, label: str) -> Any:
    def check(value: Any) -> None:
        if meta.kind == "pair":  # a square side in the dialog
            meta.check((value, value), label)
        else:
            meta.check(value, label)

    return check


def param(cls: Any, name: str, *, default: Any = None, label: str | None = None, help: str | None = None,
          min_value: Any = None, advanced: bool | None = None, **kwargs: Any) -> Any:
    """The KNIME parameter of ``cls``'s setting ``name``: label, help, default and bounds from its declaration.

    ``default``/``min_value`` override the declared ones where a node differs on purpose (e.g. the
    retraining budget, or 0 meaning "the model's own"); pairs (patch size, grid) become one square side.
    """
    meta, declared = describe(cls, name)
    value = declared if default is None else default
    if meta.kind == "pair" and isinstance(value, tuple):
        value = value[0]
    text = help or meta.help[:1].upper() + meta.help[1:] + "."
    common = dict(is_advanced=meta.advanced if advanced is None else advanced, **kwargs)
    lab = label or meta.label or name
    if meta.kind == "bool":
        return knext.BoolParameter(lab, text, bool(value), **common)
    if meta.kind == "str":
        return knext.StringParameter(lab, text, value, **common)
    lo = meta.lo if min_value is None else min_value
    validator = None if min_value is not None else _validator(meta, lab)
    if meta.kind in ("int", "pair"):
        if meta.choices:  # bounds are the choices; the dialog takes any integer and the check names them
            return knext.IntParameter(lab, text, int(value), validator=validator, **common)
        return knext.IntParameter(lab, text, int(value), validator=validator, min_value=_int(lo),
                                  max_value=_int(meta.hi), **common)
    return knext.DoubleParameter(lab, text, float(value), validator=validator, min_value=lo, max_value=meta.hi,
                                 **common)


def config_from(cls: Any, *groups: Any, skip: tuple[str, ...] = (), **values: Any) -> Any:
    """``cls(**settings)`` from a node's parameter groups: every parameter whose name is a field of ``cls``
    is passed on; one that is neither a field nor in ``skip`` is an error (a setting silently dropped would
    be a bug). ``values`` add or replace fields. Bad values raise ``knext.InvalidParametersError``."""
    fields = cls.__dataclass_fields__
    found: dict[str, Any] = {}
    for group in groups:
        for name in _parameter_names(group):
            if name in skip:
                continue
            if name not in fields:
                raise TypeError(f"parameter {name!r} of {type(group).__name__} is not a {cls.__name__} field")
            found[name] = getattr(group, name)
    try:
        return cls(**{**found, **values})
    except InputError as err:
        raise knext.InvalidParametersError(str(err)) from err


def _parameter_names(group: Any) -> list[str]:
    """Names of the parameters declared on a parameter group's class (KNIME wraps that class in a subclass)."""
    names: dict[str, None] = {}
    for klass in reversed(type(group).__mro__):
        for n, v in vars(klass).items():
            if getattr(v, "__kind__", None) == "parameter":
                names[n] = None
    return list(names)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)

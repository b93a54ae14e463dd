"""Node parameters derived from the backend's settings declarations (:mod:`cellseg.config`).

A node declares ``epochs = param(TrainConfig, "epochs")`` and gets the label, help, default and bounds the
CLI shows too; :func:`config_from` turns a node's parameter groups into the config in one explicit call
and refuses a parameter it would otherwise drop. An optional setting (``None`` = "the model's own",
"never", ...) becomes a number parameter where 0 means ``None`` (``param(..., zero="never")``), and a
string setting with choices a drop-down of its choices.
"""

from __future__ import annotations

import re
from typing import Any

import knime.extension as knext

from cellseg.errors import InputError
from cellseg.settings import Setting, describe

#: The extension version that added the training time budget, early stopping and the input adaptation
#: (scale, inversion, channels): settings saved by an older version lack them and get their defaults.
SINCE_0_3 = "0.3.0"
#: Attribute marking a node parameter whose value 0 means the setting's ``None`` (read by :func:`config_from`).
ZERO_IS_NONE = "_cellseg_zero_is_none"
#: A declared help's note on ``None`` ("(none: never)", "(default: the model's own)"): replaced in the node.
_NONE_NOTE = re.compile(r"\s*\((?:none|default): [^()]*\)$")


def _validator(meta: Setting, label: str, zero_ok: bool = False) -> Any:
    def check(value: Any) -> None:
        if zero_ok and value == 0:
            return
        if meta.kind == "pair":  # a square side in the dialog
            meta.check((value, value), label)
        else:
            meta.check(value, label)

    return check


def param(cls: Any, name: str, *, default: Any = None, label: str | None = None, help: str | None = None,
          min_value: Any = None, advanced: bool | None = None, zero: str | None = None, **kwargs: Any) -> Any:
    """The KNIME parameter of ``cls``'s setting ``name``: label, help, default and bounds from its declaration.

    ``default``/``min_value`` override the declared ones where a node differs on purpose (e.g. the
    retraining budget); pairs (patch size, grid) become one square side. ``zero`` (for an optional
    setting) makes 0 a valid value meaning ``None`` and says what that is, e.g. ``zero="never"``: the help
    ends "(0 = never)", the default is 0 unless ``default`` is given, and :func:`config_from` passes
    ``None``. A string setting with choices is a drop-down of them. Other keywords (``since_version``, ...)
    go to the KNIME parameter.
    """
    meta, declared = describe(cls, name)
    if zero is not None:
        assert meta.optional and meta.kind in ("int", "float", "pair"), f"{name}: only optional numbers take zero="
        declared = 0 if declared is None else declared
    value = declared if default is None else default
    if meta.kind == "pair" and isinstance(value, tuple):
        value = value[0]
    if help:
        text = help
    else:
        text = meta.help[:1].upper() + meta.help[1:]
        if meta.optional:  # the node has no None: the declaration's note on it does not apply
            text = _NONE_NOTE.sub("", text)
        text += f" (0 = {zero})." if zero is not None else "."
    common = dict(is_advanced=meta.advanced if advanced is None else advanced, **kwargs)
    lab = label or meta.label or name
    if meta.kind == "bool":
        return knext.BoolParameter(lab, text, bool(value), **common)
    if meta.kind == "str":
        if meta.choices:
            return knext.StringParameter(lab, text, value, enum=[str(c) for c in meta.choices],
                                         validator=_validator(meta, lab), **common)
        return knext.StringParameter(lab, text, value, **common)
    if zero is not None:
        lo, validator = 0, _validator(meta, lab, zero_ok=True)
    else:
        lo = meta.lo if min_value is None else min_value
        validator = None if min_value is not None else _validator(meta, lab)
    if meta.kind in ("int", "pair"):
        if meta.choices:  # bounds are the choices; the dialog takes any integer and the check names them
            parameter = knext.IntParameter(lab, text, int(value), validator=validator, **common)
        else:
            parameter = knext.IntParameter(lab, text, int(value), validator=validator, min_value=_int(lo),
                                           max_value=_int(meta.hi), **common)
    else:
        parameter = knext.DoubleParameter(lab, text, float(value), validator=validator, min_value=lo,
                                          max_value=meta.hi, **common)
    if zero is not None:
        setattr(parameter, ZERO_IS_NONE, True)
    return parameter


def config_from(cls: Any, *groups: Any, skip: tuple[str, ...] = (), **values: Any) -> Any:
    """``cls(**settings)`` from a node's parameter groups: every parameter whose name is a field of ``cls``
    is passed on (0 as ``None`` for a parameter declared with ``param(..., zero=...)``); one that is neither
    a field nor in ``skip`` is an error (a setting silently dropped would be a bug). ``values`` add or
    replace fields. Bad values raise ``knext.InvalidParametersError``."""
    fields = cls.__dataclass_fields__
    found: dict[str, Any] = {}
    for group in groups:
        for name, descriptor in _parameters(group).items():
            if name in skip:
                continue
            if name not in fields:
                raise TypeError(f"parameter {name!r} of {type(group).__name__} is not a {cls.__name__} field")
            value = getattr(group, name)
            found[name] = None if getattr(descriptor, ZERO_IS_NONE, False) and value == 0 else value
    try:
        return cls(**{**found, **values})
    except InputError as err:
        raise knext.InvalidParametersError(str(err)) from err


def _parameters(group: Any) -> dict[str, Any]:
    """The parameters declared on a parameter group's class by name (KNIME wraps that class in a subclass)."""
    found: dict[str, Any] = {}
    for klass in reversed(type(group).__mro__):
        for n, v in vars(klass).items():
            if getattr(v, "__kind__", None) == "parameter":
                found[n] = v
    return found


def _int(v: Any) -> int | None:
    return None if v is None else int(v)

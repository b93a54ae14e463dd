"""Node parameters in settings.xml: the schema from the node classes, values <-> the ``model`` config, overrides.

A node's parameters live in the ``model`` config of its ``settings.xml``: one entry per parameter
(``xint``, ``xdouble``, ``xboolean``, ``xstring``; a list of strings as a config with ``array-size`` and
numbered entries), a nested config per parameter group, ``json-type_Internals`` = ``OBJECT`` in every
object config and the extension version in ``extension_version_Internals``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .common import WorkflowError
from .extension import _knext_parameter
from .xmlconfig import Config, Entry, format_double
from .xmlconfig import b as _b
from .xmlconfig import i as _i
from .xmlconfig import s as _s

JSON_TYPE_KEY = "json-type_Internals"
VERSION_KEY = "extension_version_Internals"
INTERNAL_SUFFIX = "_Internals"
STRING_ARRAY = "xstring[]"  # a parameter holding a list of strings (config with array-size and entries)


@dataclass
class ParamInfo:
    """A node parameter (leaf: ``xtype`` set) or parameter group (``children`` set)."""

    name: str
    xtype: str | None = None
    children: dict[str, ParamInfo] | None = None
    descriptor: Any = None
    since: Any = None

    @property
    def is_group(self) -> bool:
        return self.children is not None


def _is_group(obj: Any) -> bool:
    return getattr(obj, "__kind__", None) == "parameter_group"


def _leaf_type(descriptor: Any, value: Any) -> str:
    kp = _knext_parameter()
    for cls_name, xtype in (("BoolParameter", "xboolean"), ("IntParameter", "xint"),
                            ("DoubleParameter", "xdouble"), ("MultiColumnParameter", STRING_ARRAY)):
        cls = getattr(kp, cls_name, None)
        if cls is not None and isinstance(descriptor, cls):
            return xtype
    for cls_name in ("StringParameter", "MultilineStringParameter", "EnumParameter", "ColumnParameter",
                     "LocalPathParameter"):
        cls = getattr(kp, cls_name, None)
        if cls is not None and isinstance(descriptor, cls):
            return "xstring"
    return _type_of_value(value)  # another parameter kind: judge by its default value


def _type_of_value(value: Any) -> str:
    if isinstance(value, bool):
        return "xboolean"
    if isinstance(value, int):
        return "xint"
    if isinstance(value, float):
        return "xdouble"
    if isinstance(value, list | tuple):
        return STRING_ARRAY
    return "xstring"


def parameter_schema(node: Any) -> dict[str, ParamInfo]:
    """The parameters of a node instance (or group), from its descriptors, in declaration order."""
    kp = _knext_parameter()
    values = kp.extract_parameters(node)["model"]
    return _schema_of(node, values)


def _schema_of(obj: Any, values: Mapping[str, Any]) -> dict[str, ParamInfo]:
    kp = _knext_parameter()
    getter = getattr(kp, "_get_parameters", None)
    if getter is not None:
        descriptors = getter(obj)
    else:  # fall back to class attributes
        descriptors = {n: getattr(type(obj), n, None) for n in values}
    out: dict[str, ParamInfo] = {}
    for name, value in values.items():
        d = descriptors.get(name)
        since = getattr(d, "_since_version", None)
        if isinstance(value, dict) or _is_group(d):
            out[name] = ParamInfo(name, children=_schema_of(d, value if isinstance(value, dict) else {}),
                                  descriptor=d, since=since)
        else:
            out[name] = ParamInfo(name, xtype=_leaf_type(d, value), descriptor=d, since=since)
    return out


def flatten_schema(schema: Mapping[str, ParamInfo], prefix: str = "") -> dict[str, ParamInfo]:
    """Leaf parameters by dotted path (``group.param``)."""
    out: dict[str, ParamInfo] = {}
    for name, info in schema.items():
        if info.children is not None:
            out.update(flatten_schema(info.children, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info
    return out


def values_to_model(values: Mapping[str, Any], schema: Mapping[str, ParamInfo], version: str) -> Config:
    """The ``model`` config of a node's settings.xml from parameter values."""
    model = _object_config(values, schema, "")
    model[VERSION_KEY] = _s(version)
    return model


def _object_config(values: Mapping[str, Any], schema: Mapping[str, ParamInfo], prefix: str) -> Config:
    out: Config = {JSON_TYPE_KEY: _s("OBJECT")}
    for name, info in schema.items():
        value = values.get(name)
        if info.children is not None:
            out[name] = _object_config(value or {}, info.children, f"{prefix}{name}.")
        else:
            out[name] = _leaf_entry(value, info.xtype or "xstring", f"{prefix}{name}")
    return out


def _leaf_entry(value: Any, xtype: str, path: str) -> Any:
    if xtype == STRING_ARRAY:
        if value is None:
            return {"null_Internals": _b(True)}
        items = [str(v) for v in value]
        return {"array-size": _i(len(items)), **{str(i): _s(v) for i, v in enumerate(items)}}
    if value is None:
        return Entry(xtype, None)
    if xtype == "xboolean":
        return _b(bool(value))
    if xtype == "xint":
        return _i(value)
    if xtype == "xdouble":
        return Entry("xdouble", format_double(float(value)))
    return _s(str(value))


def model_to_values(model: Config, schema: Mapping[str, ParamInfo], where: str, saved_version: str,
                    warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Parameter values from a ``model`` config, checked against the node's parameters.

    Missing parameters (unless newer than ``saved_version``, which then get their default) and entries of
    the wrong type raise WorkflowError naming ``where`` and the parameter.
    """
    kp = _knext_parameter()
    saved = kp.Version.parse_version(saved_version) if hasattr(kp, "Version") else None
    return _values_of(model, schema, where, "", saved, warn)


def _values_of(config: Config, schema: Mapping[str, ParamInfo], where: str, prefix: str, saved: Any,
               warn: Callable[[str], None] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in schema.items():
        path = f"{prefix}{name}"
        if name not in config:
            if saved is not None and info.since is not None and info.since > saved:
                continue  # added in a later extension version: inject_parameters sets its default
            raise WorkflowError(f"{where}: parameter '{path}' is missing from its settings.xml")
        item = config[name]
        if info.children is not None:
            if not isinstance(item, dict):
                raise WorkflowError(f"{where}: parameter group '{path}' is stored as an entry "
                                    f"({item.type}), expected a config")
            out[name] = _values_of(item, info.children, where, f"{path}.", saved, warn)
        elif info.xtype == STRING_ARRAY:
            if not isinstance(item, dict):
                raise WorkflowError(f"{where}: parameter '{path}' is stored as {item.type}, expected a "
                                    "string array config")
            if item.get("null_Internals") == _b(True):
                out[name] = None
            else:
                out[name] = [e.python() for k, e in item.items() if k != "array-size" and isinstance(e, Entry)]
        else:
            if not isinstance(item, Entry):
                raise WorkflowError(f"{where}: parameter '{path}' is stored as a config, expected {info.xtype}")
            if item.type != info.xtype:
                raise WorkflowError(f"{where}: parameter '{path}' is stored as {item.type} but the node "
                                    f"declares {info.xtype}")
            try:
                out[name] = item.python()
            except ValueError:
                raise WorkflowError(f"{where}: parameter '{path}' has the value {item.value!r}, "
                                    f"not a valid {info.xtype}") from None
    extra = [k for k in config if k not in schema and not k.endswith(INTERNAL_SUFFIX)]
    if extra and warn is not None:
        warn(f"{where}: ignoring unknown parameter(s) {', '.join(prefix + k for k in extra)}")
    return out


def parse_value(text: str, xtype: str, what: str) -> Any:
    """Convert an override's text to the parameter's type."""
    try:
        if xtype == "xint":
            return int(text)
        if xtype == "xdouble":
            return float(text)
        if xtype == "xboolean":
            low = text.strip().lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
        if xtype == STRING_ARRAY:
            return [t.strip() for t in text.split(",") if t.strip()]
    except ValueError:
        raise WorkflowError(f"{what}: {text!r} is not a valid {xtype[1:]} value") from None
    return text


def coerce_value(value: Any, xtype: str, what: str) -> Any:
    """Check/convert a Python value given for a parameter of type ``xtype``."""
    if isinstance(value, str) and xtype != "xstring":
        return parse_value(value, xtype, what)
    ok = {
        "xboolean": isinstance(value, bool),
        "xint": isinstance(value, int) and not isinstance(value, bool),
        "xdouble": isinstance(value, int | float) and not isinstance(value, bool),
        "xstring": value is None or isinstance(value, str),
        STRING_ARRAY: value is None or isinstance(value, list | tuple),
    }.get(xtype, True)
    if not ok:
        raise WorkflowError(f"{what}: {value!r} ({type(value).__name__}) is not a valid {xtype[1:]} value")
    if xtype == "xdouble":
        return float(value)
    if xtype == STRING_ARRAY and value is not None:
        return [str(v) for v in value]
    return value


def set_value(values: dict[str, Any], schema: Mapping[str, ParamInfo], path: str, value: Any, where: str,
              from_text: bool) -> None:
    """Set the parameter at dotted ``path`` in nested ``values`` (checked against ``schema``)."""
    parts = path.split(".")
    node_values, node_schema = values, schema
    for i, part in enumerate(parts):
        info = node_schema.get(part)
        sofar = ".".join(parts[: i + 1])
        if info is None:
            choices = ", ".join(flatten_schema(schema))
            raise WorkflowError(f"{where}: no parameter '{sofar}' (parameters: {choices})")
        if i < len(parts) - 1:
            if info.children is None:
                raise WorkflowError(f"{where}: '{sofar}' is a parameter, not a parameter group")
            node_values = node_values.setdefault(part, {})
            node_schema = info.children
        else:
            if info.children is not None:
                leaves = ", ".join(f"{path}.{k}" for k in flatten_schema(info.children))
                raise WorkflowError(f"{where}: '{path}' is a parameter group; set one of {leaves}")
            what = f"{where}: parameter '{path}'"
            xtype = info.xtype or "xstring"
            node_values[part] = parse_value(value, xtype, what) if from_text else coerce_value(value, xtype, what)


def check_values(node: Any, values: Mapping[str, Any], schema: Mapping[str, ParamInfo], where: str,
                 prefix: str = "") -> None:
    """Run each parameter's own validator on its value; WorkflowError naming the parameter."""
    for name, info in schema.items():
        if name not in values:
            continue
        if info.children is not None:
            check_values(node, values[name], info.children, where, f"{prefix}{name}.")
            continue
        validate = getattr(info.descriptor, "_validate", None)
        if validate is None:
            continue
        try:
            validate(values[name])
        except (TypeError, ValueError) as err:
            raise WorkflowError(f"{where}: parameter '{prefix}{name}' = {values[name]!r} is invalid: {err}") from None


def inject(node: Any, values: dict[str, Any], schema: Mapping[str, ParamInfo], version: str, where: str) -> None:
    """Validate and inject parameter values into a node instance (KNIME's load path)."""
    kp = _knext_parameter()
    check_values(node, values, schema, where)
    try:
        kp.validate_parameters(node, {"model": values}, version)
        kp.inject_parameters(node, {"model": values}, parameters_version=version)
    except (TypeError, ValueError, KeyError) as err:
        raise WorkflowError(f"{where}: invalid parameters: {err}") from None
    except Exception as err:  # InvalidParametersError and validators' own errors
        raise WorkflowError(f"{where}: invalid parameters: {err}") from None

"""KNIME workflow files for the cellseg extension: a generator and a headless runner.

* **Format.** A KNIME workflow is a folder with ``workflow.knime`` (nodes, connections) and one folder per
  node with its ``settings.xml``, all in KNIME's XMLConfig format. A pure-Python node has the factory
  :data:`PYTHON_NODE_FACTORY`, ``factory_settings/extension_id`` (``group_id.name`` of ``knime.yml``) and
  ``factory_settings/node_id`` (the ``id`` given to ``@knext.node``), and its parameters in the ``model``
  config: one entry per parameter (``xint``, ``xdouble``, ``xboolean``, ``xstring``), a nested config per
  parameter group, ``json-type_Internals`` = ``OBJECT`` in every object config and the extension version in
  ``extension_version_Internals``. In ``workflow.knime`` port 0 of a node is its flow-variable port; the
  data ports (tables, models, ...) count from 1. A ``.knwf`` is a zip of the workflow folder.
* **Generator** (:func:`write_workflow`, :func:`make_workflows`, ``cellseg make-workflows``): from a compact
  :class:`WorkflowDef`; ids, factory settings, parameter names and types come from the node classes.
* **Runner** (:func:`run_workflow`, ``cellseg run-workflow``): reads the files, instantiates this extension's
  nodes, injects their parameters (plus ``--set`` overrides), runs ``configure`` on all nodes and then
  ``execute`` in topological order, and writes every output table (CSV or Parquet), image, view and port
  object into the output folder. Every error names the node.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

from cellseg.errors import CellsegError

__all__ = [
    "Connection", "Entry", "Extension", "NodeDef", "RunResult", "WorkflowDef", "WorkflowError",
    "load_definitions", "load_extension", "load_workflow", "make_workflows", "parameter_schema", "read_config",
    "register_cli", "run_workflow", "write_config", "write_knwf", "write_workflow",
]

XMLCONFIG_NS = "http://www.knime.org/2008/09/XMLConfig"
PYTHON_NODE_FACTORY = "org.knime.python3.nodes.extension.ExtensionNodeSetFactory$DynamicExtensionNodeFactory"
JSON_TYPE_KEY = "json-type_Internals"
VERSION_KEY = "extension_version_Internals"
INTERNAL_SUFFIX = "_Internals"
KNIME_VERSION = "5.1.0"  # the workflow format version written (KNIME 5.1 and later load it)
KNIME_CREATED_BY = "5.1.1.v202309110912"
_BUNDLE = {
    "node-bundle-name": "KNIME Python 3 - Nodes",
    "node-bundle-symbolic-name": "org.knime.python3.nodes",
    "node-bundle-vendor": "KNIME AG, Zurich, Switzerland",
    "node-bundle-version": "5.1.1.v202310101053",
    "node-feature-name": "KNIME Python Extension Development (Labs)",
    "node-feature-symbolic-name": "org.knime.features.python3.nodes.feature.group",
    "node-feature-vendor": "KNIME AG, Zurich, Switzerland",
    "node-feature-version": "5.1.2.v202310101053",
}
_INT_TYPES = ("xint", "xlong", "xshort", "xbyte")
_FLOAT_TYPES = ("xdouble", "xfloat")
STRING_ARRAY = "xstring[]"  # a parameter holding a list of strings (config with array-size and entries)


class WorkflowError(CellsegError):
    """A workflow cannot be read, generated or run; the message names the node (and parameter)."""


# =================================================================================================
# XMLConfig
# =================================================================================================


@dataclass(frozen=True)
class Entry:
    """One ``<entry>`` of an XMLConfig: its type (``xint``, ``xstring``, ...) and text value (None = isnull)."""

    type: str
    value: str | None

    def python(self) -> Any:
        """The value as a Python object (int, float, bool, str or None)."""
        if self.value is None:
            return None
        if self.type in _INT_TYPES:
            return int(self.value)
        if self.type in _FLOAT_TYPES:
            return float(self.value)
        if self.type == "xboolean":
            return self.value == "true"
        return self.value


Config = dict[str, Any]  # key -> Entry | Config, in file order


def _escape(text: str) -> str:
    """KNIME escapes control characters (and "%%") in values as ``%%`` plus a 5-digit code."""
    out = []
    for i, ch in enumerate(text):
        if ord(ch) < 32 or (ch == "%" and text[i + 1: i + 2] == "%"):
            out.append(f"%%{ord(ch):05d}")
        else:
            out.append(ch)
    return "".join(out)


def _unescape(text: str) -> str:
    return re.sub(r"%%(\d{5})", lambda m: chr(int(m.group(1))), text)


def read_config(path: str | os.PathLike, what: str | None = None) -> Config:
    """Parse a KNIME XMLConfig file into nested dicts of :class:`Entry` (raises WorkflowError)."""
    path = Path(path)
    what = what or str(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise WorkflowError(f"{what}: file not found") from None
    except ET.ParseError as err:
        raise WorkflowError(f"{what}: not valid XML ({err})") from None
    if root.tag != f"{{{XMLCONFIG_NS}}}config":
        raise WorkflowError(f"{what}: not a KNIME XMLConfig file (root element {root.tag})")
    return _parse_children(root, what)


def _parse_children(element: ET.Element, what: str) -> Config:
    out: Config = {}
    for child in element:
        tag = child.tag.split("}")[-1]
        key = child.get("key")
        if key is None:
            raise WorkflowError(f"{what}: <{tag}> without a key")
        if tag == "config":
            out[key] = _parse_children(child, what)
        elif tag == "entry":
            null = child.get("isnull") == "true"
            out[key] = Entry(child.get("type", "xstring"), None if null else _unescape(child.get("value", "")))
        else:
            raise WorkflowError(f"{what}: unexpected element <{tag}>")
    return out


def config_to_xml(key: str, config: Config) -> str:
    """The XMLConfig text of ``config`` (KNIME's layout: 4-space indent, ``isnull`` for None)."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<config xmlns="{XMLCONFIG_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             f'xsi:schemaLocation="{XMLCONFIG_NS} http://www.knime.org/XMLConfig_2008_09.xsd" '
             f"key={quoteattr(key)}>"]
    _config_lines(config, 1, lines)
    lines.append("</config>")
    return "\n".join(lines) + "\n"


def _config_lines(config: Config, depth: int, lines: list[str]) -> None:
    pad = "    " * depth
    for key, value in config.items():
        if isinstance(value, Entry):
            if value.value is None:
                lines.append(f'{pad}<entry key={quoteattr(key)} type="{value.type}" isnull="true" value=""/>')
            else:
                lines.append(f"{pad}<entry key={quoteattr(key)} type=\"{value.type}\" "
                             f"value={quoteattr(_escape(value.value))}/>")
        elif value:
            lines.append(f"{pad}<config key={quoteattr(key)}>")
            _config_lines(value, depth + 1, lines)
            lines.append(f"{pad}</config>")
        else:
            lines.append(f"{pad}<config key={quoteattr(key)}/>")


def write_config(path: str | os.PathLike, key: str, config: Config) -> None:
    """Write ``config`` as an XMLConfig file (atomically)."""
    _write_text(Path(path), config_to_xml(key, config))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _s(value: str | None) -> Entry:
    return Entry("xstring", value)


def _i(value: int) -> Entry:
    return Entry("xint", str(int(value)))


def _b(value: bool) -> Entry:
    return Entry("xboolean", "true" if value else "false")


def _format_double(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _get(config: Config, path: str, what: str, default: Any = ...) -> Any:
    """Value at ``a/b/c`` in a parsed config (Entry -> python value); WorkflowError if missing."""
    node: Any = config
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise WorkflowError(f"{what}: missing '{path}'")
        node = node[part]
    return node.python() if isinstance(node, Entry) else node


# =================================================================================================
# The extension: knime.yml and the node registry
# =================================================================================================


@dataclass
class Extension:
    """This extension's identity (from ``knime.yml``) and where its nodes are registered."""

    extension_id: str  # group_id.name
    version: str
    root: Path | None = None
    node_ids: frozenset[str] | None = None  # None: every node registered in this process

    def node(self, node_id: str) -> Any:
        """The registered node (``knime.extension.nodes._Node``) or None."""
        nodes = _knext_nodes()._nodes
        if self.node_ids is not None and node_id not in self.node_ids:
            return None
        return nodes.get(node_id)

    def known_ids(self) -> list[str]:
        nodes = _knext_nodes()._nodes
        return sorted(n for n in nodes if self.node_ids is None or n in self.node_ids)


def _knext_nodes() -> Any:
    from cellseg_knime.compat import ensure_knime_extension

    ensure_knime_extension()
    return importlib.import_module("knime.extension.nodes")


def _knext_parameter() -> Any:
    _knext_nodes()
    return importlib.import_module("knime.extension.parameter")


def _knext() -> Any:
    _knext_nodes()
    return importlib.import_module("knime.extension")


def default_extension_root() -> Path:
    """The folder with ``knime.yml``: the repository root (``src/cellseg_knime/..``/..)."""
    import cellseg_knime

    return Path(cellseg_knime.__file__).resolve().parents[2]


def read_knime_yml(path: str | os.PathLike) -> dict[str, str]:
    """The top-level ``key: value`` scalars of a knime.yml (no YAML library needed)."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"{path}: knime.yml not found (it names the extension: group_id, name, version)")
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$", line)
        if m and m.group(2) and not m.group(2).startswith(("|", ">")):
            value = re.sub(r"\s+#.*$", "", m.group(2))
            out[m.group(1)] = value.strip("\"'")
    return out


_loaded_extensions: dict[Path, Extension] = {}


def load_extension(root: str | os.PathLike | None = None) -> Extension:
    """Import the extension module named in ``<root>/knime.yml`` (default ``src/extension.py``) once.

    Uses the real ``knime.extension`` when importable, else the offline stand-in.
    """
    root_path = Path(root).resolve() if root is not None else default_extension_root()
    if root_path in _loaded_extensions:
        return _loaded_extensions[root_path]
    meta = read_knime_yml(root_path / "knime.yml")
    missing = [k for k in ("group_id", "name") if not meta.get(k)]
    if missing:
        raise WorkflowError(f"{root_path / 'knime.yml'}: missing {', '.join(missing)}")
    module_file = root_path / (meta.get("extension_module", "src/extension") + ".py")
    if not module_file.is_file():
        raise WorkflowError(f"extension module {module_file} not found (extension_module in knime.yml)")
    name = module_file.stem
    module = sys.modules.get(name)
    if module is None or Path(getattr(module, "__file__", "") or "").resolve() != module_file.resolve():
        src = str(module_file.parent)
        if src not in sys.path:
            sys.path.insert(0, src)
        spec = importlib.util.spec_from_file_location(name, module_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise WorkflowError(f"cannot load the extension module {module_file}: "
                                f"{type(err).__name__}: {err}") from err
    version = meta.get("version", "0.0.0")
    setter = getattr(_knext_parameter(), "set_extension_version", None)
    if setter is not None:
        setter(version)
    # node_ids None: every registered node (the node modules may have been imported before this call)
    ext = Extension(f"{meta['group_id']}.{meta['name']}", version, root_path, None)
    _loaded_extensions[root_path] = ext
    return ext


# =================================================================================================
# Parameters: schema from the node classes, settings <-> values, overrides
# =================================================================================================


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
        return Entry("xdouble", _format_double(float(value)))
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


# =================================================================================================
# Workflow definitions and the generator
# =================================================================================================


@dataclass
class NodeDef:
    """A node of a compact workflow definition: numeric id, node id, parameter overrides (dotted paths)."""

    id: int
    node_id: str
    params: dict[str, Any] = field(default_factory=dict)
    annotation: str = ""
    position: tuple[int, int] | None = None  # x, y on the canvas (default: laid out by depth)


@dataclass(frozen=True)
class Connection:
    """Output port ``source_port`` of node ``source`` -> input port ``dest_port`` of ``dest`` (0-based,
    as in the node's port decorators; KNIME's files count data ports from 1)."""

    source: int
    source_port: int
    dest: int
    dest_port: int


@dataclass
class WorkflowDef:
    """A compact workflow definition; :func:`write_workflow` turns it into KNIME's files."""

    folder: str
    title: str
    description: str
    nodes: list[NodeDef]
    connections: list[Connection]
    notes: str = ""  # shown as a workflow annotation next to the nodes
    tags: tuple[str, ...] = ()
    data: Callable[[Path], None] | None = None  # writes the workflow's data area (``<folder>/data``)


def c(source: int, source_port: int, dest: int, dest_port: int) -> Connection:
    """Shorthand for :class:`Connection`."""
    return Connection(source, source_port, dest, dest_port)


def node_folder_name(name: str, node_id: int) -> str:
    """KNIME's per-node folder name, e.g. ``Retrainer (#3)``."""
    safe = re.sub(r'[\\/:*?"<>|]', "_", name).strip() or "Node"
    return f"{safe} (#{node_id})"


_CREATED = "2025-01-01 00:00:00 +0000"
_CREATED_ISO = "2025-01-01T00:00:00.000+00:00"
_NODE_W, _NODE_H = 100, 76


def _layout(defn: WorkflowDef) -> dict[int, tuple[int, int]]:
    depth: dict[int, int] = {}
    order = _toposort([n.id for n in defn.nodes], [(x.source, x.dest) for x in defn.connections],
                      lambda i: f"node #{i}")
    for nid in order:
        preds = [x.source for x in defn.connections if x.dest == nid]
        depth[nid] = 1 + max((depth[p] for p in preds), default=-1)
    rows: dict[int, int] = {}
    pos: dict[int, tuple[int, int]] = {}
    for n in defn.nodes:
        if n.position is not None:
            pos[n.id] = n.position
            continue
        d = depth[n.id]
        row = rows.get(d, 0)
        rows[d] = row + 1
        pos[n.id] = (80 + 200 * d, 100 + 150 * row)
    return pos


def _port_type_name(port: Any) -> str:
    t = port.type
    return t if isinstance(t, str) else getattr(t, "id", str(t))


def _ports_compatible(out_port: Any, in_port: Any) -> bool:
    a, b = out_port.type, in_port.type
    if isinstance(a, str) or isinstance(b, str):
        if a == b:
            return bool(a != "PortType.BINARY" or out_port.id == in_port.id)
        return False
    check = getattr(b, "is_super_type_of", None)
    return bool(check(a)) if check is not None else a == b


def write_workflow(defn: WorkflowDef, dest: str | os.PathLike, extension: Extension) -> Path:
    """Write ``defn`` as a KNIME workflow folder ``dest/<defn.folder>``; returns the folder."""
    folder = Path(dest) / defn.folder
    ids = [n.id for n in defn.nodes]
    if len(set(ids)) != len(ids):
        raise WorkflowError(f"workflow {defn.folder}: duplicate node ids {ids}")
    by_id = {n.id: n for n in defn.nodes}
    registered: dict[int, Any] = {}
    for n in defn.nodes:
        reg = extension.node(n.node_id)
        if reg is None:
            raise WorkflowError(f"workflow {defn.folder}: node #{n.id} has the unknown node id "
                                f"'{n.node_id}' (known: {', '.join(extension.known_ids())})")
        registered[n.id] = reg
    for x in defn.connections:
        for nid in (x.source, x.dest):
            if nid not in by_id:
                raise WorkflowError(f"workflow {defn.folder}: connection {x} refers to no node #{nid}")
        outs, ins = registered[x.source].output_ports, registered[x.dest].input_ports
        src_name = f"'{registered[x.source].name}' (#{x.source})"
        dst_name = f"'{registered[x.dest].name}' (#{x.dest})"
        if not 0 <= x.source_port < len(outs):
            raise WorkflowError(f"workflow {defn.folder}: {src_name} has no output port {x.source_port}")
        if not 0 <= x.dest_port < len(ins):
            raise WorkflowError(f"workflow {defn.folder}: {dst_name} has no input port {x.dest_port}")
        if not _ports_compatible(outs[x.source_port], ins[x.dest_port]):
            raise WorkflowError(f"workflow {defn.folder}: output {x.source_port} of {src_name} "
                                f"({_port_type_name(outs[x.source_port])}) does not fit input {x.dest_port} "
                                f"of {dst_name} ({_port_type_name(ins[x.dest_port])})")
    for n in defn.nodes:
        wanted = set(range(len(registered[n.id].input_ports)))
        got = [x.dest_port for x in defn.connections if x.dest == n.id]
        if len(got) != len(set(got)) or set(got) != wanted:
            raise WorkflowError(f"workflow {defn.folder}: '{registered[n.id].name}' (#{n.id}) needs exactly one "
                                f"connection into each of its input ports {sorted(wanted)}, got {sorted(got)}")
    positions = _layout(defn)

    tmp = Path(tempfile.mkdtemp(prefix=f".{defn.folder}.", dir=Path(dest)))
    try:
        nodes_cfg: Config = {}
        for n in defn.nodes:
            reg = registered[n.id]
            instance = reg.node_factory()
            schema = parameter_schema(instance)
            values = _knext_parameter().extract_parameters(instance)["model"]
            where = f"workflow {defn.folder}: '{reg.name}' (#{n.id})"
            for path, value in n.params.items():
                set_value(values, schema, path, value, where, from_text=False)
            check_values(instance, values, schema, where)
            sub = node_folder_name(reg.name, n.id)
            x, y = positions[n.id]
            settings = _node_settings(reg, n, values, schema, extension, (x, y))
            write_config(tmp / sub / "settings.xml", "settings.xml", settings)
            nodes_cfg[f"node_{n.id}"] = {
                "id": _i(n.id),
                "node_settings_file": _s(f"{sub}/settings.xml"),
                "node_is_meta": _b(False),
                "node_type": _s("NativeNode"),
                "ui_classname": _s("org.knime.core.node.workflow.NodeUIInformation"),
                "ui_settings": {"extrainfo.node.bounds": {
                    "array-size": _i(4), "0": _i(x), "1": _i(y), "2": _i(_NODE_W), "3": _i(_NODE_H)}},
            }
        conns: Config = {}
        for k, x in enumerate(defn.connections):
            conns[f"connection_{k}"] = {"sourceID": _i(x.source), "destID": _i(x.dest),
                                        "sourcePort": _i(x.source_port + 1), "destPort": _i(x.dest_port + 1)}
        wf: Config = {
            "created_by": _s(KNIME_CREATED_BY),
            "created_by_nightly": _b(False),
            "version": _s(KNIME_VERSION),
            "name": _s(None),
            "authorInformation": {"authored-by": _s("cellseg"), "authored-when": _s(_CREATED),
                                  "lastEdited-by": _s("cellseg"), "lastEdited-when": _s(_CREATED)},
            "customDescription": _s(None),
            "state": _s("IDLE"),
            "workflow_credentials": {},
            "nodes": nodes_cfg,
            "connections": conns,
        }
        if defn.notes:
            max_x = max(p[0] for p in positions.values())
            wf["annotations"] = {"annotation_0": _annotation(defn.notes, 80, 10, max_x + _NODE_W + 40, 60,
                                                             "LEFT", 10, 16766976, 12)}
        wf["workflow_editor_settings"] = {
            "workflow.editor.snapToGrid": _b(True), "workflow.editor.ShowGrid": _b(False),
            "workflow.editor.gridX": _i(20), "workflow.editor.gridY": _i(20),
            "workflow.editor.zoomLevel": Entry("xdouble", "1.0"),
            "workflow.editor.curvedConnections": _b(True), "workflow.editor.connectionWidth": _i(2),
        }
        write_config(tmp / "workflow.knime", "workflow.knime", wf)
        if defn.data is not None:
            defn.data(tmp / "data")
        _write_text(tmp / "workflow-metadata.xml", _metadata_xml(defn))
        _write_text(tmp / "workflowset.meta", _workflowset_meta(defn))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.chmod(0o755)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _annotation(text: str, x: int, y: int, width: int, height: int, alignment: str, border: int,
                border_color: int, font: int) -> Config:
    return {
        "text": _s(text), "contentType": _s("text/plain"), "bgcolor": _i(16777215),
        "x-coordinate": _i(x), "y-coordinate": _i(y), "width": _i(width), "height": _i(height),
        "alignment": _s(alignment), "borderSize": _i(border), "borderColor": _i(border_color),
        "defFontSize": _i(font), "annotation-version": _i(20151123), "styles": {},
    }


def _node_settings(reg: Any, n: NodeDef, values: dict[str, Any], schema: Mapping[str, ParamInfo],
                   extension: Extension, pos: tuple[int, int]) -> Config:
    x, y = pos
    settings: Config = {
        "node_file": _s("settings.xml"),
        "flow_stack": {},
        "internal_node_subsettings": {"memory_policy": _s("CacheSmallInMemory")},
        "model": values_to_model(values, schema, extension.version),
        "nodeAnnotation": _annotation(n.annotation, x - 20, y + _NODE_H - 10, _NODE_W + 40, 15, "CENTER", 0,
                                      16777215, 11),
        "customDescription": _s(None),
        "state": _s("IDLE"),
        "factory": _s(PYTHON_NODE_FACTORY),
        "node-name": _s(reg.name),
        **{k: _s(v) for k, v in _BUNDLE.items()},
        "factory_settings": {"extension_id": _s(extension.extension_id), "node_id": _s(reg.id)},
        "name": _s(reg.name),
        "hasContent": _b(False),
        "isInactive": _b(False),
        "ports": {f"port_{k + 1}": {"index": _i(k + 1), "port_dir_location": _s(None)}
                  for k in range(len(reg.output_ports))},
        "filestores": {"file_store_location": _s(None), "file_store_id": _s(None)},
    }
    return settings


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _metadata_xml(defn: WorkflowDef) -> str:
    tags = "".join(f"\n        <tag>{_xml_text(t)}</tag>" for t in defn.tags)
    tags_xml = f"\n    <tags>{tags}\n    </tags>" if defn.tags else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<workflow-metadata content-type="text/plain" '
            'xmlns="http://www.knime.org/core/node/workflow/metadata/v1.0">\n'
            f"    <author>cellseg</author>\n    <created>{_CREATED_ISO}</created>\n"
            f"    <last-modified>{_CREATED_ISO}</last-modified>\n"
            f"    <description>{_xml_text(defn.title + chr(10) + chr(10) + defn.description)}</description>"
            f"{tags_xml}\n</workflow-metadata>\n")


def _workflowset_meta(defn: WorkflowDef) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<KNIMEMetaInfo nrOfElements="3" xmlns="http://www.knime.org/2.9/metainfo">\n'
            '    <element form="text" name="Author" read-only="false">cellseg</element>\n'
            '    <element form="date" name="Creation Date" read-only="false">1/0/2025/00:00:00 +00:00</element>\n'
            f'    <element form="multiline" name="Comments" read-only="false">'
            f"{_xml_text(defn.title + chr(10) + chr(10) + defn.description)}</element>\n"
            "</KNIMEMetaInfo>\n")


def write_knwf(folder: str | os.PathLike, archive: str | os.PathLike | None = None) -> Path:
    """Zip a workflow folder into a ``.knwf`` (top-level directory = the folder name), reproducibly."""
    folder = Path(folder)
    archive = Path(archive) if archive is not None else folder.with_suffix(".knwf")
    tmp = archive.with_name(archive.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}", (2025, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(archive)
    return archive


def load_definitions(path: str | os.PathLike | None = None) -> list[WorkflowDef]:
    """The ``WORKFLOWS`` list of a definitions file (default ``workflows/definitions.py``)."""
    path = Path(path) if path is not None else default_extension_root() / "workflows" / "definitions.py"
    if not path.is_file():
        raise WorkflowError(f"workflow definitions {path} not found")
    spec = importlib.util.spec_from_file_location("cellseg_workflow_definitions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    workflows = getattr(module, "WORKFLOWS", None)
    if not isinstance(workflows, list):
        raise WorkflowError(f"{path} defines no WORKFLOWS list")
    return workflows


def make_workflows(dest: str | os.PathLike, definitions: Sequence[WorkflowDef] | None = None,
                   extension: Extension | None = None, knwf: bool = True,
                   only: Iterable[str] | None = None) -> list[Path]:
    """Generate workflow folders (and ``.knwf`` archives) into ``dest``; returns the folders."""
    extension = extension or load_extension()
    definitions = list(definitions) if definitions is not None else load_definitions()
    wanted = set(only) if only else None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for defn in definitions:
        if wanted is not None and defn.folder not in wanted:
            continue
        folder = write_workflow(defn, dest, extension)
        if knwf:
            write_knwf(folder)
        out.append(folder)
    return out


# =================================================================================================
# Reading a workflow
# =================================================================================================


@dataclass
class WorkflowNode:
    """A node as read from a workflow folder."""

    id: int
    name: str
    settings_file: Path
    node_id: str
    model: Config
    version: str
    annotation: str = ""

    @property
    def label(self) -> str:
        return f"'{self.name}' (#{self.id})"


@dataclass
class Workflow:
    folder: Path
    nodes: dict[int, WorkflowNode]
    connections: list[Connection]  # data ports 0-based; flow-variable connections have port -1


def load_workflow(path: str | os.PathLike, extension: Extension) -> Workflow:
    """Read ``workflow.knime`` and every node's settings.xml; checks factories, ids and connections."""
    folder = Path(path)
    wf_file = folder / "workflow.knime" if folder.is_dir() else folder
    folder = wf_file.parent
    wf = read_config(wf_file, str(wf_file))
    nodes: dict[int, WorkflowNode] = {}
    for key, item in (_get(wf, "nodes", str(wf_file), {}) or {}).items():
        what = f"{wf_file}: {key}"
        nid = _get(item, "id", what)
        settings_rel = _get(item, "node_settings_file", what)
        if _get(item, "node_is_meta", what, False):
            raise WorkflowError(f"node #{nid}: metanodes and components are not supported by the headless runner")
        settings_file = folder / settings_rel
        where = f"node #{nid} ({settings_rel})"
        settings = read_config(settings_file, where)
        name = _get(settings, "name", where, None) or _get(settings, "node-name", where, None) or f"Node {nid}"
        label = f"'{name}' (#{nid})"
        factory = _get(settings, "factory", label, None)
        if factory != PYTHON_NODE_FACTORY:
            raise WorkflowError(f"node {label}: unknown node factory {factory!r}; the headless runner only runs "
                                f"this extension's pure-Python nodes ({extension.extension_id})")
        ext_id = _get(settings, "factory_settings/extension_id", label, None)
        node_id = _get(settings, "factory_settings/node_id", label, None)
        if ext_id != extension.extension_id:
            raise WorkflowError(f"node {label}: it belongs to the extension {ext_id!r}, not to "
                                f"{extension.extension_id!r}")
        if not node_id or extension.node(node_id) is None:
            raise WorkflowError(f"node {label}: unknown node id {node_id!r} (known: "
                                f"{', '.join(extension.known_ids())})")
        model = _get(settings, "model", label, None)
        if not isinstance(model, dict):
            raise WorkflowError(f"node {label}: its settings.xml has no 'model' config (the parameters)")
        version_entry = model.get(VERSION_KEY) or model.get("version_Internals")
        version = version_entry.python() if isinstance(version_entry, Entry) else "0.0.0"
        annotation = _get(settings, "nodeAnnotation/text", label, "") or ""
        if nid in nodes:
            raise WorkflowError(f"node {label}: duplicate node id {nid}")
        nodes[nid] = WorkflowNode(nid, name, settings_file, node_id, model, version, annotation)
    connections = []
    for key, item in (_get(wf, "connections", str(wf_file), {}) or {}).items():
        what = f"{wf_file}: {key}"
        src, dst = _get(item, "sourceID", what), _get(item, "destID", what)
        sp, dp = _get(item, "sourcePort", what), _get(item, "destPort", what)
        for nid, other in ((src, dst), (dst, src)):
            if nid not in nodes:
                known = nodes.get(other)
                names = f"node {known.label}" if known else f"node #{other}"
                raise WorkflowError(f"dangling connection {key}: {names} is connected to node #{nid}, which "
                                    "is not in the workflow")
        connections.append(Connection(src, sp - 1, dst, dp - 1))
    return Workflow(folder, nodes, connections)


def _toposort(ids: Sequence[int], edges: Sequence[tuple[int, int]], label: Callable[[int], str]) -> list[int]:
    indeg = {i: 0 for i in ids}
    succ: dict[int, list[int]] = {i: [] for i in ids}
    for a, b in edges:
        succ[a].append(b)
        indeg[b] += 1
    ready = sorted(i for i in ids if indeg[i] == 0)
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
        ready.sort()
    if len(order) != len(ids):
        stuck = [i for i in ids if i not in order]
        raise WorkflowError("the workflow has a cycle through node(s) " + ", ".join(label(i) for i in stuck))
    return order


# =================================================================================================
# Running a workflow
# =================================================================================================


class _JavaContext:
    """What KNIME's Java side provides to the execution/configuration contexts, for a headless run."""

    def __init__(self, runner: _Runner, node: WorkflowNode) -> None:
        self._runner = runner
        self._node = node

    def set_progress(self, progress: float, message: str | None = None) -> None:
        self._runner.progress(self._node, progress, message)

    def set_warning(self, message: str) -> None:
        self._runner.warn(f"node {self._node.label}: {message}")

    def is_canceled(self) -> bool:
        return False

    def get_workflow_temp_dir(self) -> str:
        return str(self._runner.temp_dir)

    def get_workflow_dir(self) -> str:
        # The run's copy of the workflow: its data area is copied into --out, where relative paths resolve.
        return str(self._runner.out)

    def get_knime_home_dir(self) -> str:
        home = self._runner.temp_dir / "knime-home"
        home.mkdir(exist_ok=True)
        return str(home)

    def get_credential_names(self) -> list[str]:
        return []

    def get_credentials(self, identifier: str) -> Any:
        raise KeyError(identifier)

    def get_input_specs(self) -> list[Any]:
        return []


@dataclass
class NodeRun:
    node: WorkflowNode
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    flow_variables: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run produced: output objects per ``(node id, port)`` (0-based), tables as DataFrames, files."""

    workflow: Workflow
    out: Path
    order: list[int]
    outputs: dict[tuple[int, int], Any]
    tables: dict[tuple[int, int], Any]
    runs: dict[int, NodeRun]
    seconds: float

    def node_dir(self, node_id: int) -> Path:
        """The folder of a node's outputs, ``<id>_<name>[_<annotation>]``."""
        return self.out / _node_dir_name(self.workflow.nodes[node_id])

    def node_ids(self, name: str) -> list[int]:
        """Ids of the nodes with this name (e.g. ``"Scorer"``), in execution order."""
        return [i for i in self.order if self.workflow.nodes[i].name == name]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"


def _node_dir_name(node: WorkflowNode) -> str:
    note = _slug(node.annotation)[:40] if node.annotation.strip() else ""
    return f"{node.id}_{_slug(node.name)}" + (f"_{note}" if note else "")


class _Runner:
    def __init__(self, workflow: Workflow, extension: Extension, out: Path, fmt: str, quiet: bool,
                 log: Callable[[str], None]) -> None:
        self.workflow = workflow
        self.extension = extension
        self.out = out
        self.fmt = fmt
        self.quiet = quiet
        self.log = log
        self.temp_dir = Path(tempfile.mkdtemp(prefix="cellseg-workflow-"))
        self._bar: Any = None
        self._current: NodeRun | None = None
        self._desc = ""
        self._next_print = 0.1

    # -- console ---------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        if self._current is not None:
            self._current.warnings.append(message)
        self._write(f"WARNING {message}")

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            self.log(line)

    def progress(self, node: WorkflowNode, fraction: float, message: str | None) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if self._bar is not None:
            n = int(round(fraction * 1000))
            self._bar.update(max(0, n - self._bar.n))
            if message:
                self._bar.set_postfix_str(message[:60], refresh=False)
        elif not self.quiet and self._desc and fraction >= self._next_print:
            # not a terminal: a line at every 10 %
            self.log(f"{self._desc}: {fraction:4.0%}" + (f"  {message}" if message else ""))
            self._next_print = math.floor(fraction * 10 + 1e-9) / 10 + 0.1

    @contextlib.contextmanager
    def node_bar(self, desc: str) -> Iterator[None]:
        self._desc, self._next_print = desc, 0.1
        if self.quiet or not sys.stderr.isatty():
            try:
                yield
            finally:
                self._desc = ""
            return
        from tqdm import tqdm

        self._bar = tqdm(total=1000, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
        try:
            yield
        finally:
            self._bar.close()
            self._bar = None
            self._desc = ""


def _contexts(runner: _Runner, node: WorkflowNode, flow_variables: dict[str, Any]) -> tuple[Any, Any]:
    knext = _knext()
    java = _JavaContext(runner, node)
    return knext.ConfigurationContext(java, flow_variables), knext.ExecutionContext(java, flow_variables)


def _upstream_flow_variables(node_id: int, workflow: Workflow, flow: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Flow variables reaching a node: those of its predecessors (later input ports win)."""
    merged: dict[str, Any] = {}
    for x in sorted(workflow.connections, key=lambda x: x.dest_port):
        if x.dest == node_id:
            merged.update(flow.get(x.source, {}))
    return merged


def _as_list(result: Any, n: int) -> list[Any]:
    if n == 1 and not isinstance(result, list | tuple):
        return [result]
    if result is None and n == 0:
        return []
    if not isinstance(result, list | tuple):
        return [result]
    return list(result)


def _is_table_port(port: Any) -> bool:
    return port.type == "PortType.TABLE"


def _to_table(value: Any) -> Any:
    """An output table as KNIME passes it downstream (a BatchOutputTable becomes a Table, batches kept)."""
    knext = _knext()
    if isinstance(value, knext.BatchOutputTable):
        batches = list(value.batches()) if hasattr(value, "batches") else []
        import pandas as pd

        frames = [b.to_pandas() for b in batches]
        df = pd.concat(frames) if frames else pd.DataFrame()
        table = knext.Table.from_pandas(df, row_ids="keep")
        if hasattr(table, "_batch_size") and frames:
            table._batch_size = max(1, max(len(f) for f in frames))  # stand-in: keep the batch size
        return table
    return value


def _roundtrip_spec(spec: Any, port: Any) -> Any:
    """Serialize/deserialize a custom port spec, as KNIME does between nodes."""
    if spec is None or isinstance(port.type, str):
        return spec
    return port.type.spec_class.deserialize(spec.serialize())


def _roundtrip_object(obj: Any, port: Any) -> tuple[Any, bytes | None]:
    """Serialize/deserialize a custom port object (connection port objects pass their data)."""
    if isinstance(port.type, str):
        return obj, None
    knext = _knext()
    spec = _roundtrip_spec(obj.spec, port)
    if isinstance(obj, knext.ConnectionPortObject):
        return port.type.object_class.from_connection_data(spec, obj.to_connection_data()), None
    data = obj.serialize()
    return port.type.object_class.deserialize(spec, data), data


def parse_override(text: str, workflow: Workflow) -> tuple[WorkflowNode, str, str]:
    """``"<node name or #id>.<param path>=<value>"`` -> (node, path, value text)."""
    if "=" not in text:
        raise WorkflowError(f"--set {text!r}: expected NODE.PARAMETER=VALUE")
    lhs, value = text.split("=", 1)
    lhs = lhs.strip()
    m = re.match(r"^#(\d+)\.(.+)$", lhs)
    if m:
        nid = int(m.group(1))
        if nid not in workflow.nodes:
            raise WorkflowError(f"--set {text!r}: the workflow has no node #{nid}")
        return workflow.nodes[nid], m.group(2), value
    matches: list[tuple[int, WorkflowNode]] = []
    for n in workflow.nodes.values():
        for name in {n.name, n.annotation} - {""}:
            if lhs.lower().startswith(name.lower() + "."):
                matches.append((len(name), n))
    if not matches:
        names = ", ".join(sorted({f"{n.name} (#{n.id})" for n in workflow.nodes.values()}))
        raise WorkflowError(f"--set {text!r}: no node of that name (nodes: {names})")
    best = max(length for length, _ in matches)
    chosen = {n.id: n for length, n in matches if length == best}
    if len(chosen) > 1:
        ids = ", ".join(f"#{i}" for i in sorted(chosen))
        raise WorkflowError(f"--set {text!r}: several nodes match ({ids}); use #ID.PARAMETER=VALUE")
    node = next(iter(chosen.values()))
    return node, lhs[best + 1:], value


def _resolve_inputs(workflow: Workflow, extension: Extension) -> tuple[dict[int, dict[int, Connection]], list[int]]:
    registered = {i: extension.node(n.node_id) for i, n in workflow.nodes.items()}
    inputs: dict[int, dict[int, Connection]] = {i: {} for i in workflow.nodes}
    edges = []
    for x in workflow.connections:
        src, dst = workflow.nodes[x.source], workflow.nodes[x.dest]
        edges.append((x.source, x.dest))
        if x.source_port == -1 and x.dest_port == -1:
            continue  # flow-variable connection: only ordering
        if not 0 <= x.source_port < len(registered[x.source].output_ports):
            raise WorkflowError(f"node {src.label}: a connection leaves its port {x.source_port + 1}, but it has "
                                f"{len(registered[x.source].output_ports)} output port(s)")
        if not 0 <= x.dest_port < len(registered[x.dest].input_ports):
            raise WorkflowError(f"node {dst.label}: a connection enters its port {x.dest_port + 1}, but it has "
                                f"{len(registered[x.dest].input_ports)} input port(s)")
        if x.dest_port in inputs[x.dest]:
            raise WorkflowError(f"node {dst.label}: input port {x.dest_port + 1} has two incoming connections")
        out_port = registered[x.source].output_ports[x.source_port]
        in_port = registered[x.dest].input_ports[x.dest_port]
        if not _ports_compatible(out_port, in_port):
            raise WorkflowError(f"node {dst.label}: input port {x.dest_port + 1} ({_port_type_name(in_port)}) "
                                f"cannot take output port {x.source_port + 1} of {src.label} "
                                f"({_port_type_name(out_port)})")
        inputs[x.dest][x.dest_port] = x
    for i, n in workflow.nodes.items():
        ports = registered[i].input_ports
        missing = [k for k in range(len(ports)) if k not in inputs[i]]
        if missing:
            k = missing[0]
            raise WorkflowError(f"node {n.label}: input port {k + 1} ('{ports[k].name}') is not connected")
    order = _toposort(sorted(workflow.nodes), edges, lambda i: workflow.nodes[i].label)
    return inputs, order


@contextlib.contextmanager
def _cwd(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_workflow(path: str | os.PathLike, out: str | os.PathLike, overrides: Sequence[str] = (),
                 fmt: str = "csv", quiet: bool = False, extension: Extension | None = None,
                 log: Callable[[str], None] | None = None) -> RunResult:
    """Run a workflow folder (or ``.knwf``) headlessly; see the module docstring. Raises WorkflowError."""
    if fmt not in ("csv", "parquet"):
        raise WorkflowError(f"unknown table format {fmt!r} (csv or parquet)")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    path = Path(path)
    extension = extension or load_extension()
    with contextlib.ExitStack() as stack:
        if path.is_file() and path.suffix == ".knwf":
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="knwf-")))
            with zipfile.ZipFile(path) as zf:
                zf.extractall(folder)
            found = sorted(folder.rglob("workflow.knime"), key=lambda p: len(p.parts))
            if not found:
                raise WorkflowError(f"{path}: no workflow.knime in the archive")
            path = found[0].parent
        elif not (path / "workflow.knime").is_file():
            raise WorkflowError(f"{path}: not a KNIME workflow folder (no workflow.knime)")
        workflow = load_workflow(path, extension)
        return _run(workflow, extension, Path(out).resolve(), overrides, fmt, quiet, log)


def _run(workflow: Workflow, extension: Extension, out: Path, overrides: Sequence[str], fmt: str, quiet: bool,
         log: Callable[[str], None]) -> RunResult:
    t_start = time.perf_counter()
    inputs, order = _resolve_inputs(workflow, extension)
    runner = _Runner(workflow, extension, out, fmt, quiet, log)
    registered = {i: extension.node(n.node_id) for i, n in workflow.nodes.items()}

    # 1. instantiate and inject parameters (with overrides) ------------------------------------------
    instances: dict[int, Any] = {}
    schemas: dict[int, dict[str, ParamInfo]] = {}
    values: dict[int, dict[str, Any]] = {}
    for i in order:
        n = workflow.nodes[i]
        try:
            instance = registered[i].node_factory()
        except Exception as err:
            raise WorkflowError(f"node {n.label}: cannot create the node: {type(err).__name__}: {err}") from err
        schemas[i] = parameter_schema(instance)
        values[i] = model_to_values(n.model, schemas[i], f"node {n.label}", n.version, runner.warn)
        instances[i] = instance
    for text in overrides:
        n, param, value = parse_override(text, workflow)
        info = flatten_schema(schemas[n.id]).get(param)
        if info is not None and info.xtype == "xstring" and value and not Path(value).is_absolute() \
                and Path(value).exists():
            value = str(Path(value).resolve())  # a path relative to the current folder
        set_value(values[n.id], schemas[n.id], param, value, f"node {n.label}", from_text=True)
    for i in order:
        inject(instances[i], values[i], schemas[i], workflow.nodes[i].version, f"node {workflow.nodes[i].label}")

    out.mkdir(parents=True, exist_ok=True)
    data_area = workflow.folder / "data"
    if data_area.is_dir() and data_area.resolve() != (out / "data").resolve():
        shutil.copytree(data_area, out / "data", dirs_exist_ok=True)
    total = len(order)
    log(f"workflow {workflow.folder.name}: {total} node(s), output in {out}")

    # 2. configure all nodes in topological order ---------------------------------------------------
    specs: dict[tuple[int, int], Any] = {}
    cfg_flow: dict[int, dict[str, Any]] = {}
    for i in order:
        n, reg = workflow.nodes[i], registered[i]
        in_specs = [_roundtrip_spec(specs.get((x.source, x.source_port)), reg.input_ports[k])
                    for k, x in sorted(inputs[i].items())]
        cfg_ctx, _ = _contexts(runner, n, _upstream_flow_variables(i, workflow, cfg_flow))
        with _cwd(out):
            try:
                result = instances[i].configure(cfg_ctx, *in_specs)
            except Exception as err:
                raise WorkflowError(f"node {n.label}: configure failed: {_describe(err)}") from err
        result_list = _as_list(result, len(reg.output_ports))
        if len(result_list) != len(reg.output_ports):
            raise WorkflowError(f"node {n.label}: configure returned {len(result_list)} spec(s) for "
                                f"{len(reg.output_ports)} output port(s)")
        for k, spec in enumerate(result_list):
            specs[(i, k)] = spec
        cfg_flow[i] = dict(cfg_ctx.flow_variables)

    # 3. execute in topological order ----------------------------------------------------------------
    outputs: dict[tuple[int, int], Any] = {}
    tables: dict[tuple[int, int], Any] = {}
    runs: dict[int, NodeRun] = {}
    flow: dict[int, dict[str, Any]] = {}
    for step, i in enumerate(order, 1):
        n, reg = workflow.nodes[i], registered[i]
        run = runs[i] = NodeRun(n)
        runner._current = run
        in_objs = []
        for k, x in sorted(inputs[i].items()):
            obj, _ = _roundtrip_object(outputs[(x.source, x.source_port)], reg.input_ports[k])
            in_objs.append(obj)
        _, exec_ctx = _contexts(runner, n, _upstream_flow_variables(i, workflow, flow))
        desc = f"[{step}/{total}] {n.name} (#{i})"
        t0 = time.perf_counter()
        with runner.node_bar(desc), _cwd(out):
            try:
                result = instances[i].execute(exec_ctx, *in_objs)
            except Exception as err:
                raise WorkflowError(f"node {n.label}: execute failed: {_describe(err)}") from err
        run.seconds = time.perf_counter() - t0
        flow[i] = run.flow_variables = dict(exec_ctx.flow_variables)
        n_out = len(reg.output_ports) + (1 if getattr(reg, "views", [None])[0] is not None else 0)
        result_list = _as_list(result, n_out)
        if len(result_list) != n_out:
            raise WorkflowError(f"node {n.label}: execute returned {len(result_list)} object(s) for "
                                f"{n_out} output(s)")
        node_dir = out / _node_dir_name(n)
        for k, port in enumerate(reg.output_ports):
            obj = result_list[k]
            base = node_dir / f"port{k + 1}_{_slug(port.name)}"
            run.files.extend(_store_output(n, k, port, obj, base, fmt, outputs, tables))
        if n_out > len(reg.output_ports):
            run.files.extend(_write_view(result_list[-1], node_dir / "view"))
        runner._current = None
        summary = ", ".join(_short(tables.get((i, k)), outputs.get((i, k))) for k in range(len(reg.output_ports)))
        log(f"{desc}: done in {run.seconds:.1f} s" + (f" -> {summary}" if summary else ""))

    seconds = time.perf_counter() - t_start
    result_obj = RunResult(workflow, out, order, outputs, tables, runs, seconds)
    _write_manifest(result_obj)
    shutil.rmtree(runner.temp_dir, ignore_errors=True)
    log(f"workflow {workflow.folder.name}: finished in {seconds:.1f} s; outputs in {out}")
    return result_obj


def _describe(err: BaseException) -> str:
    """The message KNIME would show: as is for invalid settings and backend errors, else with the type."""
    expected = (CellsegError, _knext().InvalidParametersError, ValueError)
    return str(err) if isinstance(err, expected) else f"{type(err).__name__}: {err}"


def _short(table: Any, obj: Any) -> str:
    if table is not None:
        return f"{len(table)} row(s)"
    return type(obj).__name__ if obj is not None else "-"


def _store_output(n: WorkflowNode, k: int, port: Any, obj: Any, base: Path, fmt: str,
                  outputs: dict[tuple[int, int], Any], tables: dict[tuple[int, int], Any]) -> list[Path]:
    knext = _knext()
    what = f"node {n.label}: output port {k + 1} ('{port.name}')"
    t = port.type
    if t == "PortType.TABLE":
        if not isinstance(obj, knext.Table | knext.BatchOutputTable):
            raise WorkflowError(f"{what} is a table port but execute returned {type(obj).__name__}")
        table = _to_table(obj)
        outputs[(n.id, k)] = table
        df = table.to_pandas()
        tables[(n.id, k)] = df
        return write_table(df, base, fmt)
    if t == "PortType.IMAGE":
        if not isinstance(obj, bytes | bytearray):
            raise WorkflowError(f"{what} is an image port but execute returned {type(obj).__name__}")
        outputs[(n.id, k)] = bytes(obj)
        return [_write_bytes(base, bytes(obj))]
    if t == "PortType.BINARY":
        if not isinstance(obj, bytes | bytearray):
            raise WorkflowError(f"{what} is a binary port but execute returned {type(obj).__name__}")
        outputs[(n.id, k)] = bytes(obj)
        return [_write_bytes(base, bytes(obj))]
    if isinstance(t, str):
        outputs[(n.id, k)] = obj
        return []
    if not isinstance(obj, t.object_class):
        raise WorkflowError(f"{what} expects a {t.object_class.__name__} but execute returned "
                            f"{type(obj).__name__}")
    outputs[(n.id, k)] = obj
    files = []
    if not isinstance(obj, knext.ConnectionPortObject):
        try:
            spec_json = json.dumps(obj.spec.serialize(), indent=2, default=str)
        except Exception as err:
            raise WorkflowError(f"{what}: its spec cannot be serialized: {_describe(err)}") from err
        spec_path = base.with_name(base.name + ".spec.json")
        _write_text(spec_path, spec_json + "\n")
        files.append(spec_path)
        try:
            data = obj.serialize()
        except Exception as err:
            raise WorkflowError(f"{what}: the port object cannot be serialized: {_describe(err)}") from err
        files.append(_write_bytes(base, data))
    return files


def _extension_for(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ".tif"
    if data.startswith(b"PK\x03\x04"):
        return ".zip"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.lstrip()[:5] in (b"<svg ", b"<?xml"):
        return ".svg"
    return ".bin"


def _write_bytes(base: Path, data: bytes) -> Path:
    path = base.with_name(base.name + _extension_for(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _write_view(view: Any, base: Path) -> list[Path]:
    html = getattr(view, "html", None)
    if not isinstance(html, str):
        return []
    path = base.with_suffix(".html")
    _write_text(path, html)
    return [path]


def _cell_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return None
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    return None


def write_table(df: Any, base: Path, fmt: str) -> list[Path]:
    """Write a table (RowID first) as ``base.csv`` or ``base.parquet``.

    CSV: binary and image cells go to files in ``base_files/<column>/<RowID>.<ext>`` and the cell holds the
    relative path. Parquet keeps bytes (images as PNG bytes).
    """
    import pandas as pd

    base.parent.mkdir(parents=True, exist_ok=True)
    frame = df.copy()
    frame.insert(0, "RowID", [str(v) for v in df.index])
    frame = frame.reset_index(drop=True)
    files: list[Path] = []
    for col in list(frame.columns[1:]):
        series = frame[col]
        if series.dtype != object:
            continue
        cells = [_cell_bytes(v) for v in series]
        if not any(c is not None for c in cells):
            if any(isinstance(v, dict | list | tuple) for v in series):
                frame[col] = [json.dumps(v, default=str) if isinstance(v, dict | list | tuple) else v
                              for v in series]
            elif any(not (v is None or isinstance(v, str | int | float | bool)) for v in series):
                frame[col] = [v if v is None or isinstance(v, str | int | float | bool) else str(v) for v in series]
            continue
        if fmt == "parquet":
            frame[col] = pd.Series(cells, dtype=object)
            continue
        col_dir = base.with_name(f"{base.name}_files") / _slug(str(col))
        paths: list[str | None] = []
        for row_id, data in zip(frame["RowID"], cells):
            if data is None:
                paths.append(None)
                continue
            p = _write_bytes(col_dir / re.sub(r"[^A-Za-z0-9._-]+", "_", row_id), data)
            files.append(p)
            paths.append(p.relative_to(base.parent).as_posix())
        frame[col] = paths
    path = base.with_name(base.name + (".csv" if fmt == "csv" else ".parquet"))
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return [path, *files]


def _write_manifest(result: RunResult) -> None:
    nodes = []
    for i in result.order:
        run = result.runs[i]
        nodes.append({
            "id": i, "name": run.node.name, "node_id": run.node.node_id, "annotation": run.node.annotation,
            "seconds": round(run.seconds, 3), "warnings": run.warnings,
            "flow_variables": {k: v for k, v in run.flow_variables.items()
                               if isinstance(v, str | int | float | bool | list)},
            "files": [p.relative_to(result.out).as_posix() for p in run.files
                      if "_files" not in p.parent.as_posix()],
        })
    manifest = {"workflow": str(result.workflow.folder), "seconds": round(result.seconds, 3), "nodes": nodes}
    _write_text(result.out / "run.json", json.dumps(manifest, indent=2) + "\n")


# =================================================================================================
# Command line
# =================================================================================================


def describe_workflow(path: str | os.PathLike, extension: Extension | None = None) -> str:
    """A listing of a workflow's nodes and their current parameter values (for ``--list``)."""
    extension = extension or load_extension()
    workflow = load_workflow(path, extension)
    _, order = _resolve_inputs(workflow, extension)
    lines = [f"{workflow.folder.name}:"]
    for i in order:
        n = workflow.nodes[i]
        reg = extension.node(n.node_id)
        schema = parameter_schema(reg.node_factory())
        values = model_to_values(n.model, schema, f"node {n.label}", n.version)
        note = f"  [{n.annotation}]" if n.annotation else ""
        lines.append(f"  #{i} {n.name} ({n.node_id}){note}")
        for p, info in flatten_schema(schema).items():
            v: Any = values
            for part in p.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            lines.append(f"      {p} = {v!r}  ({(info.xtype or 'xstring')[1:]})")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    if args.list:
        print(describe_workflow(path))
        return 0
    name = path.stem if path.suffix == ".knwf" else path.resolve().name
    out = Path(args.out) if args.out else Path("out") / name
    run_workflow(path, out, overrides=args.set or [], fmt=args.format, quiet=getattr(args, "quiet", False))
    return 0


def _cmd_make(args: argparse.Namespace) -> int:
    definitions = load_definitions(args.definitions) if args.definitions else None
    folders = make_workflows(args.dest or default_extension_root() / "workflows", definitions,
                             knwf=not args.no_knwf, only=args.only)
    for f in folders:
        print(f"wrote {f}" + ("" if args.no_knwf else f" and {f.with_suffix('.knwf').name}"))
    return 0


def register_cli(sub: Any) -> None:
    """Add ``run-workflow`` and ``make-workflows`` to the ``cellseg`` command line."""
    p = sub.add_parser("run-workflow", help="run a KNIME workflow of this extension headlessly",
                       description="Run a KNIME workflow folder (or .knwf) of cellseg nodes without KNIME: "
                       "configure, then execute in topological order; every output table is written to --out.")
    p.add_argument("workflow", help="workflow folder (with workflow.knime) or .knwf archive")
    p.add_argument("--out", help="output folder (default ./out/<workflow name>)")
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE",
                   help="override a parameter: node name or #id, then the parameter path, e.g. "
                   "'Retrainer.training.epochs=2' or '#3.seed=1' (repeatable)")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format (default csv)")
    p.add_argument("--list", action="store_true", help="list the nodes and their parameters, then exit")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("make-workflows", help="generate the example KNIME workflows from their definitions")
    p.add_argument("--dest", help="output folder (default: the repository's workflows/)")
    p.add_argument("--definitions", help="definitions file (default workflows/definitions.py)")
    p.add_argument("--only", action="append", help="only this workflow folder name (repeatable)")
    p.add_argument("--no-knwf", action="store_true", help="do not write .knwf archives")
    p.set_defaults(func=_cmd_make)

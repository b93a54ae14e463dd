"""KNIME's XMLConfig files (``workflow.knime``, ``settings.xml``): read, write and the format's constants.

A KNIME workflow is a folder with ``workflow.knime`` (nodes, connections) and one folder per node with its
``settings.xml``, all in KNIME's XMLConfig format. A pure-Python node has the factory
:data:`PYTHON_NODE_FACTORY`, ``factory_settings/extension_id`` (``group_id.name`` of ``knime.yml``) and
``factory_settings/node_id`` (the ``id`` given to ``@knext.node``), and its parameters in the ``model``
config (see :mod:`.settings`). In ``workflow.knime`` port 0 of a node is its flow-variable port; the data
ports (tables, models, ...) count from 1. A ``.knwf`` is a zip of the workflow folder.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

from .common import WorkflowError, write_text

XMLCONFIG_NS = "http://www.knime.org/2008/09/XMLConfig"
PYTHON_NODE_FACTORY = "org.knime.python3.nodes.extension.ExtensionNodeSetFactory$DynamicExtensionNodeFactory"
KNIME_VERSION = "5.1.0"  # the workflow format version written (KNIME 5.1 and later load it)
KNIME_CREATED_BY = "5.1.1.v202309110912"
_INT_TYPES = ("xint", "xlong", "xshort", "xbyte")
_FLOAT_TYPES = ("xdouble", "xfloat")


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
    write_text(Path(path), config_to_xml(key, config))


def s(value: str | None) -> Entry:
    """An ``xstring`` entry."""
    return Entry("xstring", value)


def i(value: int) -> Entry:
    """An ``xint`` entry."""
    return Entry("xint", str(int(value)))


def b(value: bool) -> Entry:
    """An ``xboolean`` entry."""
    return Entry("xboolean", "true" if value else "false")


def format_double(value: float) -> str:
    """An ``xdouble`` value as KNIME writes it (``NaN``, ``Infinity``, ``-Infinity`` included)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def get(config: Config, path: str, what: str, default: Any = ...) -> Any:
    """Value at ``a/b/c`` in a parsed config (Entry -> python value); WorkflowError if missing."""
    node: Any = config
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise WorkflowError(f"{what}: missing '{path}'")
        node = node[part]
    if not isinstance(node, Entry):
        return node
    try:
        return node.python()
    except ValueError:
        raise WorkflowError(f"{what}: '{path}' has the value {node.value!r}, not a valid {node.type}") from None

"""The workflow generator: compact :class:`WorkflowDef` definitions -> KNIME workflow folders and ``.knwf``.

Ids, factory settings, parameter names, types and defaults come from the node classes, so the files cannot
drift from the code (``cellseg make-workflows`` / ``cellseg-knime make-workflows``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import Connection, WorkflowError, port_type_name, ports_compatible, toposort, write_text
from .extension import Extension, _knext_parameter, default_extension_root, load_extension
from .settings import ParamInfo, check_values, parameter_schema, set_value, values_to_model
from .xmlconfig import KNIME_CREATED_BY, KNIME_VERSION, PYTHON_NODE_FACTORY, Config, Entry, write_config
from .xmlconfig import b as _b
from .xmlconfig import i as _i
from .xmlconfig import s as _s

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


@dataclass
class NodeDef:
    """A node of a compact workflow definition: numeric id, node id, parameter overrides (dotted paths)."""

    id: int
    node_id: str
    params: dict[str, Any] = field(default_factory=dict)
    annotation: str = ""
    position: tuple[int, int] | None = None  # x, y on the canvas (default: laid out by depth)


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


def node_folder_name(name: str, node_id: int) -> str:
    """KNIME's per-node folder name, e.g. ``Retrainer (#3)``."""
    safe = re.sub(r'[\\/:*?"<>|]', "_", name).strip() or "Node"
    return f"{safe} (#{node_id})"


_CREATED = "2025-01-01 00:00:00 +0000"
_CREATED_ISO = "2025-01-01T00:00:00.000+00:00"
_NODE_W, _NODE_H = 100, 76


def _layout(defn: WorkflowDef) -> dict[int, tuple[int, int]]:
    depth: dict[int, int] = {}
    order = toposort([n.id for n in defn.nodes], [(x.source, x.dest) for x in defn.connections],
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
        if not ports_compatible(outs[x.source_port], ins[x.dest_port]):
            raise WorkflowError(f"workflow {defn.folder}: output {x.source_port} of {src_name} "
                                f"({port_type_name(outs[x.source_port])}) does not fit input {x.dest_port} "
                                f"of {dst_name} ({port_type_name(ins[x.dest_port])})")
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
        write_text(tmp / "workflow-metadata.xml", _metadata_xml(defn))
        write_text(tmp / "workflowset.meta", _workflowset_meta(defn))
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

"""Reading a workflow folder: ``workflow.knime`` and every node's settings.xml, checked against this extension."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .common import Connection, WorkflowError, port_type_name, ports_compatible, toposort
from .extension import Extension
from .settings import VERSION_KEY
from .xmlconfig import PYTHON_NODE_FACTORY, Config, Entry, read_config
from .xmlconfig import get as _get


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
    """A workflow as read: its folder, its nodes by id and their connections."""

    folder: Path
    nodes: dict[int, WorkflowNode]
    connections: list[Connection]  # data ports 0-based; flow-variable connections have port -1


def _section(wf: Config, name: str, wf_file: Path) -> Config:
    section = _get(wf, name, str(wf_file), {}) or {}
    if not isinstance(section, dict):
        raise WorkflowError(f"{wf_file}: '{name}' is an entry, expected a config")
    return section


def _int(item: Config, key: str, what: str) -> int:
    """An integer entry (node ids, ports); WorkflowError naming it for text, null or a missing entry."""
    value = _get(item, key, what)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkflowError(f"{what}: '{key}' is {value!r}, expected an integer (an xint entry)")
    return value


def _inside(folder: Path, rel: object, what: str) -> Path:
    """``folder / rel`` for a relative path that stays inside the workflow folder."""
    if not isinstance(rel, str) or not rel.strip():
        raise WorkflowError(f"{what}: expected a path inside the workflow folder, got {rel!r}")
    target = folder / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts or "\0" in rel:
        raise WorkflowError(f"{what}: {rel!r} points outside the workflow folder {folder}")
    return target


def load_workflow(path: str | os.PathLike, extension: Extension) -> Workflow:
    """Read ``workflow.knime`` and every node's settings.xml; checks factories, ids and connections."""
    folder = Path(path)
    wf_file = folder / "workflow.knime" if folder.is_dir() else folder
    folder = wf_file.parent
    wf = read_config(wf_file, str(wf_file))
    nodes: dict[int, WorkflowNode] = {}
    for key, item in _section(wf, "nodes", wf_file).items():
        what = f"{wf_file}: {key}"
        if not isinstance(item, dict):
            raise WorkflowError(f"{what}: expected a node config, found an entry")
        nid = _int(item, "id", what)
        settings_rel = _get(item, "node_settings_file", what)
        if _get(item, "node_is_meta", what, False):
            raise WorkflowError(f"node #{nid}: metanodes and components are not supported by the headless runner")
        settings_file = _inside(folder, settings_rel, f"{what}: node_settings_file")
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
    for key, item in _section(wf, "connections", wf_file).items():
        what = f"{wf_file}: {key}"
        if not isinstance(item, dict):
            raise WorkflowError(f"{what}: expected a connection config, found an entry")
        src, dst = _int(item, "sourceID", what), _int(item, "destID", what)
        sp, dp = _int(item, "sourcePort", what), _int(item, "destPort", what)
        for nid, other in ((src, dst), (dst, src)):
            if nid not in nodes:
                known = nodes.get(other)
                names = f"node {known.label}" if known else f"node #{other}"
                raise WorkflowError(f"dangling connection {key}: {names} is connected to node #{nid}, which "
                                    "is not in the workflow")
        connections.append(Connection(src, sp - 1, dst, dp - 1))
    return Workflow(folder, nodes, connections)


def resolve_inputs(workflow: Workflow, extension: Extension) -> tuple[dict[int, dict[int, Connection]], list[int]]:
    """The connection into each input port of each node, and the execution order; WorkflowError naming the
    node for a bad port, a doubly or not connected input, incompatible port types or a cycle."""
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
        if not ports_compatible(out_port, in_port):
            raise WorkflowError(f"node {dst.label}: input port {x.dest_port + 1} ({port_type_name(in_port)}) "
                                f"cannot take output port {x.source_port + 1} of {src.label} "
                                f"({port_type_name(out_port)})")
        inputs[x.dest][x.dest_port] = x
    for i, n in workflow.nodes.items():
        ports = registered[i].input_ports
        missing = [k for k in range(len(ports)) if k not in inputs[i]]
        if missing:
            k = missing[0]
            raise WorkflowError(f"node {n.label}: input port {k + 1} ('{ports[k].name}') is not connected")
    order = toposort(sorted(workflow.nodes), edges, lambda i: workflow.nodes[i].label)
    return inputs, order

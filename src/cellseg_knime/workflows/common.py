"""What the workflow codec, generator and runner share: the error, connections, ordering, atomic text files."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellseg.errors import CellsegError


class WorkflowError(CellsegError):
    """A workflow cannot be read, generated or run; the message names the node (and parameter)."""


@dataclass(frozen=True)
class Connection:
    """Output port ``source_port`` of node ``source`` -> input port ``dest_port`` of ``dest`` (0-based,
    as in the node's port decorators; KNIME's files count data ports from 1)."""

    source: int
    source_port: int
    dest: int
    dest_port: int


def c(source: int, source_port: int, dest: int, dest_port: int) -> Connection:
    """Shorthand for :class:`Connection`."""
    return Connection(source, source_port, dest, dest_port)


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file atomically (temporary sibling, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def toposort(ids: Sequence[int], edges: Sequence[tuple[int, int]], label: Callable[[int], str]) -> list[int]:
    """Node ids in topological order (ties by id); WorkflowError naming the nodes of a cycle."""
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


def port_type_name(port: Any) -> str:
    t = port.type
    return t if isinstance(t, str) else getattr(t, "id", str(t))


def ports_compatible(out_port: Any, in_port: Any) -> bool:
    """Whether an output port may feed an input port (same built-in type, or a custom subtype)."""
    a, b = out_port.type, in_port.type
    if isinstance(a, str) or isinstance(b, str):
        if a == b:
            return bool(a != "PortType.BINARY" or out_port.id == in_port.id)
        return False
    check = getattr(b, "is_super_type_of", None)
    return bool(check(a)) if check is not None else a == b


def slug(text: str) -> str:
    """Lower-case letters, digits and ``_`` (for output folder and file names)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "x"

"""What a headless run produced and how it is written: tables (CSV or Parquet), port objects, views, run.json.

Table cells that are KNIME-native objects become what a file can hold: a PNG image cell (a PIL image) is
saved as a PNG file next to the table, a Path cell (``FSLocationValue``) as its path, lists and dicts as
JSON, other objects as their text.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import WorkflowError, slug, write_text
from .extension import _knext, describe_error
from .reader import Workflow, WorkflowNode


@dataclass
class NodeRun:
    """One node's execution: its time, the files written for it, its warnings and flow variables."""

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
        return self.out / node_dir_name(self.workflow.nodes[node_id])

    def node_ids(self, name: str) -> list[int]:
        """Ids of the nodes with this name (e.g. ``"Scorer"``), in execution order."""
        return [i for i in self.order if self.workflow.nodes[i].name == name]


def node_dir_name(node: WorkflowNode) -> str:
    note = slug(node.annotation)[:40] if node.annotation.strip() else ""
    return f"{node.id}_{slug(node.name)}" + (f"_{note}" if note else "")


def summary(table: Any, obj: Any) -> str:
    """A port's output for the console: a table's row count, else the object's type."""
    if table is not None:
        return f"{len(table)} row(s)"
    return type(obj).__name__ if obj is not None else "-"


def to_table(value: Any) -> Any:
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


def store_output(n: WorkflowNode, k: int, port: Any, obj: Any, base: Path, fmt: str,
                 outputs: dict[tuple[int, int], Any], tables: dict[tuple[int, int], Any]) -> list[Path]:
    """Check what a node returned for output port ``k``, keep it in ``outputs`` (and ``tables``), write it."""
    knext = _knext()
    what = f"node {n.label}: output port {k + 1} ('{port.name}')"
    t = port.type
    if t == "PortType.TABLE":
        if not isinstance(obj, knext.Table | knext.BatchOutputTable):
            raise WorkflowError(f"{what} is a table port but execute returned {type(obj).__name__}")
        table = to_table(obj)
        outputs[(n.id, k)] = table
        df = table.to_pandas()
        tables[(n.id, k)] = df
        return write_table(df, base, fmt)
    if t == "PortType.IMAGE":
        if not isinstance(obj, bytes | bytearray):
            raise WorkflowError(f"{what} is an image port but execute returned {type(obj).__name__}")
        outputs[(n.id, k)] = bytes(obj)
        return [write_bytes(base, bytes(obj))]
    if t == "PortType.BINARY":
        if not isinstance(obj, bytes | bytearray):
            raise WorkflowError(f"{what} is a binary port but execute returned {type(obj).__name__}")
        outputs[(n.id, k)] = bytes(obj)
        return [write_bytes(base, bytes(obj))]
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
            raise WorkflowError(f"{what}: its spec cannot be serialized: {describe_error(err)}") from err
        spec_path = base.with_name(base.name + ".spec.json")
        write_text(spec_path, spec_json + "\n")
        files.append(spec_path)
        try:
            data = obj.serialize()
        except Exception as err:
            raise WorkflowError(f"{what}: the port object cannot be serialized: {describe_error(err)}") from err
        files.append(write_bytes(base, data))
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


def write_bytes(base: Path, data: bytes) -> Path:
    """Write ``data`` atomically to ``base`` plus the extension its content suggests (.png, .zip, ...)."""
    path = base.with_name(base.name + _extension_for(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_view(view: Any, base: Path) -> list[Path]:
    """A node view's HTML as ``base.html`` (nothing for other views)."""
    html = getattr(view, "html", None)
    if not isinstance(html, str):
        return []
    path = base.with_suffix(".html")
    write_text(path, html)
    return [path]


# -- table cells ----------------------------------------------------------------------------------


def _is_image(value: Any) -> bool:
    """A PNG image cell's value (KNIME gives a PIL image)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Image.Image)


def _is_file_cell(value: Any) -> bool:
    """A cell that goes to a file of its own: a PNG image cell, or binary data (KNIME's blob type)."""
    return _is_image(value) or isinstance(value, bytes | bytearray | memoryview)


def _png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_cell_file(value: Any, base: Path) -> Path:
    """A PNG image cell as ``base.png`` (the image's own pixels, via PIL), binary data as written by
    :func:`write_bytes`; atomically."""
    if not _is_image(value):
        return write_bytes(base, bytes(value))
    path = base.with_name(base.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    value.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def fs_location_path(value: Any) -> str | None:
    """The path of a Path cell (``knime.types.builtin.FSLocationValue``: fs_category, fs_specifier, path),
    None for other values."""
    if all(hasattr(value, a) for a in ("fs_category", "fs_specifier", "path")):
        return str(value.path)
    return None


def _plain_cell(value: Any) -> Any:
    """A cell as CSV/Parquet holds it: primitives as they are, a Path cell as its path, lists and dicts as
    JSON, other objects as their text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    path = fs_location_path(value)
    if path is not None:
        return path
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=lambda v: fs_location_path(v) or str(v))
    return str(value)


def write_table(df: Any, base: Path, fmt: str) -> list[Path]:
    """Write a table (RowID first) as ``base.csv`` or ``base.parquet``; returns the files written.

    CSV: a PNG image cell is saved as a PNG file ``base_files/<column>/<RowID>.png`` and the cell holds its
    path relative to the table's folder (binary cells likewise, as files with the extension their bytes
    suggest). Parquet holds images as PNG bytes. In both a Path cell holds its path.
    """
    import pandas as pd

    base.parent.mkdir(parents=True, exist_ok=True)
    frame = df.copy()
    frame.insert(0, "RowID", [str(v) for v in df.index])
    frame = frame.reset_index(drop=True)
    files: list[Path] = []
    for col in list(frame.columns[1:]):
        dtype = frame[col].dtype
        if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype) or isinstance(
                dtype, pd.StringDtype):
            continue  # plain values; images and paths come as object or KNIME's extension dtypes
        values = list(frame[col])
        if not any(_is_file_cell(v) for v in values):
            frame[col] = pd.Series([_plain_cell(v) for v in values], dtype=object)
            continue
        if fmt == "parquet":
            frame[col] = pd.Series([(_png_bytes(v) if _is_image(v) else bytes(v)) if _is_file_cell(v) else None
                                    for v in values], dtype=object)
            continue
        col_dir = base.with_name(f"{base.name}_files") / slug(str(col))
        paths: list[str | None] = []
        used: set[str] = set()
        for row_id, value in zip(frame["RowID"], values):
            if not _is_file_cell(value):
                paths.append(None)
                continue
            name = stem = re.sub(r"[^A-Za-z0-9._-]+", "_", row_id)
            n = 1
            while name.lower() in used:  # two RowIDs with the same file name
                n += 1
                name = f"{stem}_{n}"
            used.add(name.lower())
            p = _write_cell_file(value, col_dir / name)
            files.append(p)
            paths.append(p.relative_to(base.parent).as_posix())
        frame[col] = pd.Series(paths, dtype=object)
    path = base.with_name(base.name + (".csv" if fmt == "csv" else ".parquet"))
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return [path, *files]


def write_manifest(result: RunResult) -> None:
    """``run.json`` in the output folder: per node its time, warnings, flow variables and files."""
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
    write_text(result.out / "run.json", json.dumps(manifest, indent=2) + "\n")

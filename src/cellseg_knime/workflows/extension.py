"""This extension as the workflow tools see it: ``knime.yml``, the extension module and the node registry.

The nodes are reached through ``knime.extension``: the real package when importable, else the offline
stand-in (``cellseg_knime/_standin``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellseg.errors import CellsegError

from .common import WorkflowError


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


def describe_error(err: BaseException) -> str:
    """The message KNIME would show: as is for invalid settings and backend errors, else with the type."""
    expected = (CellsegError, _knext().InvalidParametersError, ValueError)
    return str(err) if isinstance(err, expected) else f"{type(err).__name__}: {err}"


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

"""KNIME workflow files of the cellseg extension: the codec, the generator and the headless runner.

Modules, one concept each:

* :mod:`.xmlconfig`: KNIME's XMLConfig files (``workflow.knime``, ``settings.xml``), read and written;
* :mod:`.settings`: node parameters in settings.xml (schema from the node classes, values, overrides);
* :mod:`.extension`: this extension (``knime.yml``, the extension module, the node registry);
* :mod:`.generator`: compact :class:`WorkflowDef` definitions -> workflow folders and ``.knwf``
  (``make-workflows``);
* :mod:`.reader`: a workflow folder read and checked against the nodes;
* :mod:`.runner`: the headless runner (``run-workflow``) with its execution contexts;
* :mod:`.results`: what a run wrote (tables, port objects, views, ``run.json``);
* :mod:`.cli`: the subcommands, for ``cellseg-knime`` and (delegated by name) ``cellseg``.

The nodes are reached through ``knime.extension``: the real package when importable, else the offline
stand-in in ``cellseg_knime/_standin``. The backend ``cellseg`` imports nothing of this package.
"""

from __future__ import annotations

from .common import Connection, WorkflowError, c
from .extension import Extension, default_extension_root, load_extension
from .generator import NodeDef, WorkflowDef, load_definitions, make_workflows, write_knwf, write_workflow
from .reader import Workflow, WorkflowNode, load_workflow
from .results import NodeRun, RunResult, write_table
from .runner import parse_override, run_workflow
from .settings import STRING_ARRAY, ParamInfo, parameter_schema
from .xmlconfig import KNIME_VERSION, PYTHON_NODE_FACTORY, Entry, read_config, write_config

__all__ = [
    "KNIME_VERSION", "PYTHON_NODE_FACTORY", "STRING_ARRAY",
    "Connection", "Entry", "Extension", "NodeDef", "NodeRun", "ParamInfo", "RunResult", "Workflow", "WorkflowDef",
    "WorkflowError", "WorkflowNode",
    "c", "default_extension_root", "load_definitions", "load_extension", "load_workflow", "make_workflows",
    "parameter_schema", "parse_override", "read_config", "run_workflow", "write_config", "write_knwf",
    "write_table", "write_workflow",
]

"""The workflow subcommands ``run-workflow`` and ``make-workflows``.

Offered as ``cellseg-knime <subcommand>`` (this module's :func:`main`) and as ``cellseg <subcommand>``:
the backend's command line knows them by name only and hands their arguments to :func:`run` (importing this
module only then), so that the backend never imports KNIME code.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .extension import Extension, default_extension_root, load_extension
from .generator import load_definitions, make_workflows
from .reader import load_workflow, resolve_inputs
from .runner import run_workflow, workflow_folder
from .settings import flatten_schema, model_to_values, parameter_schema


def describe_workflow(path: str | Path, extension: Extension | None = None) -> str:
    """A listing of a workflow's nodes and their current parameter values (for ``--list``)."""
    extension = extension or load_extension()
    with contextlib.ExitStack() as stack:
        workflow = load_workflow(workflow_folder(path, stack), extension)
    _, order = resolve_inputs(workflow, extension)
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
    extension = load_extension()
    if args.list:
        print(describe_workflow(path, extension))
        return 0
    name = path.stem if path.suffix == ".knwf" else path.resolve().name
    out = Path(args.out) if args.out else Path("out") / name
    run_workflow(path, out, overrides=args.set or [], fmt=args.format, quiet=getattr(args, "quiet", False),
                 extension=extension)
    return 0


def _cmd_make(args: argparse.Namespace) -> int:
    definitions = load_definitions(args.definitions) if args.definitions else None
    folders = make_workflows(args.dest or default_extension_root() / "workflows", definitions,
                             knwf=not args.no_knwf, only=args.only)
    for f in folders:
        print(f"wrote {f}" + ("" if args.no_knwf else f" and {f.with_suffix('.knwf').name}"))
    return 0


def register_cli(sub: Any) -> None:
    """Add ``run-workflow`` and ``make-workflows`` to a command line's subparsers."""
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


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from cellseg.cliutil import ArgumentParser

    parser = ArgumentParser(prog=prog, description="KNIME workflows of the cellseg extension: run them "
                            "headlessly, generate the examples.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_cli(sub)
    return parser


def run(argv: Sequence[str], prog: str | None = None) -> int:
    """Parse ``argv`` and run the subcommand; errors propagate (CellsegError, CancelledError, ...).

    ``cellseg run-workflow ...`` calls this with ``prog="cellseg"``: its usage, help and error handling
    read as those of the ``cellseg`` command.
    """
    args = build_parser(prog).parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cellseg-knime`` command: errors print one line (``cellseg-knime: error: ...``) and return 2;
    SIGTERM is handled like Ctrl-C (temporary folders removed, status 143)."""
    from cellseg.cliutil import _quiet_tensorflow, run_command

    _quiet_tensorflow()
    parser = build_parser("cellseg-knime")
    args = parser.parse_args(argv)
    return run_command(parser.prog, args.func, args, terminated="temporary files removed")

if __name__ == "__main__":
    sys.exit(main())

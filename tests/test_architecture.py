"""The layering: the backend ``cellseg`` imports nothing of KNIME; the KNIME side imports the backend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
KNIME_PACKAGES = ("knime", "cellseg_knime")


def _is_knime(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in KNIME_PACKAGES)


def test_backend_sources_import_nothing_of_knime() -> None:
    """No ``import`` statement in src/cellseg names knime or cellseg_knime (not even inside a function)."""
    offenders = []
    for path in sorted((SRC / "cellseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(SRC)}:{node.lineno}: {n}" for n in names if _is_knime(n)]
    assert offenders == [], "the backend must not import KNIME code:\n" + "\n".join(offenders)


def test_importing_the_backend_loads_nothing_of_knime() -> None:
    """In a fresh interpreter: the backend modules and the ``cellseg`` command line (its parser with every
    subcommand, the KNIME side's ones only by name) load no KNIME module."""
    code = (
        "import importlib, pkgutil, sys, cellseg, cellseg.cli\n"
        "for m in pkgutil.iter_modules(cellseg.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('cellseg.' + m.name)\n"
        "assert not [m for m in sys.modules if m.startswith(('knime', 'cellseg_knime'))], 'import'\n"
        "usage = cellseg.cli.build_parser().format_help()\n"
        "assert 'run-workflow' in usage and 'make-workflows' in usage, usage\n"
        "leaked = [m for m in sys.modules if m.startswith(('knime', 'cellseg_knime'))]\n"
        "assert not leaked, leaked\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_workflow_tools_live_on_the_knime_side() -> None:
    assert not (SRC / "cellseg" / "workflows.py").exists()
    assert (SRC / "cellseg_knime" / "workflows" / "runner.py").is_file()


def test_modules_hold_one_concept_each_under_the_size_limit() -> None:
    """A module per concept, under about 400 lines (docs/architecture.md); the offline stand-in is exempt."""
    limit = 420
    big = [f"{p.relative_to(SRC)}: {n} lines" for p in sorted(SRC.rglob("*.py"))
           if "_standin" not in p.parts and (n := len(p.read_text().splitlines())) > limit]
    assert big == [], f"modules over {limit} lines:\n" + "\n".join(big)

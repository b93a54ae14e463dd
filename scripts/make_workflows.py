"""Regenerate the example KNIME workflows (folders and .knwf archives) in workflows/ from workflows/definitions.py.

Same as ``cellseg make-workflows`` or ``cellseg-knime make-workflows``; extra arguments are passed on
(e.g. ``--only retrain_stardist``).
"""

from __future__ import annotations

import sys

from cellseg_knime.workflows.cli import main

if __name__ == "__main__":
    sys.exit(main(["make-workflows", *sys.argv[1:]]))

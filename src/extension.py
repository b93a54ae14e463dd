"""KNIME extension module of cellseg (``extension_module: src/extension`` in knime.yml).

KNIME imports this file; importing the node modules registers the category and the nodes. KNIME puts the
folder of this file on ``sys.path``; the path setup below only makes that explicit, so that the packages
``cellseg`` (backend) and ``cellseg_knime`` (nodes) next to it are importable however it is loaded.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import cellseg_knime  # noqa: E402,F401  (the category)
import cellseg_knime.learners  # noqa: E402,F401
import cellseg_knime.predictor  # noqa: E402,F401
import cellseg_knime.scorer  # noqa: E402,F401
import cellseg_knime.sources  # noqa: E402,F401
import cellseg_knime.tiling  # noqa: E402,F401
import cellseg_knime.writers  # noqa: E402,F401

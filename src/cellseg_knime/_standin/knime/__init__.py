"""Offline stand-in of the ``knime`` namespace (see ``knime.extension`` for details).

Only put on ``sys.path`` by ``cellseg_knime.compat.ensure_knime_extension()`` when the
real KNIME Python API is not importable.
"""

"""Exceptions raised by the cellseg backend.

Every error caused by user input is an :class:`InputError` whose message names the offending file,
row, column or parameter, so that the CLI and the KNIME nodes can show it as it is.
"""

from __future__ import annotations


class CellsegError(Exception):
    """Base class of all cellseg errors."""


class InputError(CellsegError, ValueError):
    """Bad user input: a file, image, mask, table row or parameter that cannot be used."""


class ModelLoadError(CellsegError):
    """A model could not be loaded (missing files, offline download, incompatible bundle)."""


class CancelledError(CellsegError):
    """Long-running work was cancelled by the user."""

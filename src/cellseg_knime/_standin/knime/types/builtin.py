"""Stand-in of ``knime.types.builtin``: the Python value of KNIME's Path cell.

KNIME's Java side registers ``knime.types.builtin.FSLocationValue`` for the Path cell
(``org.knime.filehandling.core.data.location.FSLocationValueFactory``), so
``knext.logical(FSLocationValue)`` is the Path column type. The other value types of the real module
(boolean sets, bit/byte vectors, XML, ...) are not mirrored: the nodes do not use them.
"""

from __future__ import annotations

from typing import Any


class FSLocationValue:
    """A file system location: category (``"LOCAL"``, ``"RELATIVE"``, ``"CUSTOM_URL"``...), specifier, path.

    As in KNIME, a plain value holder: no validation and no ``__eq__`` (compare ``to_dict()``).
    """

    def __init__(self, fs_category: Any, fs_specifier: Any, path: Any) -> None:
        self.fs_category = fs_category
        self.fs_specifier = fs_specifier
        self.path = path

    def to_dict(self) -> dict:
        return {"fs_category": self.fs_category, "fs_specifier": self.fs_specifier, "path": self.path}

    def __repr__(self) -> str:
        return str(self.to_dict())

"""Make ``import knime.extension as knext`` work everywhere.

Inside KNIME the real ``knime.extension`` (package ``knime-extension``, not on PyPI) is used. Elsewhere
(tests, headless runs) ``ensure_knime_extension()`` puts the offline stand-in in ``_standin/`` at the
front of ``sys.path`` so that ``knime.extension`` resolves to it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent / "_standin"

_using_standin: bool | None = None


def ensure_knime_extension() -> bool:
    """Import ``knime.extension``; fall back to the stand-in. True if the real package is used. Idempotent."""
    global _using_standin
    if _using_standin is not None:
        return not _using_standin
    try:
        importlib.import_module("knime.extension")
        _using_standin = _is_standin_module(sys.modules["knime.extension"])
        return not _using_standin
    except ImportError:
        pass
    for name in [m for m in sys.modules if m == "knime" or m.startswith("knime.")]:
        del sys.modules[
            name
        ]  # a partially imported or unrelated ``knime`` package must not shadow the stand-in
    path = str(STANDIN_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    importlib.invalidate_caches()
    importlib.import_module("knime.extension")
    _using_standin = True
    return False


def using_standin() -> bool:
    """True if ``knime.extension`` is (or, once ensured, will be) the offline stand-in."""
    if _using_standin is None:
        ensure_knime_extension()
    return bool(_using_standin)


def _is_standin_module(module: object) -> bool:
    file = getattr(module, "__file__", None) or ""
    return Path(file).resolve().is_relative_to(STANDIN_DIR)

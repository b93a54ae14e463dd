"""The stardist names cellseg uses beyond stardist's public API, in one place, with the versions they fit.

cellseg runs stardist's network itself (batched, tiled) and then stardist's own post-processing on the
outputs. All of that is public stardist API (``StarDist2D.predict_sparse``, ``stardist.nms``'s
``non_maximum_suppression_sparse``, ``stardist.geometry``'s ``polygons_to_label`` and ``dist_to_coord``)
except the candidate selection, ``stardist.nms._ind_prob_thresh``: using stardist's own keeps cellseg's
candidates (and so its labels) those of ``predict_instances``. ``tests/test_stardist_compat.py`` fails
with a clear message when an installed stardist no longer has it in the expected form.
"""

from __future__ import annotations

import functools
import warnings
from importlib import metadata

import numpy as np

#: stardist versions the private names below were checked against: ``(lowest, first excluded)``.
STARDIST_VERSIONS = ((0, 9), (0, 10))
#: Parameters of ``stardist.nms._ind_prob_thresh`` as written against.
IND_PROB_THRESH_PARAMETERS = ("prob", "prob_thresh", "b")


class StardistVersionWarning(UserWarning):
    """The installed stardist is outside :data:`STARDIST_VERSIONS`; its private names may differ."""


def version_problem(version: str | None = None) -> str | None:
    """Why the stardist ``version`` (default: the installed one) is outside :data:`STARDIST_VERSIONS`, or None."""
    if version is None:
        try:
            version = metadata.version("stardist")
        except metadata.PackageNotFoundError:
            return "stardist is not installed"
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        parts.append(int(digits) if digits else -1)
    lo, hi = STARDIST_VERSIONS
    if lo <= tuple(parts) < hi:
        return None
    return (f"stardist {version} is installed; cellseg's use of stardist internals (stardist.nms._ind_prob_thresh) "
            f"was written for stardist >= {'.'.join(map(str, lo))}, < {'.'.join(map(str, hi))}: "
            "check cellseg.stardist_compat (run tests/test_stardist_compat.py)")


@functools.cache
def _warn_version_once() -> None:
    problem = version_problem()
    if problem is not None:
        warnings.warn(problem, StardistVersionWarning, stacklevel=3)


def candidate_mask(prob: np.ndarray, prob_thresh: float, b: int | tuple = 2) -> np.ndarray:
    """stardist's candidate mask: ``prob > prob_thresh`` without the ``b`` border cells of the map.

    ``stardist.nms._ind_prob_thresh`` (``b`` an integer, or per-axis ``(before, after)`` pairs).
    """
    from stardist.nms import _ind_prob_thresh

    _warn_version_once()
    return _ind_prob_thresh(prob, prob_thresh, b=b)

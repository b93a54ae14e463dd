"""The stardist internals cellseg relies on (cellseg.stardist_compat) are there, in the form written against.

When one of these fails after a stardist upgrade, check cellseg/stardist_compat.py and cellseg/segment.py
against the new stardist before widening ``STARDIST_VERSIONS``.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from cellseg import stardist_compat as compat


def test_installed_stardist_is_in_the_version_range_written_against():
    import stardist

    problem = compat.version_problem()
    assert problem is None, f"{problem} (installed: stardist {stardist.__version__})"


def test_version_outside_the_range_is_named():
    assert compat.version_problem("0.9.2") is None
    for version in ("0.8.5", "0.10.0", "1.0"):
        message = compat.version_problem(version)
        assert message is not None and f"stardist {version} is installed" in message and "_ind_prob_thresh" in message


def test_version_warning_on_first_use(monkeypatch):
    monkeypatch.setattr(compat, "version_problem", lambda: "stardist 9.9 is installed; check cellseg.stardist_compat")
    compat._warn_version_once.cache_clear()
    try:
        with pytest.warns(compat.StardistVersionWarning, match="stardist 9.9"):
            compat.candidate_mask(np.zeros((8, 8), np.float32), 0.5)
    finally:
        compat._warn_version_once.cache_clear()


def test_private_candidate_selection_has_the_expected_signature_and_behaviour():
    try:
        from stardist.nms import _ind_prob_thresh
    except ImportError as err:  # pragma: no cover - only after a stardist change
        pytest.fail(f"stardist.nms._ind_prob_thresh is gone ({err}); cellseg.stardist_compat.candidate_mask "
                    "needs stardist's new candidate selection")
    params = tuple(inspect.signature(_ind_prob_thresh).parameters)
    assert params == compat.IND_PROB_THRESH_PARAMETERS, (
        f"stardist.nms._ind_prob_thresh now takes {params}, cellseg was written for "
        f"{compat.IND_PROB_THRESH_PARAMETERS}: check cellseg.stardist_compat.candidate_mask")
    assert inspect.signature(_ind_prob_thresh).parameters["b"].default == 2
    prob = np.full((10, 12), 0.9, np.float32)
    prob[5, 5] = 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error", compat.StardistVersionWarning)
        mask = compat.candidate_mask(prob, 0.5, b=2)
    expected = np.zeros((10, 12), bool)
    expected[2:-2, 2:-2] = True
    expected[5, 5] = False
    assert mask.dtype == bool and np.array_equal(mask, expected), "stardist's candidate selection changed"
    # per-axis (before, after) borders, -1 meaning none (as stardist's tiled predict_sparse passes them)
    expected = np.zeros((10, 12), bool)
    expected[2:, :-2] = True
    expected[5, 5] = False
    assert np.array_equal(compat.candidate_mask(prob, 0.5, b=((2, -1), (-1, 2))), expected)


def test_public_stardist_api_used_by_the_segmentation_step():
    """The public functions cellseg.segment calls take the arguments it passes."""
    from stardist.geometry import dist_to_coord, polygons_to_label
    from stardist.models import StarDist2D
    from stardist.nms import non_maximum_suppression_sparse

    def params(f) -> set[str]:
        return set(inspect.signature(f).parameters)

    assert {"dist", "prob", "points", "nms_thresh", "verbose"} <= params(non_maximum_suppression_sparse)
    assert {"dist", "points", "shape", "prob"} <= params(polygons_to_label)
    assert {"dist", "points"} <= params(dist_to_coord)
    assert {"img", "prob_thresh", "n_tiles", "show_tile_progress"} <= params(StarDist2D.predict_sparse)

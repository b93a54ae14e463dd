"""Tests of cellseg.metrics against stardist.matching."""

from __future__ import annotations

import numpy as np
import pytest
from stardist.matching import matching, matching_dataset

from cellseg.errors import InputError
from cellseg.metrics import COLUMNS, IOU_THRESHOLDS, ap_at, mean_ap, score_dataset, score_image
from cellseg.simulate import simulate_image


def _gt(seed=0):
    return simulate_image(128, seed=seed)[1]


def test_thresholds():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_perfect_prediction_scores_one():
    gt = _gt()
    pred = gt.astype(np.int32) * 3  # other label values, same objects
    df = score_image(gt, pred)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == len(IOU_THRESHOLDS)
    for col in ("precision", "recall", "f1", "accuracy", "mean_matched_score", "panoptic_quality"):
        assert np.allclose(df[col], 1.0)
    assert (df["fp"] == 0).all() and (df["fn"] == 0).all() and (df["tp"] == gt.max()).all()
    assert mean_ap(df) == pytest.approx(1.0) and ap_at(df, 0.5) == pytest.approx(1.0)


def test_shifted_and_missing_objects_score_lower():
    gt = _gt(1)
    n = int(gt.max())
    shifted = np.roll(gt, 3, axis=1)
    missing = gt.copy()
    missing[np.isin(missing, np.arange(1, n // 2 + 1))] = 0
    perfect = mean_ap(score_image(gt, gt))
    s_shift = score_image(gt, shifted)
    s_miss = score_image(gt, missing)
    assert mean_ap(s_shift) < perfect and mean_ap(s_miss) < perfect
    # high thresholds suffer most from a shift
    assert s_shift["accuracy"].iloc[-1] <= s_shift["accuracy"].iloc[0]
    assert (s_miss["fn"] == n // 2).all() and (s_miss["fp"] == 0).all()
    assert s_miss["recall"].iloc[0] == pytest.approx((n - n // 2) / n)


@pytest.mark.parametrize("seed", [2, 3])
def test_matches_stardist_matching(seed):
    gt = _gt(seed)
    rng = np.random.default_rng(seed)
    pred = np.roll(gt, (1, 2), axis=(0, 1)).astype(np.uint16)
    pred[pred == 2] = 0
    pred[rng.random(pred.shape) < 0.05] = 0
    df = score_image(gt, pred)
    for row, thr in zip(df.itertuples(), IOU_THRESHOLDS, strict=True):
        ref = matching(gt, pred, thresh=thr)
        assert row.iou_threshold == thr
        for col in COLUMNS[1:]:
            assert getattr(row, col) == pytest.approx(getattr(ref, col)), col


def test_score_dataset_pooled_like_matching_dataset():
    gts = [_gt(s) for s in range(3)]
    preds = [np.roll(g, s, axis=0) for s, g in enumerate(gts)]
    preds[2] = np.zeros_like(preds[2])  # an empty prediction
    per_image, summary = score_dataset(gts, preds, names=["a", "b", "c"])
    assert list(per_image.columns) == ["image", *COLUMNS]
    assert len(per_image) == 3 * len(IOU_THRESHOLDS) and list(per_image["image"].unique()) == ["a", "b", "c"]
    assert list(summary.columns) == list(COLUMNS) and len(summary) == len(IOU_THRESHOLDS)
    ref = matching_dataset(gts, preds, thresh=IOU_THRESHOLDS, by_image=False, show_progress=False)
    for row, r in zip(summary.itertuples(), ref, strict=True):
        for col in COLUMNS[1:]:
            assert getattr(row, col) == pytest.approx(getattr(r, col)), col
    # pooled counts are sums of per-image counts
    sums = per_image.groupby("iou_threshold")[["tp", "fp", "fn", "n_true"]].sum().reset_index(drop=True)
    assert (sums.to_numpy() == summary[["tp", "fp", "fn", "n_true"]].to_numpy()).all()
    assert ap_at(summary, 0.5) == pytest.approx(ref[0].accuracy)
    assert mean_ap(summary) == pytest.approx(np.mean([r.accuracy for r in ref]))


def test_errors():
    gt = _gt()
    with pytest.raises(InputError, match="shape"):
        score_image(gt, gt[:-1])
    with pytest.raises(InputError, match="not integer"):
        score_image(gt, gt.astype(np.float32))
    with pytest.raises(InputError, match="2 ground truth images but 1"):
        score_dataset([gt, gt], [gt])
    with pytest.raises(InputError, match="threshold 0.33"):
        ap_at(score_image(gt, gt), 0.33)

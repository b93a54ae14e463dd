"""Instance segmentation scores over IoU thresholds.

The matching itself is :func:`stardist.matching.matching` (optimal one-to-one assignment of ground
truth and predicted objects at each IoU threshold), so cellseg's numbers are the ones StarDist papers
report. ``accuracy`` is the DSB 2018 style average precision ``tp / (tp + fp + fn)``; averaged over the
thresholds 0.5..0.95 it is the DSB score (:func:`mean_ap`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellseg.errors import InputError

__all__ = ["COLUMNS", "IOU_THRESHOLDS", "ap_at", "mean_ap", "pool", "score_dataset", "score_image"]

#: IoU thresholds 0.5, 0.55, ..., 0.95 (the DSB 2018 / COCO range).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: Columns of the score tables, in order.
COLUMNS: tuple[str, ...] = (
    "iou_threshold",
    "n_true",
    "n_pred",
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "mean_true_score",
    "mean_matched_score",
    "panoptic_quality",
)
_INT_COLUMNS = ("n_true", "n_pred", "tp", "fp", "fn")


def _thresholds(thresholds: float | Sequence[float]) -> tuple[float, ...]:
    ths = (thresholds,) if np.isscalar(thresholds) else tuple(thresholds)
    if not ths or not all(isinstance(t, (int, float, np.integer, np.floating)) and 0 <= t <= 1 for t in ths):
        raise InputError(f"thresholds {thresholds!r}: expected IoU thresholds in [0, 1]")
    return tuple(float(t) for t in ths)


def _check_labels(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: labels are not integer (dtype {arr.dtype})")
    if arr.ndim != 2:
        raise InputError(f"{name}: labels have shape {arr.shape}; expected a 2D YX label image")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name}: labels have negative values")
    return arr


def _table(stats: Sequence) -> pd.DataFrame:
    rows = [{"iou_threshold": float(s.thresh), **{c: getattr(s, c) for c in COLUMNS[1:]}} for s in stats]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in COLUMNS:
        df[c] = df[c].astype("int64" if c in _INT_COLUMNS else "float64")
    return df


def score_image(
    gt: np.ndarray, pred: np.ndarray, thresholds: float | Sequence[float] = IOU_THRESHOLDS, name: str = "image"
) -> pd.DataFrame:
    """Score a predicted label image against ground truth at each IoU threshold.

    Parameters
    ----------
    gt, pred : ndarray
        Integer ``YX`` label images of the same shape (0 = background).
    thresholds : float or sequence of float
        IoU thresholds.
    name : str
        Name used in error messages.

    Returns
    -------
    scores : DataFrame
        One row per threshold with the columns of :data:`COLUMNS`. As in StarDist, an image without
        ground truth and prediction objects scores 0.
    """
    from stardist.matching import matching

    ths = _thresholds(thresholds)
    gt = _check_labels(gt, f"{name} ground truth")
    pred = _check_labels(pred, f"{name} prediction")
    if gt.shape != pred.shape:
        raise InputError(f"{name}: ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    return _table(matching(gt, pred, thresh=ths))


def score_dataset(
    gts: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    thresholds: float | Sequence[float] = IOU_THRESHOLDS,
    names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a dataset per image and pooled over all images.

    Returns
    -------
    per_image : DataFrame
        Column ``image`` (the names, or ``image_0000``...) followed by :data:`COLUMNS`, one row per
        image and threshold.
    summary : DataFrame
        One row per threshold; counts are pooled over all images before computing the ratios, as
        :func:`stardist.matching.matching_dataset` with ``by_image=False`` does, so large images with many
        objects weigh more than small ones.
    """
    ths = _thresholds(thresholds)
    if len(gts) != len(preds):
        raise InputError(f"score_dataset: {len(gts)} ground truth images but {len(preds)} predictions")
    if names is None:
        names = [f"image_{i:04d}" for i in range(len(gts))]
    elif len(names) != len(gts):
        raise InputError(f"score_dataset: {len(names)} names for {len(gts)} images")
    if len(gts) == 0:
        raise InputError("score_dataset: no images to score")
    tables = []
    for name, gt, pred in zip(names, gts, preds, strict=True):
        table = score_image(gt, pred, ths, name=str(name))
        table.insert(0, "image", str(name))
        tables.append(table)
    per_image = pd.concat(tables, ignore_index=True)
    return per_image, pool(per_image)


def pool(per_image: pd.DataFrame) -> pd.DataFrame:
    """Pool per-image score rows into one row per threshold (counts summed before the ratios).

    The same numbers as :func:`stardist.matching.matching_dataset` with ``by_image=False``, computed from
    the per-image tables alone, so that a stream of images can be scored without keeping the images.
    """
    if len(per_image) == 0:
        raise InputError("pool: no scores to pool")
    df = per_image.assign(_matched=per_image["mean_matched_score"] * per_image["tp"])
    sums = df.groupby("iou_threshold", sort=True)[[*_INT_COLUMNS, "_matched"]].sum()

    def ratio(a: pd.Series, b: pd.Series) -> pd.Series:
        return (a / b.where(b > 0)).fillna(0.0)

    tp, fp, fn, sm = sums["tp"], sums["fp"], sums["fn"], sums["_matched"]
    out = sums[list(_INT_COLUMNS)].assign(
        precision=ratio(tp, tp + fp), recall=ratio(tp, tp + fn), f1=ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=ratio(tp, tp + fp + fn), mean_true_score=ratio(sm, sums["n_true"]),
        mean_matched_score=ratio(sm, tp), panoptic_quality=ratio(sm, tp + fp / 2 + fn / 2),
    ).reset_index()
    out = out[list(COLUMNS)]
    for c in COLUMNS:
        out[c] = out[c].astype("int64" if c in _INT_COLUMNS else "float64")
    return out


def mean_ap(summary: pd.DataFrame) -> float:
    """Mean of ``accuracy`` (DSB average precision) over the thresholds of a score table."""
    if "accuracy" not in summary or len(summary) == 0:
        raise InputError("mean_ap: table has no 'accuracy' scores")
    return float(summary["accuracy"].mean())


def ap_at(summary: pd.DataFrame, threshold: float = 0.5) -> float:
    """``accuracy`` (DSB average precision) at one IoU threshold (mean over rows if several images)."""
    if "iou_threshold" not in summary or "accuracy" not in summary:
        raise InputError("ap_at: table has no 'iou_threshold'/'accuracy' columns")
    rows = summary[np.isclose(summary["iou_threshold"].to_numpy(dtype=float), threshold)]
    if len(rows) == 0:
        raise InputError(
            f"ap_at: threshold {threshold} not in the table (has {sorted(set(summary['iou_threshold']))})"
        )
    return float(rows["accuracy"].mean())

"""StarDist Scorer: per-image matching scores and a pooled summary over IoU thresholds."""

from __future__ import annotations

from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg.errors import InputError
from cellseg.metrics import COLUMNS, IOU_THRESHOLDS
from cellseg_knime import category, icon
from cellseg_knime import tables as kt

_INT = ("n_true", "n_pred", "tp", "fp", "fn")
DEFAULT_THRESHOLDS = ", ".join(f"{t:g}" for t in IOU_THRESHOLDS)


def parse_thresholds(text: str) -> tuple[float, ...]:
    """IoU thresholds from ``"0.5, 0.55, ..."`` (ValueError if empty or outside [0, 1])."""
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError as err:
        raise ValueError(f"IoU thresholds '{text}': not a comma-separated list of numbers") from err
    if not values or not all(0 < v <= 1 for v in values):
        raise ValueError(f"IoU thresholds '{text}': give one or more numbers in (0, 1]")
    return values


def _validate_thresholds(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not a string")
    parse_thresholds(text)


def _ktype(name: str) -> Any:
    return knext.int64() if name in _INT else knext.double()


def per_image_schema() -> knext.Schema:
    return knext.Schema.from_columns([knext.Column(knext.string(), "source_row_id")]
                                     + [knext.Column(_ktype(c), c) for c in COLUMNS])


def summary_schema() -> knext.Schema:
    return knext.Schema.from_columns([knext.Column(_ktype(c), c) for c in COLUMNS])


class _Pool:
    """Counts pooled over images (as ``stardist.matching.matching_dataset(by_image=False)``)."""

    def __init__(self, thresholds: tuple[float, ...]) -> None:
        self.thresholds = thresholds
        self.counts = np.zeros((len(thresholds), 5), dtype=np.int64)  # n_true n_pred tp fp fn
        self.matched = np.zeros(len(thresholds))  # sum of matched IoUs

    def add(self, scores: pd.DataFrame) -> None:
        self.counts += scores[list(_INT)].to_numpy(dtype=np.int64)
        self.matched += scores["mean_matched_score"].to_numpy(dtype=float) * scores["tp"].to_numpy(dtype=float)

    def table(self) -> pd.DataFrame:
        rows = []
        for t, (n_true, n_pred, tp, fp, fn), sm in zip(self.thresholds, self.counts, self.matched):
            def ratio(a: float, b: float) -> float:
                return float(a / b) if b > 0 else 0.0

            rows.append({
                "iou_threshold": float(t), "n_true": n_true, "n_pred": n_pred, "tp": tp, "fp": fp, "fn": fn,
                "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
                "f1": ratio(2 * tp, 2 * tp + fp + fn), "accuracy": ratio(tp, tp + fp + fn),
                "mean_true_score": ratio(sm, n_true), "mean_matched_score": ratio(sm, tp),
                "panoptic_quality": ratio(sm, tp + fp / 2 + fn / 2),
            })
        df = pd.DataFrame(rows, columns=list(COLUMNS))
        for c in COLUMNS:
            df[c] = df[c].astype("int64" if c in _INT else "float64")
        df.index = pd.Index([f"IoU {t:.2f}" for t in self.thresholds], dtype=object)
        return df


@knext.node(
    name="StarDist Scorer",
    node_type=knext.NodeType.OTHER,
    icon_path=icon("scorer"),
    category=category,
    id="scorer",
)
@knext.input_table("Label images", "Table with a ground-truth and a predicted label image column (TIFF bytes "
                   "or paths), e.g. the StarDist Predictor's output on a table with ground truth.")
@knext.output_table("Scores per image", "For each image and IoU threshold: object counts, true/false "
                    "positives, false negatives, precision, recall, F1, accuracy (average precision), mean "
                    "IoU scores and panoptic quality.")
@knext.output_table("Summary", "The same scores with the counts pooled over all images, one row per IoU "
                    "threshold. Flow variables cellseg_ap50 and cellseg_mean_ap hold AP at IoU 0.5 and the mean "
                    "AP over the thresholds.")
class StarDistScorer:
    """Scores predicted label images against ground truth over IoU thresholds 0.5 to 0.95.

    Predicted and true objects are matched one to one (optimal assignment) where their intersection over
    union (IoU) exceeds the threshold, as in the StarDist papers. *Accuracy* is the average precision of the
    Data Science Bowl 2018, tp / (tp + fp + fn); averaged over the thresholds 0.5..0.95 it is the DSB score
    (flow variable ``cellseg_mean_ap``).
    """

    truth_column = knext.ColumnParameter("Ground-truth column", "Column with the true label images.",
                                         port_index=0, column_filter=kt.is_image_column)
    prediction_column = knext.ColumnParameter("Prediction column", "Column with the predicted label images.",
                                              port_index=0, column_filter=kt.is_image_column)
    iou_thresholds = knext.StringParameter("IoU thresholds", "Comma-separated IoU thresholds.",
                                           DEFAULT_THRESHOLDS, validator=_validate_thresholds, is_advanced=True)

    def _columns(self, schema: knext.Schema) -> tuple[str, str]:
        truth = kt.pick_column(schema, self.truth_column, "Ground-truth column",
                               preferred=("labels", "mask", "ground_truth", "gt"))
        pred = self.prediction_column
        if not pred:
            others = [c.name for c in schema if kt.is_image_column(c) and c.name != truth
                      and not c.name.startswith("image")]
            pred = next((p for p in ("labels (#1)", "prediction", "predicted") if p in others),
                        others[-1] if others else None)
        pred = kt.pick_column(schema, pred, "Prediction column", exclude=(truth,))
        if pred == truth:
            raise knext.InvalidParametersError(f"Ground-truth and prediction column are the same column '{truth}'")
        self.truth_column, self.prediction_column = truth, pred
        return truth, pred

    def configure(self, config_context: knext.ConfigurationContext, schema: knext.Schema) -> Any:
        self._columns(schema)
        try:
            parse_thresholds(self.iou_thresholds)
        except ValueError as err:
            raise knext.InvalidParametersError(str(err)) from err
        return per_image_schema(), summary_schema()

    def execute(self, exec_context: knext.ExecutionContext, table: knext.Table) -> Any:
        from cellseg.metrics import score_image

        total = kt.require_rows(table, "label table")
        truth, pred = self._columns(table.schema)
        thresholds = parse_thresholds(self.iou_thresholds)
        pool = _Pool(thresholds)
        out = knext.BatchOutputTable.create(row_ids="keep")
        for done, df in kt.iter_rows(table, [truth, pred]):
            frames = []
            for i, (rid, t_cell, p_cell) in enumerate(zip(df.index, df[truth], df[pred])):
                kt.check_canceled(exec_context, f"{done + i} of {total} images scored")
                gt = kt.read_labels(t_cell, str(rid), truth)
                pr = kt.read_labels(p_cell, str(rid), pred, gt.shape)
                try:
                    scores = score_image(gt, pr, thresholds, name=f"Row '{rid}'")
                except InputError as err:
                    raise ValueError(str(err)) from err
                pool.add(scores)
                scores.insert(0, "source_row_id", str(rid))
                scores.index = pd.Index([f"{rid} @ {t:.2f}" for t in thresholds], dtype=object)
                frames.append(scores)
                exec_context.set_progress((done + i + 1) / total, f"scored {done + i + 1} of {total} images")
            if frames:
                out.append(pd.concat(frames))
        summary = pool.table()
        exec_context.flow_variables["cellseg_mean_ap"] = float(summary["accuracy"].mean())
        if any(np.isclose(summary["iou_threshold"], 0.5)):
            exec_context.flow_variables["cellseg_ap50"] = float(
                summary.loc[np.isclose(summary["iou_threshold"], 0.5), "accuracy"].iloc[0])
        return out, knext.Table.from_pandas(summary, row_ids="keep")

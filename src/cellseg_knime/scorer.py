"""StarDist Scorer: per-image matching scores and a pooled summary over IoU thresholds."""

from __future__ import annotations

from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg.metrics import COLUMNS, IOU_THRESHOLDS
from cellseg_knime import cells, node
from cellseg_knime import tables as kt
from cellseg_knime.views import scores_view

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


def per_image_columns() -> list[Any]:
    return ([knext.Column(knext.string(), "prediction"), knext.Column(knext.string(), "source_row_id")]
            + [knext.Column(_ktype(c), c) for c in COLUMNS])


def summary_columns() -> list[Any]:
    return [knext.Column(knext.string(), "prediction")] + [knext.Column(_ktype(c), c) for c in COLUMNS]


def per_image_schema() -> knext.Schema:
    return knext.Schema.from_columns(per_image_columns())


def summary_schema() -> knext.Schema:
    return knext.Schema.from_columns(summary_columns())


@node("StarDist Scorer", knext.NodeType.OTHER, "scorer")
@knext.input_table("Label images", "Table with a ground-truth and a predicted label image column (PNG image "
                   "cells, Path cells or string paths), e.g. the StarDist Predictor's output on a table with ground "
                   "truth.")
@knext.output_table("Scores per image", "For each image and IoU threshold: object counts, true/false "
                    "positives, false negatives, precision, recall, F1, accuracy (average precision), mean "
                    "IoU scores and panoptic quality.")
@knext.output_table("Summary", "The same scores with the counts pooled over all images, one row per "
                    "prediction column and IoU threshold (column 'prediction' names the column). Flow variables "
                    "cellseg_ap50 and cellseg_mean_ap hold AP at IoU 0.5 and the mean AP over the thresholds of the "
                    "last prediction column.")
@knext.output_view("Scores", "Precision, recall, F1 and average precision over the IoU thresholds, one line per "
                   "prediction column.")
class StarDistScorer:
    """Scores predicted label images against ground truth over IoU thresholds 0.5 to 0.95.

    Predicted and true objects are matched one to one (optimal assignment) where their intersection over
    union (IoU) exceeds the threshold, as in the StarDist papers. *Accuracy* is the average precision of the
    Data Science Bowl 2018, tp / (tp + fp + fn); averaged over the thresholds 0.5..0.95 it is the DSB score
    (flow variable ``cellseg_mean_ap``).
    """

    truth_column = knext.ColumnParameter("Ground-truth column", "Column with the true label images.",
                                         port_index=0, column_filter=cells.is_image_column)
    prediction_columns = knext.MultiColumnParameter(
        "Prediction columns", "Columns with predicted label images, each scored against the ground truth (e.g. "
        "the predictions before and after retraining). Empty: every label column other than the ground truth.",
        port_index=0, column_filter=cells.is_image_column)
    iou_thresholds = knext.StringParameter("IoU thresholds", "Comma-separated IoU thresholds.",
                                           DEFAULT_THRESHOLDS, validator=_validate_thresholds, is_advanced=True)

    def _columns(self, schema: knext.Schema) -> tuple[str, list[str]]:
        truth = kt.pick_column(schema, self.truth_column, "Ground-truth column",
                               preferred=("labels", "mask", "ground_truth", "gt"))
        preds = list(self.prediction_columns or [])
        if not preds:
            preds = [c.name for c in schema if cells.is_image_column(c) and c.name != truth
                     and not c.name.startswith(("image", "tile", "preview")) and c.name != "label_path"]
        if not preds:
            raise knext.InvalidParametersError("Prediction columns: the input table has no label column besides "
                                               f"the ground truth '{truth}'")
        for p in preds:
            kt.pick_column(schema, p, "Prediction columns")
        if truth in preds:
            raise knext.InvalidParametersError(f"Ground-truth column '{truth}' is also selected as a prediction")
        self.truth_column, self.prediction_columns = truth, preds
        return truth, preds

    def configure(self, config_context: knext.ConfigurationContext, schema: knext.Schema) -> Any:
        self._columns(schema)
        try:
            parse_thresholds(self.iou_thresholds)
        except ValueError as err:
            raise knext.InvalidParametersError(str(err)) from err
        return per_image_schema(), summary_schema()

    def execute(self, exec_context: knext.ExecutionContext, table: knext.Table) -> Any:
        from cellseg.metrics import pool, score_image

        total = kt.require_rows(table, "label table")
        truth, preds = self._columns(table.schema)
        thresholds = parse_thresholds(self.iou_thresholds)
        scores: dict[str, list[pd.DataFrame]] = {p: [] for p in preds}
        out = kt.BatchWriter(per_image_columns())
        for done, df in kt.iter_rows(table, [truth, *preds]):
            columns = {c: list(df[c]) for c in (truth, *preds)}  # column by column: image cells
            for i, rid in enumerate(df.index):
                kt.check_canceled(exec_context, f"{done + i} of {total} images scored")
                gt = cells.read_labels(columns[truth][i], str(rid), truth, ctx=exec_context)
                for p in preds:
                    pr = cells.read_labels(columns[p][i], str(rid), p, gt.shape, ctx=exec_context)
                    s = score_image(gt, pr, thresholds, name=f"Row '{rid}'")  # InputError names the row
                    scores[p].append(s)
                    s = s.copy()
                    s.insert(0, "source_row_id", str(rid))
                    s.insert(0, "prediction", p)
                    for t, row in zip(thresholds, s.to_dict("records")):
                        out.add(f"{p}: {rid} @ {t:.2f}", row)
                exec_context.set_progress((done + i + 1) / total, f"scored {done + i + 1} of {total} images")
        summaries = []
        summary_out = kt.BatchWriter(summary_columns())
        for p in preds:
            summary = pool(pd.concat(scores[p], ignore_index=True))
            summary.insert(0, "prediction", p)
            for t, row in zip(summary["iou_threshold"], summary.to_dict("records")):
                summary_out.add(f"{p} @ IoU {t:.2f}", row)
            summaries.append(summary)
        first = summaries[-1]
        exec_context.flow_variables["cellseg_mean_ap"] = float(first["accuracy"].mean())
        at50 = np.isclose(first["iou_threshold"], 0.5)
        if at50.any():
            exec_context.flow_variables["cellseg_ap50"] = float(first.loc[at50, "accuracy"].iloc[0])
        return out.table(), summary_out.table(), scores_view(pd.concat(summaries, ignore_index=True))

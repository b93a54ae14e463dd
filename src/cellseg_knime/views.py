"""Node views: what people would rather look at than read (segmentations, scores)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg.render import overlay

_STYLE = ("<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}figure{display:inline-block;margin:4px}"
          "figcaption{text-align:center}</style>")


def _png_base64(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", escape=True, border=0)


class Gallery:
    """The Predictor's view: the first ``n_images`` overlays and the first ``n_rows`` objects."""

    def __init__(self, n_images: int = 4, n_rows: int = 10, size: int = 384) -> None:
        self.n_images, self.n_rows, self.size = n_images, n_rows, size
        self.figures: list[tuple[str, str, int]] = []
        self.rows: list[pd.DataFrame] = []
        self.n_seen = 0

    def add_image(self, row_id: str, image: np.ndarray, labels: np.ndarray) -> None:
        if len(self.figures) < self.n_images:
            n = int(len(np.unique(labels[labels > 0])))
            self.figures.append((row_id, _png_base64(overlay(image, labels, max_size=self.size)), n))

    def add_objects(self, row_id: str, objects: pd.DataFrame) -> None:
        self.n_seen += len(objects)
        have = sum(len(r) for r in self.rows)
        if have < self.n_rows and len(objects):
            part = objects.head(self.n_rows - have).copy()
            part.insert(0, "image", row_id)
            part["polygon"] = part["polygon"].map(lambda p: str(p)[:40] + ("..." if len(str(p)) > 40 else ""))
            self.rows.append(part)

    def view(self) -> Any:
        figures = "".join(
            f"<figure><img src='data:image/png;base64,{data}'/><figcaption>{html.escape(rid)}: {n} objects"
            "</figcaption></figure>" for rid, data, n in self.figures)
        if not figures:
            figures = "<p>Large-image mode: the label images are files (see the output table).</p>"
        rows = (_table_html(pd.concat(self.rows, ignore_index=True)) if self.rows
                else "<p>No objects were detected.</p>")
        return knext.view_html(f"<html><head>{_STYLE}</head><body><h3>Segmentation</h3>{figures}"
                               f"<h3>First objects of {self.n_seen}</h3>{rows}</body></html>")


def scores_view(summary: pd.DataFrame) -> Any:
    """The Scorer's view: precision, recall, F1 and AP over the IoU thresholds, a line per prediction column."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4), dpi=100)
    metrics = (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"), ("accuracy", "AP (DSB)"))
    for k, (col, title) in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        for name, rows in summary.groupby("prediction", sort=False):
            ax.plot(rows["iou_threshold"], rows[col], marker="o", markersize=3, label=str(name))
        ax.set_title(title)
        ax.set_xlabel("IoU threshold")
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return knext.view_matplotlib(fig)

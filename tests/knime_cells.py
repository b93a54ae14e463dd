"""Test helpers: image columns of each kind KNIME hands a node (PNG image cells, Path cells, string paths)."""

from __future__ import annotations

import io
from pathlib import Path

import knime.extension as knext
import numpy as np
import pandas as pd
from PIL import Image

from cellseg.images import write_image
from cellseg_knime import cells, compat

KINDS = ("png", "path", "string")


def png(array: np.ndarray) -> Image.Image:
    """A PNG image cell as a downstream node sees it: PIL's image of the PNG bytes."""
    buf = io.BytesIO()
    cells.png_cell(array).save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def column(arrays: list, kind: str, folder: Path | None = None, stem: str = "im") -> list:
    """Cells of ``arrays``: PNG images, or TIFF files in ``folder`` as Path cells or strings."""
    if kind == "png":
        return [png(a) for a in arrays]
    assert folder is not None
    paths = [write_image(folder / f"{stem}{i}.tif", a) for i, a in enumerate(arrays)]
    if kind == "path":
        return [cells.path_cell(p) for p in paths]
    return [str(p) for p in paths]


def image_df(images: list, labels: list | None = None, kind: str = "png", folder: Path | None = None) -> pd.DataFrame:
    data = {"name": [f"im{i}" for i in range(len(images))], "image": column(images, kind, folder, "im")}
    if labels is not None:
        data["labels"] = column(labels, kind, folder, "lbl")
    return pd.DataFrame(data)


def table_of(df: pd.DataFrame, batch_rows: int | None = None) -> knext.Table:
    table = knext.Table.from_pandas(df)
    if batch_rows and compat.using_standin():
        table._batch_size = batch_rows  # stand-in only: several batches from table.batches()
    return table


def array(cell: object) -> np.ndarray:
    """The pixels of an output cell (PNG image or Path cell)."""
    return cells.read_cell(cell, "test", "test", labels=True)


def same_schema(configured: knext.Schema, table: object) -> None:
    """Output columns, names and types, exactly as configured (also for empty tables)."""
    assert [c.name for c in table.schema] == configured.column_names  # type: ignore[attr-defined]
    for col, actual in zip(configured, table.schema):  # type: ignore[attr-defined]
        assert actual.ktype == col.ktype, (col.name, actual.ktype, col.ktype)


def batch_sizes(table: object) -> list[int]:
    """Rows of each batch a node appended to a BatchOutputTable."""
    return [b.num_rows for b in table.batches()]  # type: ignore[attr-defined]


def tiny_learner_node(**training: int) -> object:
    """A StarDist Learner node with a tiny network (16 rays, depth 2, 8 filters, 64-pixel patches)."""
    from cellseg_knime.learners import StarDistLearner

    node = StarDistLearner()
    node.architecture.n_rays = 16
    node.architecture.unet_n_depth = 2
    node.architecture.unet_n_filter_base = 8
    node.training.patch_size = 64
    node.training.batch_size = 2
    node.advanced.optimize_thresholds = False
    for k, v in training.items():
        setattr(node.training, k, v)
    return node

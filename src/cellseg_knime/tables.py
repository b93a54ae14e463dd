"""Images in KNIME tables: cells <-> numpy arrays, column checks and batch helpers.

KNIME has no microscopy image cell, so an image is a binary cell (``knext.blob()``) of lossless TIFF bytes
(any dtype, any number of channels) or a string cell with a file path. Label images go out as TIFF bytes
(uint16/uint32); previews as PNG image cells (``knext.logical(PIL.Image.Image)``) that KNIME shows.
Errors about a cell name its row id; errors about a setting raise ``knext.InvalidParametersError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg import io as cio
from cellseg.errors import CancelledError, InputError

#: Rows per output batch written by the nodes.
BATCH_ROWS = 64


def png_type() -> Any:
    """KNIME's PNG image cell type."""
    from PIL import Image

    return knext.logical(Image.Image)


def is_blob(column: Any) -> bool:
    return column.ktype == knext.blob()


def is_string(column: Any) -> bool:
    return column.ktype == knext.string()


def is_image_column(column: Any) -> bool:
    """Binary (TIFF bytes) or string (file path) column."""
    return is_blob(column) or is_string(column)


def is_int_column(column: Any) -> bool:
    return column.ktype in (knext.int32(), knext.int64())


def column_names(schema: Any) -> list[str]:
    return [c.name for c in schema]


def pick_column(schema: Any, name: str | None, what: str, accept: Callable[[Any], bool] = is_image_column,
                preferred: tuple[str, ...] = (), kinds: str = "binary (TIFF bytes) or string (file path)",
                exclude: tuple[str | None, ...] = ()) -> str:
    """The selected column ``name``, checked; if None, the first column named in ``preferred`` or else the first
    accepted column. Raises InvalidParametersError naming the column."""
    columns = {c.name: c for c in schema}
    if name:
        if name not in columns:
            raise knext.InvalidParametersError(f"{what}: column '{name}' is not in the input table")
        if not accept(columns[name]):
            raise knext.InvalidParametersError(
                f"{what}: column '{name}' has type {columns[name].ktype}; expected a {kinds} column"
            )
        return name
    candidates = [c.name for c in schema if accept(c) and c.name not in exclude]
    for p in preferred:
        if p in candidates:
            return p
    if not candidates:
        raise knext.InvalidParametersError(f"{what}: the input table has no {kinds} column")
    return candidates[0]


def unique_name(existing: list[str], base: str) -> str:
    """``base``, or ``base (#1)``, ``base (#2)``... if taken (KNIME's convention)."""
    if base not in existing:
        return base
    i = 1
    while f"{base} (#{i})" in existing:
        i += 1
    return f"{base} (#{i})"


# -- cells --------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def read_cell(value: Any, row_id: str, column: str) -> np.ndarray:
    """Image of a cell: TIFF bytes or a file path. Raises ValueError naming the row and column."""
    if _missing(value):
        raise ValueError(f"Row '{row_id}': the cell of column '{column}' is missing")
    try:
        if isinstance(value, bytes | bytearray | memoryview):
            return cio.decode_tiff(bytes(value), name=f"Row '{row_id}', column '{column}'")
        if isinstance(value, str):
            return cio.read_image(value)
    except InputError as err:
        raise ValueError(f"Row '{row_id}', column '{column}': {err}") from err
    raise ValueError(f"Row '{row_id}': the cell of column '{column}' is a {type(value).__name__}, not an image")


def read_image(value: Any, row_id: str, column: str) -> np.ndarray:
    """A checked image (numeric YX/YXC, finite)."""
    img = read_cell(value, row_id, column)
    try:
        return cio.check_image(img, f"Row '{row_id}', column '{column}'")
    except InputError as err:
        raise ValueError(str(err)) from err


def read_labels(value: Any, row_id: str, column: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An integer YX label image; with ``shape`` its size must match the image's."""
    lbl = read_cell(value, row_id, column)
    if lbl.ndim == 3 and lbl.shape[-1] == 1:
        lbl = lbl[..., 0]
    if lbl.ndim != 2:
        raise ValueError(f"Row '{row_id}', column '{column}': labels have shape {lbl.shape}; expected a YX image")
    if not (np.issubdtype(lbl.dtype, np.integer) or lbl.dtype == bool):
        raise ValueError(f"Row '{row_id}', column '{column}': labels are not integer (dtype {lbl.dtype})")
    if shape is not None and lbl.shape != tuple(shape[:2]):
        raise ValueError(
            f"Row '{row_id}': label image {lbl.shape[0]}x{lbl.shape[1]} (column '{column}') does not match "
            f"the image size {shape[0]}x{shape[1]}"
        )
    return lbl


def labels_cell(labels: np.ndarray) -> bytes:
    """TIFF bytes of a label image as uint16 (uint32 if needed)."""
    lbl = np.asarray(labels)
    dtype = np.uint16 if lbl.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    return cio.encode_tiff(lbl.astype(dtype, copy=False))


def image_cell(image: np.ndarray) -> bytes:
    """Lossless TIFF bytes of an image."""
    return cio.encode_tiff(np.asarray(image))


def preview_cell(image: np.ndarray, labels: np.ndarray | None = None, max_size: int = 256) -> Any:
    """A PIL image (KNIME PNG cell): the image with coloured label outlines, at most ``max_size`` a side."""
    from PIL import Image

    lbl = np.zeros(image.shape[:2], np.uint16) if labels is None else labels
    return Image.fromarray(cio.overlay(image, lbl, max_size=max_size))


def channels_of(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[-1])


# -- tables -------------------------------------------------------------------------------------


def iter_rows(table: Any, columns: list[str]) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(rows so far, batch DataFrame)`` for each batch of ``table`` (only ``columns``; index = RowIDs)."""
    done = 0
    for batch in table.batches():
        df = batch.to_pandas()
        if columns:
            df = df[columns]
        yield done, df
        done += len(df)


def num_rows(table: Any) -> int:
    try:
        return int(table.num_rows)
    except Exception:  # noqa: BLE001 - not every table implementation knows its size
        return 0


def require_rows(table: Any, what: str = "input table") -> int:
    n = num_rows(table)
    if n == 0:
        raise ValueError(f"The {what} is empty")
    return n


def empty_frame(schema: list[tuple[str, str]]) -> pd.DataFrame:
    """An empty DataFrame with the given ``(name, dtype)`` columns."""
    return pd.DataFrame({n: pd.Series(dtype=t) for n, t in schema})


def check_canceled(ctx: Any, done: str = "") -> None:
    """Raise a clean RuntimeError if the user canceled (KNIME then marks the node canceled)."""
    if ctx.is_canceled():
        raise RuntimeError("Execution canceled" + (f" ({done})" if done else ""))


def canceled_error(err: CancelledError) -> RuntimeError:
    return RuntimeError(f"Execution canceled: {err}")


def progress_fn(ctx: Any, start: float = 0.0, end: float = 1.0) -> Callable[[float, str], None]:
    """A backend ``progress(fraction, message)`` mapped to ``[start, end]`` of the node's progress."""

    def progress(fraction: float, message: str) -> None:
        f = min(1.0, max(0.0, float(fraction)))
        ctx.set_progress(start + (end - start) * f, message)

    return progress


def workflow_dir(ctx: Any) -> Path | None:
    """The workflow's folder when ``ctx`` knows it (KNIME's execution context), else None."""
    try:
        return Path(ctx.get_workflow_data_area_dir()).parent
    except (AttributeError, RuntimeError, TypeError):
        return None


def check_path(value: str, what: str, must_exist: bool = True, ctx: Any = None) -> Path:
    """A non-empty path setting (``~`` expanded); InvalidParametersError otherwise.

    A relative path is taken relative to the workflow's folder when ``ctx`` (an execution context) knows
    it, so that example workflows find the data they carry in their folder; in configure, where KNIME does
    not tell the workflow folder, a relative path is not checked.
    """
    if not value or not value.strip():
        raise knext.InvalidParametersError(f"{what}: no path given")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        base = workflow_dir(ctx)
        if base is not None:
            path = base / path
        elif ctx is not None and not hasattr(ctx, "get_workflow_data_area_dir"):
            return path  # configure: the folder is only known at execution
    if must_exist and not path.exists():
        raise knext.InvalidParametersError(f"{what}: '{path}' does not exist")
    return path

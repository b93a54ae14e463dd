"""Images in KNIME tables as KNIME-native cells: PNG image cells, Path cells and string paths.

KNIME's Python tables have no binary type, so an image or label image travels either as a PNG image cell
(``knext.logical(PIL.Image.Image)``, shown by KNIME's table view; lossless for 8- and 16-bit grey, RGB and
RGBA) or as a file reference: KNIME's Path cell (``knime.types.builtin.FSLocationValue``, what *List
Files/Folders* writes) or a string column of paths. Images that PNG cannot hold exactly (float, 16-bit
colour, more than 4 channels, more than 16 bits) stay files. Label images go out as 16-bit PNG cells while
they have at most 65,535 objects and at most :data:`MAX_PNG_PIXELS` pixels, else as TIFF files.

Errors about a cell raise ``ValueError`` naming its row id and column.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg import images as cimages
from cellseg.errors import InputError
from cellseg.masks import binary_mask_problem
from cellseg.render import overlay

#: Largest image (pixels) put into a PNG cell; larger ones stay files (the CLI streams from 4096^2 up, too).
MAX_PNG_PIXELS = 8192 * 8192
#: Most objects a 16-bit PNG label cell can hold.
MAX_PNG_LABEL = int(np.iinfo(np.uint16).max)

KINDS = "PNG image, Path or string (file path)"


# -- column types --------------------------------------------------------------------------------


def png_type() -> Any:
    """KNIME's PNG image cell type (registered by KNIME's Java side at start-up)."""
    from PIL import Image

    return knext.logical(Image.Image)


def path_type() -> Any:
    """KNIME's Path cell type (``FSLocationValue``, registered by KNIME's Java side at start-up)."""
    from knime.types.builtin import FSLocationValue

    return knext.logical(FSLocationValue)


def is_png(column: Any) -> bool:
    return column.ktype == png_type()


def is_path(column: Any) -> bool:
    return column.ktype == path_type()


def is_string(column: Any) -> bool:
    return column.ktype == knext.string()


def is_file_column(column: Any) -> bool:
    """Path cells or string paths."""
    return is_path(column) or is_string(column)


def is_image_column(column: Any) -> bool:
    """A column whose cells can be images: PNG image cells, Path cells or string paths."""
    return is_png(column) or is_file_column(column)


# -- reading -------------------------------------------------------------------------------------


def missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _where(row_id: str, column: str) -> str:
    return f"Row '{row_id}', column '{column}'"


def cell_path(value: Any, row_id: str, column: str, ctx: Any = None) -> Path:
    """The local file a Path or string cell refers to (relative paths: to the workflow folder)."""
    where = _where(row_id, column)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"{where}: the path is empty")
        path = Path(text).expanduser()
        if not path.is_absolute():
            base = workflow_dir(ctx)
            path = base / path if base is not None else path
        return path
    category = getattr(value, "fs_category", None)
    if category is None:
        raise ValueError(f"{where}: the cell is a {type(value).__name__}, not an image or a file path")
    text = str(getattr(value, "path", "") or "")
    specifier = str(getattr(value, "fs_specifier", "") or "")
    if category == "LOCAL":
        return Path(text).expanduser()
    if category == "RELATIVE" and specifier in ("knime.workflow", "knime.workflow.data"):
        base = workflow_dir(ctx)
        if base is None:
            raise ValueError(f"{where}: a path relative to the workflow needs a running workflow")
        if specifier == "knime.workflow.data":
            base = base / "data"
        return base / text.lstrip("/")
    if category == "CUSTOM_URL" and text.startswith("file:"):
        return Path(unquote(urlparse(text).path))
    raise ValueError(f"{where}: '{text}' is not a local file ({category} {specifier}); copy it to a local "
                     "folder first (e.g. with KNIME's Transfer Files node)")


def _from_pil(image: Any, where: str, labels: bool) -> np.ndarray:
    """The pixels of a PIL image, exactly; palette images give their indices for labels."""
    mode = image.mode
    if mode == "P":
        if labels:
            return np.asarray(image)
        if "transparency" in image.info:
            raise ValueError(f"{where}: a palette image with transparency cannot be used as an image; save it as "
                             "grey or RGB")
        image = image.convert("RGB")
        mode = "RGB"
    if mode in _PIL_MODES:
        arr = np.asarray(image)
        if mode == "1":
            arr = arr.astype(np.uint8)
        elif mode == "I;16B":
            arr = arr.astype(np.uint16)
        elif mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= MAX_PNG_LABEL:
            arr = arr.astype(np.uint16)  # 16-bit grey PNGs open as 'I' in older Pillow versions
        return arr
    raise ValueError(f"{where}: PNG image mode '{mode}' is not supported; use grey, RGB or RGBA images")


_PIL_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I", "F")


def check_cell(value: Any, row_id: str, column: str, ctx: Any = None) -> None:
    """Cheap checks of a cell before any work: not missing, a supported PNG mode, an existing readable file."""
    where = _where(row_id, column)
    if missing(value):
        raise ValueError(f"{where}: the cell is missing")
    if _is_pil(value):
        if value.mode not in _PIL_MODES:
            raise ValueError(f"{where}: PNG image mode '{value.mode}' is not supported; use grey, RGB or RGBA images")
        return
    path = cell_path(value, row_id, column, ctx)
    if not path.is_file():
        raise ValueError(f"{where}: file '{path}' not found")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{where}: file '{path}' is not readable")


def _is_pil(value: Any) -> bool:
    return hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "getbands")


def read_cell(value: Any, row_id: str, column: str, ctx: Any = None, labels: bool = False) -> np.ndarray:
    """The image of a cell (PNG image, Path or string path). Raises ValueError naming the row and column."""
    where = _where(row_id, column)
    check_cell(value, row_id, column, ctx)
    if _is_pil(value):
        try:
            return _from_pil(value, where, labels)
        except OSError as err:  # a truncated PNG is decoded lazily
            raise ValueError(f"{where}: the PNG image cannot be decoded: {err}") from err
    path = cell_path(value, row_id, column, ctx)
    try:
        return cimages.read_image(path)
    except InputError as err:
        raise ValueError(f"{where}: {err}") from err


def read_image(value: Any, row_id: str, column: str, ctx: Any = None) -> np.ndarray:
    """A checked image (numeric YX/YXC, finite)."""
    img = read_cell(value, row_id, column, ctx)
    return cimages.check_image(img, _where(row_id, column))  # an InputError (a ValueError) names row and column


def read_labels(value: Any, row_id: str, column: str, shape: tuple[int, ...] | None = None,
                ctx: Any = None, binary_ok: bool = False) -> np.ndarray:
    """An integer YX instance label image; with ``shape`` its size must match the image's.

    A binary image (values 0 and one other) with several separate objects is a foreground mask, not
    instance labels, and is refused unless ``binary_ok`` (the nodes' *Label connected components*).
    """
    where = _where(row_id, column)
    lbl = read_cell(value, row_id, column, ctx, labels=True)
    if lbl.ndim == 3 and lbl.shape[-1] == 1:
        lbl = lbl[..., 0]
    if lbl.ndim != 2:
        raise ValueError(f"{where}: labels have shape {lbl.shape}; expected a single-channel (YX) instance label "
                         "image, not a colour image")
    if not (np.issubdtype(lbl.dtype, np.integer) or lbl.dtype == bool):
        raise ValueError(f"{where}: labels are not integer (dtype {lbl.dtype})")
    if lbl.dtype != bool and lbl.size and lbl.min() < 0:
        raise ValueError(f"{where}: labels are negative ({lbl.min()}); expected 0 = background, 1..n objects")
    problem = None if binary_ok else binary_mask_problem(lbl)
    if problem:
        raise ValueError(f"{where}: not instance labels: a mask that looks {problem}; give one integer per "
                         "object, or turn on 'Label connected components' where the node offers it")
    if shape is not None and lbl.shape != tuple(shape[:2]):
        raise ValueError(f"Row '{row_id}': label image {lbl.shape[0]}x{lbl.shape[1]} (column '{column}') does not "
                         f"match the image size {shape[0]}x{shape[1]}")
    return lbl


# -- writing -------------------------------------------------------------------------------------


def png_cell(image: np.ndarray) -> Any | None:
    """A PIL image holding ``image`` exactly (uint8/uint16 grey, uint8 grey+alpha/RGB/RGBA), else None."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or arr.size == 0 or arr.shape[0] * arr.shape[1] > MAX_PNG_PIXELS:
        return None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    grey = arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16)
    colour = arr.ndim == 3 and arr.dtype == np.uint8 and arr.shape[-1] in (2, 3, 4)
    return Image.fromarray(np.ascontiguousarray(arr)) if grey or colour else None


def why_not_png(image: np.ndarray) -> str:
    """Why :func:`png_cell` cannot hold ``image`` (for error messages)."""
    arr = np.asarray(image)
    if arr.ndim >= 2 and arr.shape[0] * arr.shape[1] > MAX_PNG_PIXELS:
        return f"{arr.shape[0]}x{arr.shape[1]} pixels is more than a PNG cell holds ({MAX_PNG_PIXELS} pixels)"
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    return f"a {arr.dtype} image with {channels} channel(s) cannot be held exactly in a PNG cell"


def labels_png_cell(labels: np.ndarray) -> Any | None:
    """A 16-bit grey PIL image of a label image, or None if it has too many objects or pixels."""
    lbl = np.asarray(labels)
    if lbl.size and (lbl.max() > MAX_PNG_LABEL or lbl.min() < 0):
        return None
    return png_cell(lbl.astype(np.uint16, copy=False))


def labels_tiff_dtype(labels: np.ndarray) -> np.ndarray:
    """The label image as uint16 (uint32 if needed); never merges labels."""
    from cellseg.masks import compact_labels

    return compact_labels(np.asarray(labels))


def path_cell(path: str | os.PathLike) -> Any:
    """A KNIME Path cell for a local file."""
    from knime.types.builtin import FSLocationValue

    return FSLocationValue("LOCAL", None, str(Path(path).resolve()))


def preview_cell(image: np.ndarray, labels: np.ndarray | None = None, max_size: int = 256) -> Any:
    """A PIL image (KNIME PNG cell): the image with coloured label outlines, at most ``max_size`` a side."""
    from PIL import Image

    lbl = np.zeros(image.shape[:2], np.uint16) if labels is None else labels
    return Image.fromarray(overlay(image, lbl, max_size=max_size))


def channels_of(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[-1])


def safe_name(text: str) -> str:
    """A file-name-safe version of a row id or image name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip("._") or "image"


def workflow_dir(ctx: Any) -> Path | None:
    """The workflow's folder when ``ctx`` knows it (KNIME's execution context), else None."""
    try:
        return Path(ctx.get_workflow_data_area_dir()).parent
    except (AttributeError, RuntimeError, TypeError):
        return None

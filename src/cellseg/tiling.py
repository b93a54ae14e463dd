"""Tiled, streamed prediction of large images; tile split and merge.

An image of any size is cut into tiles whose *cores* partition it; each tile's extent is its core
grown by at least ``overlap`` pixels on every side that is not the image edge, and all extents have one
shape, as small as covers the image (:func:`plan_tiles`). :func:`predict_large` runs the network on one
tile at a time, does stardist's candidate selection and non-maximum suppression per tile, keeps the
objects whose centre lies in the tile's core (so each object is found once, by one tile, and is whole:
its polygon is kept, not a clipped label patch), and renders the label image output tile by output
tile into a tiled TIFF. It never holds the full float image, probability maps or label image; the
input is read region by region (row reads for uncompressed TIFFs, tile/strip segments otherwise) and
normalised with percentiles taken from a strided subsample.

:func:`split_image` and :func:`merge_labels` are the same tiling for arbitrary per-tile processing (the
KNIME Image Tiler / Tile Merger): ``merge_labels`` keeps each tile's objects whose centroid lies in its
core, drops those of neighbouring tiles that they overlap, and relabels to unique, contiguous labels.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg import io as cio
from cellseg.errors import CancelledError, InputError, require_callable, require_int, require_pair
from cellseg.prediction import (
    _COLUMN_DTYPES,
    OBJECT_COLUMNS,
    as_image_array,
    candidates,
    channel_mismatch,
    check_model,
    polygon_wkt,
    resolve_thresholds,
)

__all__ = [
    "DEFAULT_OVERLAP",
    "Tile",
    "TilingWarning",
    "cli_predictor",
    "default_overlap",
    "merge_labels",
    "plan_tiles",
    "predict_large",
    "split_image",
]

#: Overlap used by :func:`plan_tiles` when none is given and no model is known.
DEFAULT_OVERLAP = 64
#: Side of the tiles of the written label TIFF.
OUTPUT_TILE = 256
#: Most pixels sampled (per channel) for the normalisation percentiles of a large image.
SAMPLE_PIXELS = 1 << 19
#: Side of the blocks read while sampling.
_SAMPLE_BLOCK = 1024

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class TilingWarning(UserWarning):
    """Tile size or overlap too small for the model or the objects (the message says what to set)."""


@dataclass(frozen=True)
class Tile:
    """One overlapping tile of a large image.

    ``y0:y1, x0:x1`` is the tile's extent (what the network sees, overlap included); ``core_*`` is the
    region the tile owns. The cores of all tiles partition the image.
    """

    index: int
    y0: int
    x0: int
    y1: int
    x1: int
    core_y0: int
    core_x0: int
    core_y1: int
    core_x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """Slices of the extent in image coordinates."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def core_in_tile(self) -> tuple[slice, slice]:
        """Slices of the core in tile coordinates."""
        return (slice(self.core_y0 - self.y0, self.core_y1 - self.y0),
                slice(self.core_x0 - self.x0, self.core_x1 - self.x0))

    def to_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in ("index", "y0", "x0", "y1", "x1", "core_y0", "core_x0",
                                                   "core_y1", "core_x1")}


# -- planning -------------------------------------------------------------------------------------

def _round_up(v: int, d: int) -> int:
    return -(-int(v) // d) * d


def _axis_spans(size: int, tile: int, overlap: int, divisor: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, core_start, core_stop) along one axis.

    The fewest extents of at most ``tile + 2 * overlap`` pixels, made as small as possible and of one
    length: neighbouring extents share at least ``2 * overlap`` pixels and the core boundary lies in the
    middle of what they share, so every core has ``overlap`` pixels of context on each inner side. The
    first and last tiles need no context towards the image edge, so their cores are longer by
    ``overlap``: fewer pixels go through the network than with cores of one length.
    """
    if size <= tile + 2 * overlap:
        return [(0, size, 0, size)]
    n = math.ceil((size - 2 * overlap) / tile)
    padded = _round_up(size, divisor)
    extent = _round_up(math.ceil((padded + 2 * overlap * (n - 1)) / n), divisor)
    if extent >= size:
        return [(0, size, 0, size)]
    # starts spread evenly in steps of the divisor: (padded - extent) / (n - 1) <= extent - 2 * overlap
    units = (padded - extent) // divisor
    starts = [divisor * (k * units // (n - 1)) for k in range(n)]
    bounds = [0] + [(starts[k + 1] + starts[k] + extent) // 2 for k in range(n - 1)] + [size]
    return [(s, min(size, s + extent), bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


def plan_tiles(shape: tuple[int, int], tile_size: int | tuple[int, int] = 1024, overlap: int | None = None,
               divisor: int = 1) -> list[Tile]:
    """Tiles (row-major) whose cores partition an image of ``shape`` (H, W).

    Each tile's extent (what the network sees) is at most ``tile_size + 2 * overlap`` per side and all
    extents have one shape (only a last one may be cut by the image edge); ``overlap`` (default
    :data:`DEFAULT_OVERLAP`) is the context every core has on each side that is not the image edge.
    Per axis, the planner takes the fewest tiles and shrinks their extent to what covers the axis: a
    2048-pixel side with ``tile_size=1024, overlap=96`` gives two extents of 1120 (cores 1024 each),
    where cores of one length with full context would need 1216. A side of at most
    ``tile_size + 2 * overlap`` is one tile. Overlap, extent sizes and starts are multiples of ``divisor``
    (the network's; keeps stardist's grid aligned).
    """
    h, w = _shape2d(shape, "plan_tiles: shape")
    try:
        ts = require_pair(tile_size, "tile_size", lo=1)
    except InputError:
        raise InputError(f"tile_size={tile_size!r} must be a positive integer or a pair of them") from None
    divisor = require_int(divisor, "divisor", 1)
    overlap = DEFAULT_OVERLAP if overlap is None else require_int(overlap, "overlap", 0)
    overlap = _round_up(overlap, divisor)
    ty, tx = (max(divisor, _round_up(int(t), divisor)) for t in ts)
    tiles = []
    for sy in _axis_spans(h, ty, overlap, divisor):
        for sx in _axis_spans(w, tx, overlap, divisor):
            tiles.append(Tile(len(tiles), sy[0], sx[0], sy[1], sx[1], sy[2], sx[2], sy[3], sx[3]))
    return tiles


def split_image(image: np.ndarray, tile_size: int | tuple[int, int] = 1024, overlap: int | None = None,
                divisor: int = 1) -> list[tuple[Tile, np.ndarray]]:
    """Cut a ``YX``/``YXC`` image into overlapping tiles (views, not copies) as :func:`plan_tiles`."""
    image = as_image_array(image, "split_image: image")
    if image.ndim not in (2, 3):
        raise InputError(f"split_image: image has shape {image.shape}; expected YX or YXC")
    return [(t, image[t.slices]) for t in plan_tiles(image.shape[:2], tile_size, overlap, divisor)]


# -- merging label tiles --------------------------------------------------------------------------

def merge_labels(shape: tuple[int, int], tiles: Sequence[Tile], tile_labels: Sequence[np.ndarray]) -> np.ndarray:
    """Merge per-tile label images into one label image of ``shape``.

    Each object belongs to the tile whose core contains its centroid: it is kept whole (its pixels in
    that tile's extent), objects of other tiles whose centroid lies outside their core are dropped, and
    an owned object that would mostly (> 50 % of its pixels) cover an already placed object is taken
    as a duplicate and dropped. Labels come out unique and contiguous (1..N, row-major tile order).
    """
    from scipy import ndimage

    h, w = _shape2d(shape, "merge_labels: shape")
    for what, seq in (("tiles", tiles), ("tile_labels", tile_labels)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, (Sequence, np.ndarray)):
            raise InputError(f"merge_labels: {what} must be a list, not {type(seq).__name__}")
    if len(tiles) != len(tile_labels):
        raise InputError(f"merge_labels: {len(tiles)} tiles but {len(tile_labels)} label images")
    bad = [type(t).__name__ for t in tiles if not isinstance(t, Tile)]
    if bad:
        raise InputError(f"merge_labels: tiles must be Tile objects (from plan_tiles or split_image), got {bad[0]}")
    out = np.zeros((h, w), np.int32)
    next_id = 1
    for tile, lab in zip(tiles, tile_labels):
        lab = np.asarray(lab)
        if lab.ndim == 3 and lab.shape[-1] == 1:
            lab = lab[..., 0]
        if lab.shape != tile.shape:
            raise InputError(f"merge_labels: labels of tile {tile.index} have shape {lab.shape}, "
                             f"the tile is {tile.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"merge_labels: labels of tile {tile.index} are not integer (dtype {lab.dtype})")
        if tile.y1 > h or tile.x1 > w:
            raise InputError(f"merge_labels: tile {tile.index} lies outside the image shape {shape}")
        ids = np.unique(lab)
        ids = ids[ids > 0]
        if len(ids) == 0:
            continue
        lab = lab.astype(np.int64, copy=False)
        cy, cx = (np.asarray(c) for c in zip(*ndimage.center_of_mass(np.ones_like(lab), lab, ids)))
        cy, cx = cy + tile.y0, cx + tile.x0
        own = (cy >= tile.core_y0) & (cy < tile.core_y1) & (cx >= tile.core_x0) & (cx < tile.core_x1)
        ids = ids[own]
        if len(ids) == 0:
            continue
        lut = np.zeros(int(lab.max()) + 1, np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        sub = lut[lab]
        region = out[tile.slices]
        area = np.bincount(sub.ravel(), minlength=len(ids) + 1)
        taken = np.bincount(sub[(sub > 0) & (region > 0)], minlength=len(ids) + 1)
        keep = taken * 2 <= area
        keep[0] = False
        new_ids = np.zeros(len(ids) + 1, np.int64)
        new_ids[keep] = np.arange(next_id, next_id + int(keep.sum()))
        next_id += int(keep.sum())
        sub = new_ids[sub]
        put = (sub > 0) & (region == 0)
        region[put] = sub[put]
    return _relabel_contiguous(out)


def _shape2d(shape: Any, what: str) -> tuple[int, int]:
    """``(H, W)`` from a shape (extra trailing axes, e.g. channels, are ignored); InputError otherwise."""
    import numbers

    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)) or len(shape) < 2:
        raise InputError(f"{what} {shape!r} must be (H, W)")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shape[:2]):
        raise InputError(f"{what} {tuple(shape)} must be integers (H, W)")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise InputError(f"{what} {tuple(shape)} is empty")
    return h, w


def _relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    if len(ids) and ids[-1] == len(ids) - (1 if ids[0] == 0 else 0):
        return labels
    lut = np.zeros(int(ids[-1]) + 1, labels.dtype)
    nz = ids[ids > 0]
    lut[nz] = np.arange(1, len(nz) + 1)
    return lut[labels]


# -- image sources --------------------------------------------------------------------------------

class _Source:
    """Region reader of a ``YX``/``YXC`` image: an array, an uncompressed TIFF's rows or a TIFF's segments."""

    def __init__(self, source: str | os.PathLike | np.ndarray) -> None:
        self.tif: Any = None
        self.array: np.ndarray | None = None
        if isinstance(source, np.ndarray):
            self.name = "image"
            self.array = source.astype(np.uint8) if source.dtype == bool else source
            self._set_layout(source.shape, self.array.dtype)
            return
        if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
            raise InputError(f"source={source!r} must be an image file (path) or a YX/YXC numpy array, not "
                             f"{type(source).__name__}")
        path = Path(source)
        self.name = str(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
        if path.suffix.lower() not in (".tif", ".tiff"):
            from cellseg.io import read_image

            self.array = read_image(path)
            self._set_layout(self.array.shape, self.array.dtype)
            return
        self._open_tiff(path)

    def _set_layout(self, shape: tuple[int, ...], dtype: Any) -> None:
        if len(shape) not in (2, 3) or min(shape[:2]) < 1:
            raise InputError(f"{self.name}: image has shape {tuple(shape)}; expected a 2D YX or YXC image")
        self.full_shape = tuple(int(s) for s in shape)
        self.shape = (int(shape[0]), int(shape[1]))
        self.channels = 1 if len(shape) == 2 else int(shape[2])
        self.ndim = len(shape)
        self.dtype = np.dtype(dtype)
        if not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)
                or self.dtype == bool):
            raise InputError(f"{self.name}: image dtype {self.dtype} is not numeric")

    def _open_tiff(self, path: Path) -> None:
        import tifffile

        try:
            self.tif = tifffile.TiffFile(path)
            page = self.tif.pages.first
            shape = tuple(page.shape)
            size = path.stat().st_size
            ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
        except Exception as exc:  # tifffile raises many kinds on broken files
            self.close()
            raise InputError(f"{path}: cannot read TIFF, the file is truncated or corrupt "
                             f"({type(exc).__name__}: {exc})") from exc
        self.page = page
        if len(ends) == 0 or ends.max() > size or (np.asarray(page.databytecounts) == 0).any():
            self.close()
            raise InputError(f"{path}: TIFF is truncated (image data ends at byte {int(ends.max(initial=0))}, "
                             f"the file has {size} bytes)")
        if len(shape) == 3 and page.planarconfig == 2:  # separate planes (CYX)
            self.close()
            raise InputError(f"{path}: planar multi-channel TIFFs cannot be streamed; save channels last "
                             "(contiguous) or predict without tiling")
        try:
            stack = _stack_problem(path, self.tif)
        except Exception as exc:  # tifffile raises many kinds on broken files
            stack = f"{path}: cannot read TIFF, the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        if stack is not None:
            with contextlib.suppress(Exception):
                self.close()
            raise InputError(stack)
        self._set_layout(shape, page.dtype)
        self.contiguous = None
        if page.is_memmappable:
            # uncompressed, in one block: read rows with pread (a memory map's touched pages count in RSS)
            self.contiguous = (int(page.dataoffsets[0]), np.dtype(page.dtype).newbyteorder(self.tif.byteorder))
            self.fd = os.open(path, os.O_RDONLY)
        else:
            self.seg_shape = ((page.tilelength, page.tilewidth) if page.is_tiled
                              else (page.rowsperstrip, self.shape[1]))
            self.seg_grid = (math.ceil(self.shape[0] / self.seg_shape[0]), math.ceil(self.shape[1] / self.seg_shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region ``[y0:y1, x0:x1]`` as a new array (YX or YXC, the file's dtype)."""
        if self.array is not None:
            return np.array(self.array[y0:y1, x0:x1])
        if self.contiguous is not None:
            return self._read_contiguous(y0, y1, x0, x1)
        out = np.empty((y1 - y0, x1 - x0) + ((self.channels,) if self.ndim == 3 else ()), self.dtype)
        sh, sw = self.seg_shape
        fh = self.tif.filehandle
        for gy in range(y0 // sh, (y1 - 1) // sh + 1):
            for gx in range(x0 // sw, (x1 - 1) // sw + 1):
                index = gy * self.seg_grid[1] + gx
                try:
                    fh.seek(self.page.dataoffsets[index])
                    data = fh.read(self.page.databytecounts[index])
                    seg = self.page.decode(data, index, jpegtables=self.page.jpegtables)[0]
                except Exception as exc:
                    raise InputError(f"{self.name}: cannot decode image data at segment {index}, the file is "
                                     f"truncated or corrupt ({type(exc).__name__}: {exc})") from exc
                seg = seg.reshape(seg.shape[-3:]) if self.ndim == 3 else seg.reshape(seg.shape[-3:-1])
                sy0, sx0 = gy * sh, gx * sw
                ya, yb = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                xa, xb = max(x0, sx0), min(x1, sx0 + seg.shape[1])
                out[ya - y0:yb - y0, xa - x0:xb - x0] = seg[ya - sy0:yb - sy0, xa - sx0:xb - sx0]
        return out

    def _read_contiguous(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        offset, dtype = self.contiguous  # type: ignore[misc]
        px = self.channels * dtype.itemsize
        row_bytes = self.shape[1] * px
        out = np.empty((y1 - y0, (x1 - x0) * self.channels), dtype)
        n = (x1 - x0) * px
        for k, y in enumerate(range(y0, y1)):
            data = os.pread(self.fd, n, offset + y * row_bytes + x0 * px)
            if len(data) != n:
                raise InputError(f"{self.name}: TIFF is truncated (row {y} cannot be read)")
            out[k] = np.frombuffer(data, dtype)
        out = out.astype(dtype.newbyteorder("="), copy=False)
        return out.reshape(y1 - y0, x1 - x0, self.channels) if self.ndim == 3 else out

    def sample(self, max_pixels: int = SAMPLE_PIXELS) -> np.ndarray:
        """A strided subsample (every ``s``-th pixel per axis) with at most about ``max_pixels`` pixels."""
        h, w = self.shape
        s = max(1, math.ceil(math.sqrt(h * w / max_pixels)))
        if self.array is not None:
            return np.array(self.array[::s, ::s])
        if self.contiguous is not None:
            return np.stack([self._read_contiguous(y, y + 1, 0, w)[0, ::s] for y in range(0, h, s)])
        block = max(s, _SAMPLE_BLOCK // s * s)
        rows = []
        for y in range(0, h, block):
            parts = [self.read(y, min(h, y + block), x, min(w, x + block))[::s, ::s] for x in range(0, w, block)]
            rows.append(np.concatenate(parts, axis=1))
        return np.concatenate(rows, axis=0)

    def close(self) -> None:
        if getattr(self, "contiguous", None) is not None:
            os.close(self.fd)
            self.contiguous = None
        if self.tif is not None:
            self.tif.close()
            self.tif = None
        self.array = None


# -- model geometry -------------------------------------------------------------------------------

def _impulse_reach(model: Any) -> int | None:
    """One-sided reach (pixels) of the network's response to a single bright pixel on a black image.

    stardist's estimate (``_compute_receptive_field``): the outputs that differ at all from those of the
    black image; on a trained network this is the reach of the paths the weights use, which can be less
    than the architecture's (dead ReLU paths). ``None`` when nothing responds.
    """
    from cellseg.prediction import network_outputs

    grid = tuple(int(g) for g in model.config.grid)
    size = tuple(_round_up(g * 128, model.config.divisor) for g in grid)
    centre = tuple(s // 2 for s in size)
    black = np.zeros((1, *size, model.config.n_channel_in), np.float32)
    impulse = black.copy()
    impulse[(0, *centre)] = 1
    p1, d1 = network_outputs(model, impulse)
    p0, d0 = network_outputs(model, black)
    changed = (p1[0] != p0[0]) | (d1[0] != d0[0]).any(axis=-1)
    hit = np.nonzero(changed)
    if not hit[0].size:
        return None
    return int(max(max(c - i.min() * g, i.max() * g + g - 1 - c) for c, i, g in zip(centre, hit, grid)))


def receptive_field(model: Any) -> int:
    """Largest one-sided receptive field of the model's network, in pixels.

    stardist's impulse-response estimate (see :func:`_impulse_reach`; for an untrained network,
    ``2 ** (depth + 3)``). Measuring costs two network calls on a new input shape (~0.4 s on a CPU), so
    the value is kept in ``model.geometry`` with the weights' fingerprint, and saved with the model.
    """
    check_model(model)
    geometry = getattr(model, "geometry", None)
    fingerprint = model.fingerprint()
    if isinstance(geometry, dict) and geometry.get("fingerprint") == fingerprint and "receptive_field" in geometry:
        return int(geometry["receptive_field"])
    try:
        rf = _impulse_reach(model)
    except Exception:  # a network that cannot take the probe shape: fall back to the U-Net's estimate
        rf = None
    if rf is None:
        rf = 2 ** (int(getattr(model.config, "unet_n_depth", 3)) + 3)
    if isinstance(geometry, dict):
        geometry.update(receptive_field=rf, fingerprint=fingerprint)
        if hasattr(model, "mark_changed"):
            model.mark_changed()  # its bundle now carries more than the bytes it was loaded from
    return rf


def default_overlap(model: Any) -> int:
    """Overlap (pixels per side) for tiles of ``model``: its receptive field, at least
    :data:`DEFAULT_OVERLAP`'s half (room for typical nuclei), rounded up to the network's divisor."""
    return _round_up(max(receptive_field(model), DEFAULT_OVERLAP // 2), model.config.divisor)


def _check_geometry(model: Any, tile_size: tuple[int, int], overlap: int) -> None:
    rf = receptive_field(model)
    if min(tile_size) < rf:
        warnings.warn(f"tile_size={min(tile_size)} is smaller than the network's receptive field ({rf} px): "
                      f"set tile_size >= {_round_up(rf, model.config.divisor)} (e.g. 1024)",
                      TilingWarning, stacklevel=3)
    if overlap < rf:
        warnings.warn(f"overlap={overlap} is smaller than the network's receptive field ({rf} px): objects near "
                      f"tile borders may differ from untiled prediction; set overlap >= {default_overlap(model)}",
                      TilingWarning, stacklevel=3)


# -- streamed prediction --------------------------------------------------------------------------

class _Objects:
    """Objects found so far: ray distances and centres, probabilities, bounding boxes and pixel sums.

    Kept compact because an image can hold 100 k objects or more: each object is stored as stardist
    predicts it (float32 ray distances from an integer centre, 180 bytes with 32 rays), its polygon is
    made only when it is drawn or written (:meth:`coord`, float32 as stardist's ``dist_to_coord`` gives
    them), arrays grow by half their size instead of being copied on every tile, and WKT strings are
    made only when the table is.
    """

    def __init__(self, n_rays: int) -> None:
        self.n = 0
        self.dist = np.zeros((0, n_rays), np.float32)
        self.centre = np.zeros((0, 2), np.int32)
        self.prob = np.zeros(0, np.float32)
        self.bbox = np.zeros((0, 4), np.float32)  # ymin, ymax, xmin, xmax
        self.sums = np.zeros((0, 3), np.float64)  # pixel count, sum y, sum x

    def __len__(self) -> int:
        return self.n

    def _reserve(self, n: int) -> None:
        if n <= len(self.prob):
            return
        cap = max(n, len(self.prob) * 3 // 2, 1024)
        for name in ("dist", "centre", "prob", "bbox", "sums"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype)
            new[:self.n] = old[:self.n]
            setattr(self, name, new)

    def coord(self, index: np.ndarray | slice) -> np.ndarray:
        """Polygons ``(k, 2, n_rays)`` (y, x; image coordinates) of the objects ``index``."""
        from stardist.geometry import dist_to_coord

        return dist_to_coord(self.dist[index], self.centre[index]).astype(np.float32)

    def add(self, dist: np.ndarray, centre: np.ndarray, prob: np.ndarray) -> None:
        k = len(prob)
        self._reserve(self.n + k)
        new = slice(self.n, self.n + k)
        self.dist[new] = dist
        self.centre[new] = centre
        self.prob[new] = prob
        coord = self.coord(new)
        self.bbox[new] = np.stack([coord[:, 0].min(1), coord[:, 0].max(1), coord[:, 1].min(1),
                                   coord[:, 1].max(1)], axis=1).reshape(-1, 4)
        self.n += k

    def render(self, y0: int, x0: int, shape: tuple[int, int], dtype: Any) -> np.ndarray:
        """Labels (id = index + 1) of the objects in a block, drawn in stardist's order (higher probability
        on top); accumulates each object's pixel count and coordinate sums."""
        from skimage.draw import polygon

        out = np.zeros(shape, dtype)
        if self.n == 0:
            return out
        b = self.bbox[:self.n]
        hit = np.flatnonzero((b[:, 1] >= y0 - 1) & (b[:, 0] <= y0 + shape[0]) & (b[:, 3] >= x0 - 1)
                             & (b[:, 2] <= x0 + shape[1]))
        if len(hit) == 0:
            return out
        order = hit[np.argsort(self.prob[hit], kind="stable")]
        for i, c in zip(order, self.coord(order)):
            rr, cc = polygon(c[0] - y0, c[1] - x0, shape)
            out[rr, cc] = i + 1
        # pixel count and coordinate sums of the objects drawn, indexed compactly by their rank in ``hit``
        ids = out.ravel()
        drawn = ids > 0
        rank = np.searchsorted(hit, ids[drawn] - 1)
        yy, xx = np.indices(shape)
        self.sums[hit, 0] += np.bincount(rank, minlength=len(hit))
        self.sums[hit, 1] += np.bincount(rank, weights=(yy.ravel()[drawn] + y0), minlength=len(hit))
        self.sums[hit, 2] += np.bincount(rank, weights=(xx.ravel()[drawn] + x0), minlength=len(hit))
        return out

    def table(self, chunk: int = 8192) -> pd.DataFrame:
        area = self.sums[:self.n, 0]
        present = np.flatnonzero(area > 0)
        if len(present) == 0:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(OBJECT_COLUMNS, _COLUMN_DTYPES)})
        # WKT strings in chunks of Arrow-backed strings: no Python list of every object's string at once
        wkt = [pd.Series([polygon_wkt(c[0], c[1]) for c in self.coord(present[s:s + chunk])], dtype="str")
               for s in range(0, len(present), chunk)]
        return pd.DataFrame({
            "label": (present + 1).astype(np.int64),
            "centroid_y": self.sums[present, 1] / area[present],
            "centroid_x": self.sums[present, 2] / area[present],
            "area": area[present].astype(np.int64),
            "probability": self.prob[present].astype(np.float64),
            "polygon": pd.concat(wkt, ignore_index=True),
        })


def _normalizer(source: _Source) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel 1 / 99.8 percentiles (as :func:`cellseg.io.normalize`) of a strided subsample."""
    sample = source.sample()
    if sample.dtype == bool:
        sample = sample.astype(np.uint8)
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        raise InputError(f"{source.name}: image has NaN or infinite values")
    mi = np.percentile(sample, 1.0, axis=(0, 1), keepdims=True).astype(np.float32)
    ma = np.percentile(sample, 99.8, axis=(0, 1), keepdims=True).astype(np.float32)
    if sample.ndim == 2:
        mi, ma = mi[..., np.newaxis], ma[..., np.newaxis]
    return mi.reshape(1, 1, -1), ma.reshape(1, 1, -1)


def _tile_objects(model: Any, source: _Source, tile: Tile, net_shape: tuple[int, int], mi: np.ndarray,
                  ma: np.ndarray, prob_thresh: float, nms_thresh: float,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network + candidates + NMS on one tile; ray distances ``(n, n_rays)``, centres (image coordinates,
    ``(n, 2)``) and probabilities of the objects whose centre lies in the tile's core."""
    from stardist.nms import non_maximum_suppression_sparse

    from cellseg.prediction import network_outputs

    raw = source.read(tile.y0, tile.y1, tile.x0, tile.x1)
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise InputError(f"{source.name}: image has NaN or infinite values in rows {tile.y0}-{tile.y1}, "
                         f"columns {tile.x0}-{tile.x1}")
    x = raw.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x[..., np.newaxis]
    x = (x - mi) / (ma - mi + np.float32(1e-20))
    pad = ((0, net_shape[0] - x.shape[0]), (0, net_shape[1] - x.shape[1]), (0, 0))
    if pad[0][1] or pad[1][1]:
        x = np.pad(x, pad, mode="reflect" if min(x.shape[:2]) > 1 else "edge")
    prob, dist = network_outputs(model, x[np.newaxis])
    p, d, pts = candidates(prob[0], dist[0], tile.shape, model.config.grid, prob_thresh)
    n_rays = dist.shape[-1]
    if len(p) == 0:
        return np.zeros((0, n_rays), np.float32), np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    pts, p, d, _ = non_maximum_suppression_sparse(d, p, pts, nms_thresh=nms_thresh)
    gy, gx = pts[:, 0] + tile.y0, pts[:, 1] + tile.x0
    own = (gy >= tile.core_y0) & (gy < tile.core_y1) & (gx >= tile.core_x0) & (gx < tile.core_x1)
    gpts = np.stack([gy[own], gx[own]], axis=1)
    return d[own], gpts, p[own]


def _check_out_path(out_path: Path) -> None:
    parent = out_path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_path}: cannot create output folder {parent} ({exc.strerror or exc})") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{out_path}: output folder {parent} is not writable")
    if out_path.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"{out_path}: label images are written as TIFF; use a .tif or .tiff name")


def predict_large(model: Any, source: str | os.PathLike | np.ndarray, out_path: str | os.PathLike | None = None, *,
                  tile_size: int = 1024, overlap: int | None = None, prob_thresh: float | None = None,
                  nms_thresh: float | None = None, progress: ProgressFn | None = None,
                  should_cancel: CancelFn | None = None, label_dtype: str = "uint32",
                  ) -> tuple[Path | np.ndarray, pd.DataFrame]:
    """Segment a large image tile by tile in bounded memory.

    Parameters
    ----------
    model
        A :class:`~cellseg.models.CellsegModel`.
    source
        A TIFF file (read region by region: row reads when uncompressed, else per tile/strip), another
        image file (read whole), or a ``YX``/``YXC`` array.
    out_path
        Label TIFF to write (tiled, zlib, ``label_dtype``), atomically: a temporary sibling renamed at the
        end; on cancel or error no file is left. ``None`` returns the label array instead (int32; needs the
        whole label image in memory, for arrays and tests).
    tile_size, overlap
        Largest core side of the tiles (each network input is at most ``tile_size + 2 * overlap``, see
        :func:`plan_tiles`) and context per side (default :func:`default_overlap`); a warning
        (:class:`TilingWarning`) says what to set when they are smaller than the receptive field or the
        objects found.
    prob_thresh, nms_thresh
        Thresholds; ``None`` uses the model's.
    progress, should_cancel
        ``progress(fraction, message)`` after each tile; ``should_cancel()`` polled before each tile and
        output block (raises :class:`~cellseg.errors.CancelledError`).

    Returns
    -------
    (out_path or labels, objects)
        ``objects`` has :data:`cellseg.prediction.OBJECT_COLUMNS` in image coordinates; labels are
        1..N in tile order (an object fully hidden under others keeps its number and has no row).
    """
    check_model(model)
    prob, nms = resolve_thresholds(model, prob_thresh, nms_thresh)
    if label_dtype not in ("uint32", "uint16"):
        raise InputError(f"label_dtype={label_dtype!r} must be 'uint32' or 'uint16'")
    tile_size = require_int(tile_size, "tile_size", 1)
    if overlap is not None:
        overlap = require_int(overlap, "overlap", 0)
    require_callable(progress, "progress")
    require_callable(should_cancel, "should_cancel")
    if out_path is not None and (not isinstance(out_path, (str, os.PathLike)) or not str(out_path).strip()):
        raise InputError(f"out_path={out_path!r} must be a .tif path (or None), not {type(out_path).__name__}")
    out = Path(out_path) if out_path is not None else None
    if out is not None:
        _check_out_path(out)
    src = _Source(source)
    try:
        if src.channels != model.config.n_channel_in:
            raise InputError(channel_mismatch(src.name, src.full_shape, model.config.n_channel_in))
        div = model.config.divisor
        ov = default_overlap(model) if overlap is None else overlap
        _check_geometry(model, (tile_size, tile_size), ov)
        tiles = plan_tiles(src.shape, tile_size, ov, div)
        ov = _round_up(ov, div)
        net_shape = tuple(_round_up(max(t.shape[a] for t in tiles), div) for a in (0, 1))
        mi, ma = _normalizer(src)
        objects = _Objects(model.config.n_rays)
        blocks = _stream(model, src, tiles, net_shape, mi, ma, prob, nms, objects, ov, progress, should_cancel)
        if out is None:
            labels = np.zeros(src.shape, np.int32)
            for (y, x), block in blocks:
                labels[y:y + block.shape[0], x:x + block.shape[1]] = block
            result: Path | np.ndarray = labels
        else:
            result = _write_tiled(out, src.shape, blocks, label_dtype)
        return result, objects.table()
    finally:
        src.close()


def _stream(model: Any, src: _Source, tiles: list[Tile], net_shape: tuple[int, int], mi: np.ndarray,
            ma: np.ndarray, prob: float, nms: float, objects: _Objects, overlap: int,
            progress: ProgressFn | None, should_cancel: CancelFn | None):
    """Yield ``((y, x), labels)`` for every :data:`OUTPUT_TILE` block in row-major order, running the network
    on tile rows just as far ahead as the next block row needs."""
    h, w = src.shape
    rows: dict[int, list[Tile]] = {}
    for t in tiles:
        rows.setdefault(t.core_y0, []).append(t)
    tile_rows = [rows[k] for k in sorted(rows)]
    done_rows, done_tiles, reach, warned = 0, 0, 0.0, False
    known_until = 0  # objects centred above this row are all known
    for by in range(0, h, OUTPUT_TILE):
        bh = min(OUTPUT_TILE, h - by)
        while done_rows < len(tile_rows) and known_until < min(h, by + bh + max(overlap, reach) + 1):
            for t in tile_rows[done_rows]:
                if should_cancel is not None and should_cancel():
                    raise CancelledError(f"{src.name}: prediction cancelled after {done_tiles} of {len(tiles)} tiles")
                dist, centre, p = _tile_objects(model, src, t, net_shape, mi, ma, prob, nms)
                _release_free_memory()  # TensorFlow's freed tile buffers, before the object store may grow
                if len(p):
                    objects.add(dist, centre, p)
                    radius = float(dist.max())
                    reach = max(reach, radius)
                    if radius > overlap and not warned:
                        warned = True
                        warnings.warn(f"{src.name}: objects reach {radius:.0f} px from their centre, more than "
                                      f"overlap={overlap}; set overlap >= {math.ceil(radius) + 1} so that they "
                                      "are found whole", TilingWarning, stacklevel=4)
                done_tiles += 1
                if progress is not None:
                    progress(done_tiles / len(tiles), f"tile {done_tiles}/{len(tiles)}")
            known_until = tile_rows[done_rows][0].core_y1
            done_rows += 1
        for bx in range(0, w, OUTPUT_TILE):
            if should_cancel is not None and should_cancel():
                raise CancelledError(f"{src.name}: prediction cancelled while writing labels")
            yield (by, bx), objects.render(by, bx, (bh, min(OUTPUT_TILE, w - bx)), np.int32)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where glibc is not the C library."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _release_free_memory() -> None:
    """Hand memory freed by the last tile back to the operating system (glibc ``malloc_trim``).

    TensorFlow allocates and frees a few hundred MB per tile from several malloc arenas; glibc keeps the
    freed pages, and their fragmentation made the resident memory creep up tile after tile (+20 % peak
    RSS at 8192² vs 2048² before this). A no-op where glibc is not the C library.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _write_tiled(out: Path, shape: tuple[int, int], blocks, label_dtype: str) -> Path:
    """Write label blocks to a tiled TIFF through a temporary sibling, renamed at the end."""
    import tifffile

    dtype = np.dtype(label_dtype)
    limit = np.iinfo(dtype).max

    def tiles():
        for _, block in blocks:
            if block.size and int(block.max()) > limit:
                raise InputError(f"{out}: more than {limit} objects do not fit {label_dtype} labels; use uint32")
            full = np.zeros((OUTPUT_TILE, OUTPUT_TILE), dtype)
            full[:block.shape[0], :block.shape[1]] = block
            yield full

    big = shape[0] * shape[1] * dtype.itemsize > 2**31
    with cio.atomic_path(out, "label image") as tmp:
        tifffile.imwrite(tmp, data=tiles(), shape=shape, dtype=dtype, tile=(OUTPUT_TILE, OUTPUT_TILE),
                         compression="zlib", photometric="minisblack", bigtiff=big, metadata={"axes": "YX"})
    return out


# -- command line -------------------------------------------------------------------------------

class _CliPredictor:
    """The streaming path of ``cellseg predict`` for large images (see :func:`cli_predictor`)."""

    def __init__(self, model: Any, args: Any) -> None:
        self.model = model
        self.args = args

    def wants(self, path: str | os.PathLike) -> bool:
        """Stream this image? ``--tiled always``, or ``auto`` and more pixels than ``--tiled-above``."""
        mode = getattr(self.args, "tiled", "auto")
        if mode == "always":
            return True
        if mode != "auto":
            return False
        h, w = _image_size(Path(path))
        return h * w > int(getattr(self.args, "tiled_above", 4096 * 4096))

    def run(self, path: str | os.PathLike, out_tif: str | os.PathLike) -> pd.DataFrame:
        """Stream ``path`` into the label TIFF ``out_tif`` with a progress bar over tiles; the objects table."""
        from tqdm import tqdm

        quiet = bool(getattr(self.args, "quiet", False))
        bar = tqdm(total=1000, desc=f"tiles of {Path(path).name}", disable=quiet, leave=False, file=sys.stderr)

        def progress(fraction: float, message: str) -> None:
            bar.update(max(0, int(round(fraction * 1000)) - bar.n))
            bar.set_postfix_str(message, refresh=False)

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TilingWarning)
                _, objects = predict_large(self.model, path, out_tif, tile_size=int(getattr(self.args, "tile_size", 1024)),
                                           prob_thresh=getattr(self.args, "prob_thresh", None),
                                           nms_thresh=getattr(self.args, "nms_thresh", None), progress=progress)
        finally:
            bar.close()
        for w in caught:
            if issubclass(w.category, TilingWarning):
                print(f"cellseg: warning: {w.message}", file=sys.stderr)
        return objects


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header (TIFF) or by reading the image (other formats)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.pages.first.shape
                stack = _stack_problem(path, tif, streaming=False)
        except Exception as exc:
            raise InputError(f"{path}: cannot read TIFF header, the file is truncated or corrupt ({exc})") from exc
        if stack is not None:
            raise InputError(stack)
        return int(shape[0]), int(shape[1])
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except Exception as exc:
        raise InputError(f"{path}: cannot read image header ({exc})") from exc


def _stack_problem(path: Path, tif: Any, streaming: bool = True) -> str | None:
    """Why the TIFF ``tif`` cannot be segmented as one 2D image (None if it can), judged from its first
    series' axes as :func:`cellseg.io.read_image` does: Z stacks and time series (axes ``Z``, ``T``) and
    stacks of more than ``MAX_UNLABELLED_PAGES`` pages without axes metadata are refused. Channels
    stored as separate pages (ImageJ/OME ``C``, or a few unlabelled pages, which ``read_image`` reads as
    channels) cannot be streamed: refused only when ``streaming``."""
    series = tif.series[0]
    axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
    size = "x".join(str(n) for n in shape)
    stacks = [(a, n) for a, n in zip(axes, shape) if a not in "YXCS" and n > 1]
    named = {"Z": ("Z stack", "slices", "slice"), "T": ("time series", "time points", "time point")}
    for a, n in stacks:
        if a in named:
            kind, planes, plane = named[a]
            return (f"{path}: a {kind} of {n} {planes} (axes {axes}, shape {size}), not a 2D image; cellseg "
                    f"segments 2D images: save one {plane} or a projection as its own file")
    max_pages = int(getattr(cio, "MAX_UNLABELLED_PAGES", 4))
    samples = any(a in "CS" and n > 1 for a, n in zip(axes, shape))
    if stacks and (len(stacks) > 1 or stacks[0][1] > max_pages or samples):
        total = math.prod(n for _, n in stacks)
        return (f"{path}: a stack of {total} pages (axes {axes}, shape {size}) without metadata that says they "
                "are channels; cellseg segments 2D images (a Z stack or time series needs one plane or a "
                "projection saved as its own file)")
    paged = stacks or [(a, n) for a, n in zip(axes, shape) if a == "C" and n > 1]
    if paged and streaming:
        return (f"{path}: stores {paged[0][1]} channels as separate pages (axes {axes}, shape {size}); tiled "
                "prediction reads channels-last images: save it as YXC or predict it untiled (--tiled never)")
    return None


def cli_predictor(model: Any, args: Any) -> _CliPredictor | None:
    """The large-image predictor used by ``cellseg predict`` (``None`` with ``--tiled never``)."""
    if getattr(args, "tiled", "auto") == "never":
        return None
    return _CliPredictor(model, args)

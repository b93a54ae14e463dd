"""Tiles of a large image: the plan, the split and the merge; the overlap a model needs.

An image of any size is cut into tiles whose *cores* partition it; each tile's extent is its core
grown by at least ``overlap`` pixels on every side that is not the image edge, and all extents have one
shape, as small as covers the image (:func:`plan_tiles`). :func:`cellseg.streaming.predict_large`
segments a large image along such a plan; the overlap it needs is the network's receptive field
(:func:`receptive_field`, :func:`default_overlap`).

:func:`split_image` and :func:`merge_labels` are the same tiling for arbitrary per-tile processing (the
KNIME Image Tiler / Tile Merger): ``merge_labels`` keeps each tile's objects whose centroid lies in its
core, drops those of neighbouring tiles that they overlap, and relabels to unique, contiguous labels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellseg.errors import InputError, require_int, require_pair
from cellseg.prediction import as_image_array, check_model
from cellseg.segment import network_outputs

__all__ = [
    "DEFAULT_OVERLAP",
    "Tile",
    "TilingWarning",
    "check_geometry",
    "default_overlap",
    "merge_labels",
    "plan_tiles",
    "receptive_field",
    "round_up",
    "split_image",
]

#: Overlap used by :func:`plan_tiles` when none is given and no model is known.
DEFAULT_OVERLAP = 64
#: Side of the tiles of the written label TIFF.


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

def round_up(v: int, d: int) -> int:
    """``v`` rounded up to a multiple of ``d``."""
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
    padded = round_up(size, divisor)
    extent = round_up(math.ceil((padded + 2 * overlap * (n - 1)) / n), divisor)
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
    overlap = round_up(overlap, divisor)
    ty, tx = (max(divisor, round_up(int(t), divisor)) for t in ts)
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
    from skimage.segmentation import relabel_sequential

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
    return relabel_sequential(out)[0]


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


# -- model geometry -------------------------------------------------------------------------------

def _impulse_reach(model: Any) -> int | None:
    """One-sided reach (pixels) of the network's response to a single bright pixel on a black image.

    stardist's estimate (``_compute_receptive_field``): the outputs that differ at all from those of the
    black image; on a trained network this is the reach of the paths the weights use, which can be less
    than the architecture's (dead ReLU paths). ``None`` when nothing responds.
    """
    grid = tuple(int(g) for g in model.config.grid)
    size = tuple(round_up(g * 128, model.config.divisor) for g in grid)
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
    return rf


def default_overlap(model: Any) -> int:
    """Overlap (pixels per side) for tiles of ``model``: its receptive field, at least
    :data:`DEFAULT_OVERLAP`'s half (room for typical nuclei), rounded up to the network's divisor."""
    return round_up(max(receptive_field(model), DEFAULT_OVERLAP // 2), model.config.divisor)


def check_geometry(model: Any, tile_size: tuple[int, int], overlap: int) -> None:
    rf = receptive_field(model)
    if min(tile_size) < rf:
        warnings.warn(f"tile_size={min(tile_size)} is smaller than the network's receptive field ({rf} px): "
                      f"set tile_size >= {round_up(rf, model.config.divisor)} (e.g. 1024)",
                      TilingWarning, stacklevel=3)
    if overlap < rf:
        warnings.warn(f"overlap={overlap} is smaller than the network's receptive field ({rf} px): objects near "
                      f"tile borders may differ from untiled prediction; set overlap >= {default_overlap(model)}",
                      TilingWarning, stacklevel=3)

"""Streamed prediction of large images: tile by tile in flat memory, labels written as a tiled TIFF.

:func:`predict_large` plans tiles (:func:`cellseg.tiling.plan_tiles`), runs the segmentation step of
:mod:`cellseg.segment` on one tile at a time (network, candidates, non-maximum suppression), keeps the
objects whose centre lies in the tile's core (so each object is found once, by one tile, and is whole:
its polygon is kept, not a clipped label patch), and renders the label image output block by output
block into a tiled TIFF. It never holds the full float image, probability maps or label image; the
input is read region by region (:class:`cellseg.tile_source.TileSource`) and normalised with
percentiles taken from a strided subsample.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg import files as cfiles
from cellseg.adapt import (
    CONVERTIBLE,
    InputConfig,
    adapt_polarity,
    check_scale,
    hematoxylin,
    is_stained,
    match_channels,
    needs_inversion,
    resize,
    scaled_shape,
    white_level,
)
from cellseg.errors import CancelledError, InputError, require_callable, require_int
from cellseg.prediction import channel_mismatch, check_model, resolve_thresholds
from cellseg.segment import candidates, network_outputs, object_frame, pad_to, suppress
from cellseg.tile_source import TileSource
from cellseg.tiling import Tile, TilingWarning, check_geometry, default_overlap, plan_tiles, round_up

__all__ = ["OUTPUT_TILE", "predict_large"]

#: Side of the tiles of the written label TIFF.
OUTPUT_TILE = 256

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class _ObjectStore:
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
        self.centre = np.zeros((0, 2), np.float64)  # integer centres, fractional when the image was scaled
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
        """The objects table of the objects drawn so far (polygons made chunk by chunk)."""
        area = self.sums[:self.n, 0]
        present = np.flatnonzero(area > 0)
        polygons = (self.coord(present[s:s + chunk]) for s in range(0, len(present), chunk))
        return object_frame(present + 1, self.sums[present, 1] / area[present], self.sums[present, 2] / area[present],
                            area[present], self.prob[present], polygons)


def _sample(source: TileSource) -> np.ndarray:
    """A strided subsample of the image (checked for NaN and infinite values)."""
    sample = source.sample()
    if sample.dtype == bool:
        sample = sample.astype(np.uint8)
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        raise InputError(f"{source.name}: image has NaN or infinite values")
    return sample


def _normalizer(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel 1 / 99.8 percentiles (as :func:`cellseg.images.normalize`) of a subsample, and a
    normalised, further subsampled copy (``YXC``, for the background)."""
    mi = np.percentile(sample, 1.0, axis=(0, 1), keepdims=True).astype(np.float32)
    ma = np.percentile(sample, 99.8, axis=(0, 1), keepdims=True).astype(np.float32)
    if sample.ndim == 2:
        mi, ma = mi[..., np.newaxis], ma[..., np.newaxis]
    mi, ma = mi.reshape(1, 1, -1), ma.reshape(1, 1, -1)
    step = max(1, int(math.sqrt(sample.shape[0] * sample.shape[1] / 65536)))  # enough to tell the background
    x = sample[::step, ::step].astype(np.float32)
    x = x[..., np.newaxis] if x.ndim == 2 else x
    return mi, ma, (x - mi) / (ma - mi + np.float32(1e-20))


def _tile_objects(model: Any, source: TileSource, tile: Tile, net_shape: tuple[int, int], prob_thresh: float,
                  nms_thresh: float, inputs: _Inputs,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network + candidates + NMS on one tile; ray distances ``(n, n_rays)``, centres (image coordinates,
    ``(n, 2)``) and probabilities of the objects whose centre lies in the tile's core."""
    raw = source.read(tile.y0, tile.y1, tile.x0, tile.x1)
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise InputError(f"{source.name}: image has NaN or infinite values in rows {tile.y0}-{tile.y1}, "
                         f"columns {tile.x0}-{tile.x1}")
    x = inputs.adapt(raw)
    shape = x.shape[:2]
    x = pad_to(x, net_shape, "reflect" if min(x.shape[:2]) > 1 else "edge")
    prob, dist = network_outputs(model, x[np.newaxis])
    cands = candidates(prob[0], dist[0], shape, model.config.grid, prob_thresh, scale=inputs.scale)
    if len(cands[0]) == 0:
        return np.zeros((0, dist.shape[-1]), np.float32), np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    p, d, pts = suppress(cands, nms_thresh)
    gy, gx = pts[:, 0] + tile.y0, pts[:, 1] + tile.x0
    own = (gy >= tile.core_y0) & (gy < tile.core_y1) & (gx >= tile.core_x0) & (gx < tile.core_x1)
    return d[own], np.stack([gy[own], gx[own]], axis=1), p[own]


class _Inputs:
    """The adaptation of every tile of one image: hematoxylin of stained colour images (for a grey model),
    channels, polarity (decided once from the sample), scale."""

    def __init__(self, model: Any, sample: np.ndarray, scale: float, invert: str) -> None:
        self.n = model.config.n_channel_in
        self.top = white_level(sample) if self.n == 1 and is_stained(sample) else None
        mi, ma, x = _normalizer(self.raw(sample))
        self.mi, self.ma = mi, ma
        self.spec = model.input_spec
        self.invert = "yes" if needs_inversion(match_channels(x, self.n), self.spec, invert) else "no"
        self.scale = scale

    def raw(self, x: np.ndarray) -> np.ndarray:
        return hematoxylin(x, self.top) if self.top is not None else x

    def adapt(self, raw: np.ndarray) -> np.ndarray:
        x = self.raw(raw).astype(np.float32, copy=False)
        x = x[..., np.newaxis] if x.ndim == 2 else x
        x = (x - self.mi) / (self.ma - self.mi + np.float32(1e-20))
        x = adapt_polarity(match_channels(x, self.n), self.spec, self.invert)
        return resize(x, scaled_shape(x.shape, self.scale)) if self.scale != 1 else x


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
                  scale: float | None = None, invert: str = "auto") -> tuple[Path | np.ndarray, pd.DataFrame]:
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
        :func:`~cellseg.tiling.plan_tiles`) and context per side (default :func:`~cellseg.tiling.default_overlap`); a warning
        (:class:`~cellseg.tiling.TilingWarning`) says what to set when they are smaller than the receptive field or the
        objects found.
    prob_thresh, nms_thresh
        Thresholds; ``None`` uses the model's.
    progress, should_cancel
        ``progress(fraction, message)`` after each tile; ``should_cancel()`` polled before each tile and
        output block (raises :class:`~cellseg.errors.CancelledError`).
    scale, invert
        As in :func:`cellseg.prediction.predict`: each tile is resized by ``scale`` (default: the model's)
        before the network; ``tile_size`` and ``overlap`` are in the image's own pixels.

    Returns
    -------
    (out_path or labels, objects)
        ``objects`` has :data:`cellseg.segment.OBJECT_COLUMNS` in image coordinates; labels are
        1..N in tile order (an object fully hidden under others keeps its number and has no row).
    """
    check_model(model)
    prob, nms = resolve_thresholds(model, prob_thresh, nms_thresh)
    settings = InputConfig(scale=scale, invert=invert)
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
    src = TileSource(source)
    try:
        n = model.config.n_channel_in
        if src.channels != n and (src.channels, n) not in CONVERTIBLE:
            raise InputError(channel_mismatch(src.name, src.full_shape, n))
        div = model.config.divisor
        s = model.input_spec.scale if settings.scale is None else settings.scale
        ov = math.ceil(default_overlap(model) / s) if overlap is None else overlap
        check_geometry(model, (round(tile_size * s), round(tile_size * s)), round(ov * s))
        tiles = plan_tiles(src.shape, tile_size, ov, div if s == 1 else 1)
        check_scale(s, max((t.shape for t in tiles), key=lambda sh: sh[0] * sh[1]), f"{src.name} (a tile)")
        ov = round_up(ov, div)
        net_shape = tuple(round_up(max(scaled_shape(t.shape, s)[a] for t in tiles), div) for a in (0, 1))
        inputs = _Inputs(model, _sample(src), s, settings.invert)
        objects = _ObjectStore(model.config.n_rays)
        blocks = _stream(model, src, tiles, net_shape, prob, nms, objects, ov, progress, should_cancel, inputs)
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


def _stream(model: Any, src: TileSource, tiles: list[Tile], net_shape: tuple[int, int], prob: float, nms: float,
            objects: _ObjectStore, overlap: int, progress: ProgressFn | None, should_cancel: CancelFn | None,
            inputs: _Inputs,
            ) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
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
                dist, centre, p = _tile_objects(model, src, t, net_shape, prob, nms, inputs)
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


def _write_tiled(out: Path, shape: tuple[int, int], blocks: Iterator[tuple[tuple[int, int], np.ndarray]],
                 label_dtype: str) -> Path:
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
    with cfiles.atomic_path(out, "label image") as tmp:
        tifffile.imwrite(tmp, data=tiles(), shape=shape, dtype=dtype, tile=(OUTPUT_TILE, OUTPUT_TILE),
                         compression="zlib", photometric="minisblack", bigtiff=big, metadata={"axes": "YX"})
    return out

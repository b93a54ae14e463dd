"""One segmentation step for every prediction path: prepare, network, instances, objects table.

* prepare: percentile-normalise to float32 ``YXC`` and pad (reflect, at the end) to the network's divisor;
* network: the Keras model called directly (``predict_on_batch``, without ``keras.Model.predict``'s
  per-call overhead), or stardist's ``predict_sparse`` when stardist tiles the network (``n_tiles``);
* instances: stardist's sparse candidates, non-maximum suppression and polygon rendering, as
  ``predict_instances`` does them, so labels are stardist's;
* objects table: one row per object (:data:`OBJECT_COLUMNS`), built by :func:`object_frame`.

:func:`cellseg.prediction.predict` / ``predict_batch`` / ``predict_many`` run :func:`segment_images`;
:func:`cellseg.streaming.predict_large` runs the same steps tile by tile (:func:`network_outputs`,
:func:`candidates`, :func:`suppress`, :func:`object_frame`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellseg import images as cimages
from cellseg.errors import InputError, require_int
from cellseg.stardist_compat import candidate_mask

OBJECT_COLUMNS = ["label", "centroid_y", "centroid_x", "area", "probability", "polygon"]
OBJECT_DTYPES = ["int64", "float64", "float64", "int64", "float64", "object"]

#: Candidates of one image: probabilities ``(n,)``, ray distances ``(n, n_rays)``, points ``(n, 2)`` (y, x).
Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]


# -- prepare --------------------------------------------------------------------------------------

def prepare(image: np.ndarray, normalize: bool = True) -> np.ndarray:
    """A checked ``YX``/``YXC`` image as float32 ``YXC``, percentile-normalised (1, 99.8) unless not ``normalize``."""
    x = cimages.normalize(image) if normalize else image.astype(np.float32, copy=False)
    return x[..., np.newaxis] if x.ndim == 2 else x


def pad_to(x: np.ndarray, shape: tuple[int, int], mode: str = "reflect") -> np.ndarray:
    """``x`` (``YXC``) padded at the end of Y and X to ``shape`` (not cut)."""
    pad = ((0, shape[0] - x.shape[0]), (0, shape[1] - x.shape[1]), (0, 0))
    return np.pad(x, pad, mode=mode) if pad[0][1] or pad[1][1] else x


def pad_for_network(x: np.ndarray, divisor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a ``YXC`` float image at the end of Y and X (reflect) to multiples of ``divisor``, as stardist."""
    divisor = require_int(divisor, "divisor", 1)
    pad = tuple(int((divisor - s % divisor) % divisor) for s in x.shape[:2])
    return pad_to(x, (x.shape[0] + pad[0], x.shape[1] + pad[1])), (pad[0], pad[1])


# -- network --------------------------------------------------------------------------------------

def network_outputs(model: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability ``(N, h, w)`` and distance ``(N, h, w, n_rays)`` maps (grid resolution) of a ``NYXC`` batch."""
    out = model.keras_model.predict_on_batch(np.ascontiguousarray(batch, dtype=np.float32))
    prob, dist = (np.asarray(o) for o in out[:2])
    return prob[..., 0], dist


def candidates(prob: np.ndarray, dist: np.ndarray, shape: tuple[int, int], grid: tuple[int, int],
               prob_thresh: float, b: int = 2, scale: float = 1.0) -> Candidates:
    """stardist's sparse candidates above ``prob_thresh`` of one image's network maps.

    ``prob`` and ``dist`` are the maps of the padded input (stardist excludes the ``b`` border cells of
    the padded map, then drops points outside the network input's ``shape``). When the image was resized by
    ``scale`` before the network, points and distances are mapped back to the image's own pixels.
    """
    inds = candidate_mask(prob, prob_thresh, b=b)
    probs = prob[inds].copy()
    dists = np.maximum(1e-3, dist[inds])
    points = np.stack(np.where(inds), axis=1) * np.array(grid).reshape(1, 2)
    keep = np.all(points < np.array(shape).reshape(1, 2), axis=1)
    return to_image_pixels((probs[keep], dists[keep], points[keep]), scale)


def to_image_pixels(cands: Candidates, scale: float) -> Candidates:
    """Candidates of a network input resized by ``scale``, in the image's own pixels (points and distances)."""
    if scale == 1:
        return cands
    prob, dist, points = cands
    return prob, dist / np.float32(scale), points / np.float32(scale)


def tiled_candidates(model: Any, x: np.ndarray, prob_thresh: float, n_tiles: tuple[int, ...]) -> Candidates:
    """Candidates of a prepared ``YXC`` image with stardist's network tiling (``predict_sparse``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        prob, dist, points = model.stardist.predict_sparse(x, prob_thresh=prob_thresh, n_tiles=n_tiles,
                                                           show_tile_progress=False)
    return prob, dist, points


# -- instances ------------------------------------------------------------------------------------

def suppress(cands: Candidates, nms_thresh: float) -> Candidates:
    """stardist's non-maximum suppression of candidates: the kept ones, by decreasing probability."""
    from stardist.nms import non_maximum_suppression_sparse

    prob, dist, points = cands
    points, prob, dist, _ = non_maximum_suppression_sparse(
        dist.reshape(-1, dist.shape[-1]), prob, points.reshape(-1, 2), nms_thresh=nms_thresh, verbose=False)
    return prob, dist, points


def instances(shape: tuple[int, int], cands: Candidates, nms_thresh: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label image (int32) and stardist's details (``coord``, ``points``, ``prob``; label k = entry k-1)."""
    from stardist.geometry import dist_to_coord, polygons_to_label

    prob, dist, points = suppress(cands, nms_thresh)
    labels = polygons_to_label(dist, points, prob=prob, shape=shape)
    details = {"coord": dist_to_coord(dist, points), "points": points, "prob": prob}
    return labels.astype(np.int32, copy=False), details


def segment_images(model: Any, images: Sequence[np.ndarray], prob_thresh: float, nms_thresh: float, *,
                   network_batch: int = 1, n_tiles: tuple[int, ...] | None = None, scale: float = 1.0,
                   out_shapes: Sequence[tuple[int, int]] | None = None) -> list[tuple[np.ndarray, pd.DataFrame]]:
    """``(labels, objects)`` of prepared ``YXC`` images (see :func:`prepare` and
    :func:`cellseg.adapt.prepare_input`).

    Images of one padded shape go through the network ``network_batch`` at a time; with ``n_tiles``
    each image goes through stardist's tiled network instead. Images resized by ``scale`` give labels of
    ``out_shapes`` (their original shapes).
    """
    shapes = [x.shape[:2] for x in images]
    cands: dict[int, Candidates] = {}
    if n_tiles is not None:
        cands = {i: to_image_pixels(tiled_candidates(model, x, prob_thresh, n_tiles), scale)
                 for i, x in enumerate(images)}
    else:
        padded = [pad_for_network(x, model.config.divisor)[0] for x in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, xp in enumerate(padded):
            groups.setdefault(xp.shape, []).append(i)
        for members in groups.values():
            for s in range(0, len(members), network_batch):
                part = members[s:s + network_batch]
                probs, dists = network_outputs(model, np.stack([padded[i] for i in part]))
                for k, i in enumerate(part):
                    cands[i] = candidates(probs[k], dists[k], shapes[i], model.config.grid, prob_thresh,
                                          scale=scale)
    results = []
    for i, shape in enumerate(out_shapes if out_shapes is not None else shapes):
        labels, details = instances(shape, cands[i], nms_thresh)
        results.append((labels, objects_table(labels, details)))
    return results


# -- objects table --------------------------------------------------------------------------------

def objects_table(labels: np.ndarray, details: dict[str, np.ndarray], offset: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """One row per object present in ``labels``; ``details`` are stardist's (label k = entry k-1).

    ``offset`` (y, x) is added to centroids and polygons (objects of a tile within a larger image).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"objects_table: labels must be a 2D integer label image, got shape {labels.shape} "
                         f"and dtype {labels.dtype}")
    if labels.size == 0 or labels.max() == 0:
        return empty_objects()
    props = regionprops_table(labels, properties=("label", "centroid", "area"))
    lab = props["label"].astype(np.int64)
    coord = np.asarray(details["coord"], dtype=np.float64)[lab - 1]  # (n, 2, n_rays): y, x
    coord += np.array(offset, np.float64).reshape(1, 2, 1)
    return object_frame(lab, props["centroid-0"] + offset[0], props["centroid-1"] + offset[1], props["area"],
                        np.asarray(details["prob"], dtype=np.float64)[lab - 1], [coord])


def object_frame(label: np.ndarray, centroid_y: np.ndarray, centroid_x: np.ndarray, area: np.ndarray,
                 probability: np.ndarray, polygons: Iterable[np.ndarray]) -> pd.DataFrame:
    """The objects table (:data:`OBJECT_COLUMNS`, dtypes :data:`OBJECT_DTYPES`) of ``n`` objects.

    ``polygons`` are the objects' polygons ``(k, 2, n_rays)`` (y, x) in chunks (all at once, or made
    chunk by chunk for very many objects); they become WKT strings chunk by chunk.
    """
    if len(label) == 0:
        return empty_objects()
    wkt = [pd.Series([polygon_wkt(c[0], c[1]) for c in chunk], dtype="str") for chunk in polygons]
    return pd.DataFrame({
        "label": np.asarray(label, np.int64),
        "centroid_y": np.asarray(centroid_y, np.float64),
        "centroid_x": np.asarray(centroid_x, np.float64),
        "area": np.asarray(area, np.int64),
        "probability": np.asarray(probability, np.float64),
        "polygon": pd.concat(wkt, ignore_index=True),
    })


def empty_objects() -> pd.DataFrame:
    """The objects table without rows."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(OBJECT_COLUMNS, OBJECT_DTYPES)})


def polygon_wkt(ys: np.ndarray, xs: np.ndarray) -> str:
    """A closed polygon as WKT (``POLYGON ((x y, ...))``), readable by GIS tools and KNIME Geospatial."""
    pts = ", ".join(f"{x:.2f} {y:.2f}" for y, x in zip(ys, xs))
    return f"POLYGON (({pts}, {xs[0]:.2f} {ys[0]:.2f}))"

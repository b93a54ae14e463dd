"""Prediction: label images and one record per object.

:func:`predict` segments one image with stardist's own post-processing (star-convex polygons and
non-maximum suppression) and describes each object (label, centroid, area, probability, polygon).
:func:`predict_many` segments a sequence of images with progress and cancellation, in batches through
:func:`predict_batch`, which runs the network directly (``keras_model.predict_on_batch``, without the
per-call overhead of ``keras.Model.predict``) and then stardist's own sparse post-processing, so its
labels are identical to :func:`predict`'s.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellseg import io as cio
from cellseg.errors import (
    CancelledError,
    InputError,
    require_bool,
    require_callable,
    require_int,
    require_number,
)
from cellseg.models import CellsegModel

OBJECT_COLUMNS = ["label", "centroid_y", "centroid_x", "area", "probability", "polygon"]


def check_model(model: Any, what: str = "model") -> CellsegModel:
    """:class:`InputError` unless ``model`` is a :class:`~cellseg.models.CellsegModel`."""
    if not isinstance(model, CellsegModel):
        raise InputError(f"{what} must be a CellsegModel (see cellseg.models.load_model), not {type(model).__name__}")
    return model


def as_image_array(image: Any, name: str = "image") -> np.ndarray:
    """``image`` as a numpy array; :class:`InputError` naming it for what numpy cannot make one of."""
    if isinstance(image, np.ndarray):
        return image
    if image is None or isinstance(image, (str, bytes, os.PathLike)):
        raise InputError(f"{name}: expected an image array (YX or YXC), got {type(image).__name__}"
                         + (" (read the file with cellseg.io.read_image first)" if image is not None else ""))
    try:
        return np.asarray(image)
    except (ValueError, TypeError) as err:
        raise InputError(f"{name}: cannot be made into an image array ({str(err).splitlines()[0][:120]})") from err


def channel_mismatch(name: str, shape: tuple[int, ...], expected: int) -> str:
    """The message for an image whose channel count (last axis) is not the model's; a 3D array whose
    first axis is short and last is long is probably a Z stack or time series, and is called one."""
    channels = 1 if len(shape) == 2 else int(shape[-1])
    if len(shape) == 3 and shape[0] < shape[-1] and shape[-1] > 4:
        guess = (f"channels first, or a Z stack of {shape[0]} slices?" if shape[0] <= 4 else
                 f"a Z stack (or time series) of {shape[0]} slices of {shape[1]}x{shape[2]}?")
        return (f"{name}: image has shape {tuple(shape)} ({guess}); cellseg segments 2D images: YX, or YXC with "
                f"the model's {expected} channel(s) last; pass one slice or a projection")
    return f"{name}: image has {channels} channel(s) but the model expects {expected}"


def check_input(model: CellsegModel, image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate ``image`` for ``model`` (dimensions, finite values, channel count); return it."""
    check_model(model)
    arr = as_image_array(image, name)
    if arr.ndim == 3 and arr.shape[-1] != model.config.n_channel_in and arr.shape[0] < arr.shape[-1]:
        raise InputError(channel_mismatch(name, arr.shape, model.config.n_channel_in))
    image = cio.check_image(arr, name)
    channels = 1 if image.ndim == 2 else image.shape[-1]
    if channels != model.config.n_channel_in:
        raise InputError(channel_mismatch(name, image.shape, model.config.n_channel_in))
    return image


def resolve_thresholds(model: CellsegModel, prob_thresh: float | None, nms_thresh: float | None) -> tuple[float, float]:
    """Thresholds to use: the given ones (numbers in [0, 1]), else the model's."""
    check_model(model)
    prob = model.thresholds["prob"] if prob_thresh is None else require_number(prob_thresh, "prob_thresh", 0, 1)
    nms = model.thresholds["nms"] if nms_thresh is None else require_number(nms_thresh, "nms_thresh", 0, 1)
    return prob, nms


def predict(model: CellsegModel, image: np.ndarray, *, prob_thresh: float | None = None,
            nms_thresh: float | None = None, n_tiles: tuple[int, int] | None = None, normalize: bool = True,
            name: str = "image") -> tuple[np.ndarray, pd.DataFrame]:
    """Segment one image.

    Parameters
    ----------
    model
        A trained model.
    image
        YX or YXC image of any numeric dtype and any size.
    prob_thresh, nms_thresh
        Object probability and polygon-overlap thresholds; ``None`` uses the model's.
    n_tiles
        Split the network input into this many tiles per axis to bound memory (stardist's ``n_tiles``):
        a pair such as ``(2, 2)``, or one integer ``n`` meaning ``(n, n)``.
    normalize
        Apply percentile normalisation (1, 99.8) first, as in training.

    Returns
    -------
    labels : ndarray of int32
        Instance label image (0 = background).
    objects : DataFrame
        One row per object with :data:`OBJECT_COLUMNS`; ``polygon`` is WKT in (x, y) pixel coordinates.
    """
    name = _name(name)
    image = check_input(model, image, name)
    prob, nms = resolve_thresholds(model, prob_thresh, nms_thresh)
    normalize = require_bool(normalize, "normalize")
    tiles = _n_tiles(n_tiles, image.ndim) if n_tiles is not None else None
    x = cio.normalize(image) if normalize else image.astype(np.float32, copy=False)
    kwargs: dict[str, Any] = {"prob_thresh": prob, "nms_thresh": nms, "show_tile_progress": False}
    if tiles is not None:
        kwargs["n_tiles"] = tiles
    with contextlib.redirect_stdout(io.StringIO()):
        labels, details = model.stardist.predict_instances(x, **kwargs)
    labels = labels.astype(np.int32, copy=False)
    return labels, objects_table(labels, details)


def predict_many(model: CellsegModel, images: Iterable[np.ndarray], *, names: Sequence[str] | None = None,
                 prob_thresh: float | None = None, nms_thresh: float | None = None,
                 n_tiles: tuple[int, int] | None = None, total: int | None = None,
                 progress: Callable[[float, str], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 batch_size: int = 8) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """Segment images in batches of ``batch_size``, yielding ``(labels, objects)`` for each image in order.

    Labels are identical to :func:`predict` one image at a time. ``should_cancel`` is polled before each
    batch; cancelling raises :class:`CancelledError`. With ``n_tiles`` (stardist's network tiling) each
    image goes through :func:`predict` instead.
    """
    check_model(model)
    images = _image_sequence(images)
    if total is None and hasattr(images, "__len__"):
        total = len(images)  # type: ignore[arg-type]
    if total is not None:
        total = require_int(total, "total", 0)
    names = _names(names, images)
    batch_size = require_int(batch_size, "batch_size", 1)
    require_callable(progress, "progress")
    require_callable(should_cancel, "should_cancel")
    resolve_thresholds(model, prob_thresh, nms_thresh)
    if n_tiles is not None:
        _n_tiles(n_tiles, 2)
    step = 1 if n_tiles is not None else batch_size
    done = 0
    iterator = iter(images)
    while True:
        chunk = list(itertools.islice(iterator, step))
        if not chunk:
            return
        if should_cancel is not None and should_cancel():
            raise CancelledError(f"prediction cancelled after {done} image(s)")
        if names is not None and done + len(chunk) > len(names):
            raise InputError(f"predict_many: {len(names)} names for more images")
        chunk_names = [names[done + k] if names is not None else f"image {done + k}" for k in range(len(chunk))]
        if n_tiles is not None:
            results = [predict(model, chunk[0], prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=n_tiles,
                               name=chunk_names[0])]
        else:
            results = predict_batch(model, chunk, prob_thresh=prob_thresh, nms_thresh=nms_thresh, names=chunk_names)
        for name, result in zip(chunk_names, results):
            done += 1
            if progress is not None:
                progress(done / total if total else 0.0, f"segmented {name}")
            yield result


def predict_batch(model: CellsegModel, images: Sequence[np.ndarray], *, prob_thresh: float | None = None,
                  nms_thresh: float | None = None, names: Sequence[str] | None = None, normalize: bool = True,
                  network_batch: int = 1) -> list[tuple[np.ndarray, pd.DataFrame]]:
    """Segment several images; labels are identical to :func:`predict` on each image.

    Each image is normalised and padded (reflect, at the end, to the network's divisor) as stardist
    does; images with the same padded shape are grouped and go through the network ``network_batch`` at
    a time with ``keras_model.predict_on_batch``; the outputs are taken apart per image and
    post-processed with stardist's sparse candidate selection, NMS and polygon rendering.

    ``network_batch=1`` (default) is bit-identical to :func:`predict`: on the CPU, TensorFlow's
    convolutions give results that differ in the last float bits (about 1e-7) when images are stacked,
    which can reorder near-equal candidates in NMS, and stacking brought no speed-up on the CPU
    (measured in ``docs/benchmarks.md``); the gain over a stardist loop comes from skipping
    ``keras.Model.predict``'s per-call overhead. Larger values stack images into one network call
    (useful on a GPU) at the cost of that bit-exactness.
    """
    check_model(model)
    network_batch = require_int(network_batch, "network_batch", 1)
    normalize = require_bool(normalize, "normalize")
    images = list(_image_sequence(images))
    names = _names(names, images)
    if names is not None and len(names) != len(images):
        raise InputError(f"predict_batch: {len(names)} names for {len(images)} images")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    prob, nms = resolve_thresholds(model, prob_thresh, nms_thresh)
    prepared = []
    for image, name in zip(images, names):
        image = check_input(model, image, name)
        x = cio.normalize(image) if normalize else image.astype(np.float32, copy=False)
        if x.ndim == 2:
            x = x[..., np.newaxis]
        prepared.append(pad_for_network(x, model.config.divisor))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (xp, _) in enumerate(prepared):
        groups.setdefault(xp.shape, []).append(i)
    outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for members in groups.values():
        for s in range(0, len(members), network_batch):
            part = members[s:s + network_batch]
            probs, dists = network_outputs(model, np.stack([prepared[i][0] for i in part]))
            for k, i in enumerate(part):
                outputs[i] = (probs[k], dists[k])
    results = []
    for i, (xp, pad) in enumerate(prepared):
        shape = (xp.shape[0] - pad[0], xp.shape[1] - pad[1])
        labels, details = instances_from_outputs(model, shape, outputs[i][0], outputs[i][1], prob, nms)
        results.append((labels, objects_table(labels, details)))
    return results


def pad_for_network(x: np.ndarray, divisor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a ``YXC`` float image at the end of Y and X (reflect) to multiples of ``divisor``, as stardist."""
    divisor = require_int(divisor, "divisor", 1)
    pad = tuple((divisor - s % divisor) % divisor for s in x.shape[:2])
    if any(pad):
        x = np.pad(x, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="reflect")
    return x, (int(pad[0]), int(pad[1]))


def network_outputs(model: CellsegModel, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability ``(N, h, w)`` and distance ``(N, h, w, n_rays)`` maps (grid resolution) of a ``NYXC`` batch."""
    out = model.keras_model.predict_on_batch(np.ascontiguousarray(batch, dtype=np.float32))
    prob, dist = (np.asarray(o) for o in out[:2])
    return prob[..., 0], dist


def candidates(prob: np.ndarray, dist: np.ndarray, shape: tuple[int, int], grid: tuple[int, int],
               prob_thresh: float, b: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """stardist's sparse candidates: probabilities, distances and (y, x) pixel points above ``prob_thresh``.

    ``prob`` and ``dist`` are the network's maps of the padded input (not cropped: stardist excludes the
    ``b`` border cells of the padded map, then drops points outside the image ``shape``).
    """
    from stardist.nms import _ind_prob_thresh

    inds = _ind_prob_thresh(prob, prob_thresh, b=b)
    probs = prob[inds].copy()
    dists = np.maximum(1e-3, dist[inds])
    points = np.stack(np.where(inds), axis=1) * np.array(grid).reshape(1, 2)
    keep = np.all(points < np.array(shape).reshape(1, 2), axis=1)
    return probs[keep], dists[keep], points[keep]


def instances_from_outputs(model: CellsegModel, shape: tuple[int, int], prob: np.ndarray, dist: np.ndarray,
                           prob_thresh: float, nms_thresh: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and stardist details from the network maps of a padded image, as ``predict_instances`` (sparse)."""
    p, d, pts = candidates(prob, dist, shape, model.config.grid, prob_thresh)
    labels, details = model.stardist._instances_from_prediction(
        shape, p, d.reshape(-1, dist.shape[-1]), points=pts.reshape(-1, 2), prob_thresh=prob_thresh,
        nms_thresh=nms_thresh, verbose=False)
    return labels.astype(np.int32, copy=False), details


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
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(OBJECT_COLUMNS, _COLUMN_DTYPES)})
    props = regionprops_table(labels, properties=("label", "centroid", "area"))
    lab = props["label"].astype(np.int64)
    prob = np.asarray(details["prob"], dtype=np.float64)
    coord = np.asarray(details["coord"], dtype=np.float64)  # (n, 2, n_rays): y, x
    oy, ox = offset
    df = pd.DataFrame({
        "label": lab,
        "centroid_y": props["centroid-0"] + oy,
        "centroid_x": props["centroid-1"] + ox,
        "area": props["area"].astype(np.int64),
        "probability": prob[lab - 1],
        "polygon": [polygon_wkt(coord[k - 1][0] + oy, coord[k - 1][1] + ox) for k in lab],
    })
    return df


_COLUMN_DTYPES = ["int64", "float64", "float64", "int64", "float64", "object"]


def polygon_wkt(ys: np.ndarray, xs: np.ndarray) -> str:
    """A closed polygon as WKT (``POLYGON ((x y, ...))``), readable by GIS tools and KNIME Geospatial."""
    pts = ", ".join(f"{x:.2f} {y:.2f}" for y, x in zip(ys, xs))
    return f"POLYGON (({pts}, {xs[0]:.2f} {ys[0]:.2f}))"


def _n_tiles(n_tiles: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    """stardist's ``n_tiles`` from a pair or one integer (the same for both axes)."""
    import numbers

    if isinstance(n_tiles, numbers.Integral) and not isinstance(n_tiles, bool):
        n_tiles = (int(n_tiles), int(n_tiles))
    ok = (isinstance(n_tiles, (tuple, list, np.ndarray)) and len(n_tiles) == 2
          and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 1 for t in n_tiles))
    if not ok:
        raise InputError(f"n_tiles={n_tiles!r} must be two integers >= 1, e.g. (2, 2) (or one integer for both axes)")
    n = tuple(int(t) for t in n_tiles)
    return n + (1,) if ndim == 3 else n


def _name(name: Any) -> str:
    if not isinstance(name, str):
        raise InputError(f"name={name!r} must be a string (the image's name in messages), not {type(name).__name__}")
    return name


def _image_sequence(images: Any) -> Any:
    """``images`` if it is an iterable of images; a single image array or a path is refused, naming why."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise InputError(f"images is one 2D image (shape {images.shape}); pass a list of images, e.g. [image]")
    if images is None or isinstance(images, (str, bytes, os.PathLike)) or not hasattr(images, "__iter__"):
        raise InputError(f"images must be a list (or other iterable) of image arrays, not {type(images).__name__}")
    return images


def _names(names: Any, images: Any) -> Sequence[str] | None:
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise InputError(f"names must be a list of strings (one per image), not {type(names).__name__}")
    if hasattr(images, "__len__") and len(names) != len(images):
        raise InputError(f"{len(names)} names for {len(images)} images")
    return names

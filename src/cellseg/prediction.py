"""Prediction API: checked arguments, then the one segmentation step of :mod:`cellseg.segment`.

:func:`predict` segments one image, :func:`predict_batch` several (same-shape images share network
calls), :func:`predict_many` a sequence with progress and cancellation, in batches. All three give
stardist's ``predict_instances`` labels (star-convex polygons, non-maximum suppression) and one record
per object (label, centroid, area, probability, polygon).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellseg import images as cimages
from cellseg.adapt import CONVERTIBLE, InputConfig, prepare_input
from cellseg.errors import (
    CancelledError,
    InputError,
    require_bool,
    require_callable,
    require_int,
    require_number,
)
from cellseg.models import CellsegModel
from cellseg.segment import segment_images


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
                         + (" (read the file with cellseg.images.read_image first)" if image is not None else ""))
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
    return (f"{name}: image has {channels} channel(s) but the model expects {expected}; only grey (1) and RGB (3) "
            "are converted into each other")


def check_input(model: CellsegModel, image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate ``image`` for ``model`` (see :func:`check_channels_of`); return it."""
    check_model(model)
    return check_channels_of(image, model.config.n_channel_in, name)


def check_channels_of(image: Any, n: int, name: str = "image") -> np.ndarray:
    """``image`` as a checked array (dimensions, finite values) whose channel count is ``n`` or converts into
    it (grey and RGB, :func:`cellseg.adapt.match_channels`); :class:`InputError` naming ``name`` otherwise."""
    arr = as_image_array(image, name)
    if arr.ndim == 3 and arr.shape[-1] != n and arr.shape[0] < arr.shape[-1]:
        raise InputError(channel_mismatch(name, arr.shape, n))
    arr = cimages.check_image(arr, name)
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    if channels != n and (channels, n) not in CONVERTIBLE:
        raise InputError(channel_mismatch(name, arr.shape, n))
    return arr


def resolve_thresholds(model: CellsegModel, prob_thresh: float | None, nms_thresh: float | None) -> tuple[float, float]:
    """Thresholds to use: the given ones (numbers in [0, 1]), else the model's."""
    check_model(model)
    prob = model.thresholds["prob"] if prob_thresh is None else require_number(prob_thresh, "prob_thresh", 0, 1)
    nms = model.thresholds["nms"] if nms_thresh is None else require_number(nms_thresh, "nms_thresh", 0, 1)
    return prob, nms


def predict(model: CellsegModel, image: np.ndarray, *, prob_thresh: float | None = None,
            nms_thresh: float | None = None, n_tiles: tuple[int, int] | None = None, normalize: bool = True,
            name: str = "image", scale: float | None = None, invert: str = "auto") -> tuple[np.ndarray, pd.DataFrame]:
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
    scale, invert
        Resize the image by ``scale`` before the network (default: the model's own, see
        :class:`cellseg.adapt.InputSpec`; labels come back at the image's size) and invert its intensities
        (``auto``: when its background is not the model's). An RGB image given to a grey model is made
        grey, a grey one given to an RGB model is repeated into three channels.

    Returns
    -------
    labels : ndarray of int32
        Instance label image (0 = background).
    objects : DataFrame
        One row per object with :data:`cellseg.segment.OBJECT_COLUMNS`; ``polygon`` is WKT in (x, y) pixel coordinates.
    """
    return predict_batch(model, [image], prob_thresh=prob_thresh, nms_thresh=nms_thresh, names=[_name(name)],
                         normalize=normalize, n_tiles=n_tiles, scale=scale, invert=invert)[0]


def predict_many(model: CellsegModel, images: Iterable[np.ndarray], *, names: Sequence[str] | None = None,
                 prob_thresh: float | None = None, nms_thresh: float | None = None,
                 n_tiles: tuple[int, int] | None = None, total: int | None = None,
                 progress: Callable[[float, str], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None, batch_size: int = 8,
                 scale: float | None = None, invert: str = "auto") -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """Segment images in batches of ``batch_size`` (:func:`predict_batch`), yielding ``(labels, objects)``
    for each image in order.

    Labels are identical to :func:`predict` one image at a time. ``should_cancel`` is polled before each
    batch; cancelling raises :class:`CancelledError`. With ``n_tiles`` (stardist's network tiling) the
    batches are of one image.
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
    InputConfig(scale=scale, invert=invert)
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
        results = predict_batch(model, chunk, prob_thresh=prob_thresh, nms_thresh=nms_thresh, names=chunk_names,
                                n_tiles=n_tiles, scale=scale, invert=invert)
        for name, result in zip(chunk_names, results):
            done += 1
            if progress is not None:
                progress(done / total if total else 0.0, f"segmented {name}")
            yield result


def predict_batch(model: CellsegModel, images: Sequence[np.ndarray], *, prob_thresh: float | None = None,
                  nms_thresh: float | None = None, names: Sequence[str] | None = None, normalize: bool = True,
                  network_batch: int = 1, n_tiles: tuple[int, int] | int | None = None,
                  scale: float | None = None, invert: str = "auto") -> list[tuple[np.ndarray, pd.DataFrame]]:
    """Segment several images with :func:`cellseg.segment.segment_images`; labels are stardist's
    ``predict_instances``'s.

    Each image is normalised and padded (reflect, at the end, to the network's divisor) as stardist
    does; images with the same padded shape are grouped and go through the network ``network_batch`` at
    a time with ``keras_model.predict_on_batch``; the outputs are taken apart per image and
    post-processed with stardist's sparse candidate selection, NMS and polygon rendering. With
    ``n_tiles`` each image goes through stardist's tiled network (``predict_sparse``) instead.

    ``scale`` and ``invert`` adapt the images to the model as in :func:`predict`.

    ``network_batch=1`` (default) is bit-identical to stardist's ``predict_instances``: on the CPU,
    TensorFlow's convolutions give results that differ in the last float bits (about 1e-7) when images
    are stacked, which can reorder near-equal candidates in NMS, and stacking brought no speed-up on the
    CPU (measured in ``docs/benchmarks.md``); the gain over a stardist loop comes from skipping
    ``keras.Model.predict``'s per-call overhead. Larger values stack images into one network call
    (useful on a GPU) at the cost of that bit-exactness.
    """
    check_model(model)
    network_batch = require_int(network_batch, "network_batch", 1)
    normalize = require_bool(normalize, "normalize")
    tiles = _n_tiles(n_tiles, 3) if n_tiles is not None else None
    images = list(_image_sequence(images))
    names = _names(names, images)
    if names is not None and len(names) != len(images):
        raise InputError(f"predict_batch: {len(names)} names for {len(images)} images")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    prob, nms = resolve_thresholds(model, prob_thresh, nms_thresh)
    inputs = InputConfig(scale=scale, invert=invert)
    spec, n = model.input_spec, model.config.n_channel_in
    prepared, shapes, used = [], [], 1.0
    for image, name in zip(images, names):
        image = check_input(model, image, name)
        x, used = prepare_input(image, n, spec, scale=inputs.scale, invert=inputs.invert, normalize=normalize,
                                name=name)
        prepared.append(x)
        shapes.append(image.shape[:2])
    return segment_images(model, prepared, prob, nms, network_batch=network_batch, n_tiles=tiles, scale=used,
                          out_shapes=shapes)


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

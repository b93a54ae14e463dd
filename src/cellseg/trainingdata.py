"""The annotated images of a training run: :class:`TrainingData`, checked once, and its preparation.

:class:`TrainingData` holds what :func:`cellseg.training.fit` trains on (images, masks, names, optional
validation and mixed-in data) and refuses malformed arguments with one-line errors when it is made.
:func:`prepare_training` then checks every image against the model (channels, patch size, annotations),
normalises it, splits off validation images and mixes in pretraining data. Also here: the augmenter.
Importing this module does not import TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellseg import masks as cmasks
from cellseg.adapt import InputSpec, prepare_input, resize_mask
from cellseg.config import ModelConfig, TrainConfig
from cellseg.errors import InputError, require_bool, require_int, require_number, require_pair
from cellseg.prediction import as_image_array, check_channels_of


@dataclass
class TrainingData:
    """Images and instance label masks to train on, checked when made (:class:`InputError` otherwise).

    ``images`` are YX or YXC arrays of any numeric dtype (normalised when training); ``names`` (one per
    image) appear in error messages and the provenance; ``validation`` is an explicit (images, masks) pair
    (default: :attr:`TrainConfig.validation_fraction` of the images is held back); ``mix_data`` is an
    (images, masks) pair of the pretraining domain mixed in at :attr:`TrainConfig.mix_fraction` of the
    patches; ``label_components`` labels the connected components of binary masks; ``description`` is the
    provenance's description of the data (default: the number of images and their first names).
    """

    images: list[Any]
    masks: list[Any]
    names: list[str] | None = None
    validation: tuple[list[Any], list[Any]] | None = None
    mix_data: tuple[list[Any], list[Any]] | None = None
    label_components: bool = False
    description: str | None = None

    def __post_init__(self) -> None:
        self.images = image_list(self.images, "images")
        self.masks = image_list(self.masks, "masks")
        if len(self.images) == 0:
            raise InputError("no training images given")
        if len(self.images) != len(self.masks):
            raise InputError(f"{len(self.images)} images but {len(self.masks)} masks")
        if self.names is not None:
            self.names = check_names(self.names, len(self.images))
        self.label_components = require_bool(self.label_components, "label_components")
        if self.validation is not None:
            self.validation = pair_of_lists(self.validation, "validation")
        if self.mix_data is not None:
            self.mix_data = pair_of_lists(self.mix_data, "mix_data")
        if self.description is not None and not isinstance(self.description, str):
            raise InputError(f"description must be a string, not {type(self.description).__name__}")

    def describe(self) -> str:
        """The description for the provenance (given, or made from the number of images and names)."""
        if self.description:
            return self.description
        names = f" ({', '.join(self.names[:5])}...)" if self.names else ""
        return f"{len(self.images)} images{names}"


@dataclass
class PreparedData:
    """Normalised training and validation arrays of one run, and notes for the provenance."""

    X: list[np.ndarray]
    Y: list[np.ndarray]
    X_val: list[np.ndarray]
    Y_val: list[np.ndarray]
    n_train: int  # training images before mixing in
    validation_note: str
    mix_note: str | None


def prepare_training(data: TrainingData, config: ModelConfig, train_config: TrainConfig,
                     patch_size: Sequence[int], spec: InputSpec | None = None, scale: float = 1.0) -> PreparedData:
    """Check and adapt ``data`` for a model with ``config`` and input ``spec`` (channels, polarity, ``scale``:
    :func:`prepare_data`); split off validation data and mix in (errors name the image).

    Validation: explicit ``data.validation``; else whole held-back images when
    ``validation_fraction`` of the images is at least 2 (10 or more images at 0.15); else, not to starve
    training of few images, one held-back patch per image (:func:`split_patches`); the training images
    themselves when no image can spare a patch and there are fewer than 3, or at ``validation_fraction`` 0.
    """
    cfg = train_config
    spec = spec or InputSpec()
    X, Y = prepare_data(data.images, data.masks, config, patch_size, names=data.names,
                        label_components=data.label_components, spec=spec, scale=scale, invert=cfg.invert)
    if data.validation is not None:
        val_images, val_masks = data.validation
        Xv, Yv = prepare_data(val_images, val_masks, config, patch_size, label_components=data.label_components,
                              names=[f"validation image {i}" for i in range(len(val_images))], spec=spec,
                              scale=scale, invert=cfg.invert)
        val_note = f"{len(Xv)} separate validation images"
    else:
        X, Y, Xv, Yv, val_note = _validation(X, Y, cfg, patch_size)
    mix_note, n_train = None, len(data.images)
    mix_images, mix_masks = data.mix_data if data.mix_data is not None else ([], [])
    if mix_images:
        Xm, Ym = prepare_data(mix_images, mix_masks, config, patch_size, label_components=data.label_components,
                              names=[f"mix image {i}" for i in range(len(mix_images))], spec=spec,
                              invert=cfg.invert)
        X, Y, mix_note = mix_training_data(X, Y, Xm, Ym, cfg.mix_fraction)
    return PreparedData(X, Y, Xv, Yv, n_train, val_note, mix_note)


def _validation(X: list[np.ndarray], Y: list[np.ndarray], cfg: TrainConfig, patch_size: Sequence[int],
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], str]:
    """Training and validation lists of one run without explicit validation data (see prepare_training)."""
    n, fraction = len(X), cfg.validation_fraction
    if fraction > 0 and round(fraction * n) < 2:
        Xt, Yt, Xv, Yv = split_patches(X, Y, patch_size, cfg.seed)
        if Xv:
            return Xt, Yt, Xv, Yv, f"one held-back {patch_size[0]}x{patch_size[1]} patch of {len(Xv)} of the images"
    train_idx, val_idx = split_validation(n, fraction, cfg.seed)
    note = (f"{len(val_idx)} of the images held back" if train_idx != val_idx
            else "the training images (too few or too small images to hold any back)")
    return ([X[i] for i in train_idx], [Y[i] for i in train_idx], [X[i] for i in val_idx], [Y[i] for i in val_idx],
            note)


def split_patches(X: Sequence[np.ndarray], Y: Sequence[np.ndarray], patch_size: Sequence[int], seed: int,
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Hold back one patch of ``patch_size`` at a (seeded) random corner of every image large enough.

    The rest of such an image becomes up to two training pieces of at least ``patch_size`` (below the
    patch, and beside it); an image too small to keep a training piece stays whole in training. Returns
    training images and masks (pieces), then validation patches and their masks.
    """
    py, px = (int(p) for p in patch_size)
    rng = np.random.default_rng(seed)
    Xt: list[np.ndarray] = []
    Yt: list[np.ndarray] = []
    Xv: list[np.ndarray] = []
    Yv: list[np.ndarray] = []
    for x, y in zip(X, Y):
        flip = rng.integers(0, 2, size=2)
        h, w = y.shape
        below, beside = h - py >= py, w - px >= px
        if not (below or beside):
            Xt.append(x)
            Yt.append(y)
            continue
        fx, fy = x, y
        for axis in (0, 1):
            if flip[axis]:
                fx, fy = np.flip(fx, axis), np.flip(fy, axis)
        Xv.append(np.ascontiguousarray(fx[:py, :px]))
        Yv.append(np.ascontiguousarray(fy[:py, :px]))
        if below:
            Xt.append(np.ascontiguousarray(fx[py:]))
            Yt.append(np.ascontiguousarray(fy[py:]))
        if beside:
            rows = slice(0, py) if below else slice(0, h)
            Xt.append(np.ascontiguousarray(fx[rows, px:]))
            Yt.append(np.ascontiguousarray(fy[rows, px:]))
    return Xt, Yt, Xv, Yv


def prepare_data(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], config: ModelConfig,
                 patch_size: Sequence[int], names: Sequence[str] | None = None, label_components: bool = False,
                 spec: InputSpec | None = None, scale: float = 1.0, invert: str = "auto",
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate image/mask pairs and bring them to the network's input (:func:`cellseg.adapt.prepare_input`:
    normalised, channels matched, inverted as ``invert`` says, resized by ``scale`` with the masks);
    errors name the image."""
    images = image_list(images, "images")
    masks = image_list(masks, "masks")
    patch_size = require_pair(patch_size, "patch_size", lo=1)
    spec = spec or InputSpec()
    if len(images) == 0:
        raise InputError("no training images given")
    if len(images) != len(masks):
        raise InputError(f"{len(images)} images but {len(masks)} masks")
    names = check_names(names, len(images))
    n = config.n_channel_in
    X, Y = [], []
    for name, img, mask in zip(names, images, masks):
        img = check_channels_of(img, n, name)
        mask = cmasks.check_mask(as_image_array(mask, f"{name}: mask"), name, label_components=label_components)
        if mask.shape != img.shape[:2]:
            raise InputError(f"{name}: mask shape {mask.shape} does not match image shape {img.shape[:2]}")
        x, s = prepare_input(img, n, spec, scale=scale, invert=invert, name=name)
        if any(a < p for a, p in zip(x.shape[:2], patch_size)):
            if s != 1:
                raise InputError(
                    f"{name}: scale={s:g} makes the image ({img.shape[0]}x{img.shape[1]}) {x.shape[0]}x{x.shape[1]} "
                    f"pixels, smaller than the patch size {patch_size[0]}x{patch_size[1]}; use a larger scale or a smaller "
                    f"patch_size (a multiple of {config.divisor})")
            raise InputError(
                f"{name}: image {x.shape[0]}x{x.shape[1]} is smaller than the patch size "
                f"{patch_size[0]}x{patch_size[1]}; use a smaller patch_size (a multiple of {config.divisor})"
            )
        X.append(x[..., 0] if n == 1 else x)
        Y.append(resize_mask(mask, x.shape[:2]))
    cmasks.check_annotations(Y, "training data")
    return X, Y


def image_list(images: Any, what: str) -> list[Any]:
    """``images`` as a list; a single 2D array (not a list of images) or a non-sequence is refused."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise InputError(f"{what} is one 2D image (shape {images.shape}); pass a list of images, e.g. [image]")
    if images is None or isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise InputError(f"{what} must be a list of image arrays, not {type(images).__name__}")
    return list(images)


def check_names(names: Any, n: int) -> list[str]:
    """One name per image (default ``image i``); InputError for a string or a list of another length."""
    if names is None:
        return [f"image {i}" for i in range(n)]
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise InputError(f"names must be a list of one name per image, not {type(names).__name__}")
    if len(names) != n:
        raise InputError(f"{len(names)} names for {n} images; give one name per image")
    return [str(x) for x in names]


def pair_of_lists(data: Any, what: str) -> tuple[list[Any], list[Any]]:
    """``(images, masks)`` of ``validation=`` / ``mix_data=``; InputError naming ``what`` otherwise."""
    if isinstance(data, (str, bytes)) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InputError(f"{what} must be a pair (images, masks) of two lists, not {type(data).__name__}"
                         + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    return image_list(data[0], f"{what} images"), image_list(data[1], f"{what} masks")


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation images; with < 3 images validate on the training set."""
    n = require_int(n, "n", 0)
    fraction = require_number(fraction, "validation_fraction", 0, 1, hi_open=True)
    seed = require_int(seed, "seed", 0, 2**32 - 1)
    if n < 3 or fraction <= 0:
        idx = list(range(n))
        return idx, idx
    n_val = min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def mix_training_data(X: list[np.ndarray], Y: list[np.ndarray], Xm: list[np.ndarray], Ym: list[np.ndarray],
                      fraction: float) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """Training lists in which about ``fraction`` of uniformly drawn patches come from ``(Xm, Ym)``.

    stardist draws training images uniformly, so the target images are repeated (or the mixed-in images
    subsampled) until the mixed-in share of the list is ``fraction``. Returns a note for the provenance.
    """
    fraction = require_number(fraction, "mix_fraction", 0, 1, lo_open=True, hi_open=True)
    n, m = len(X), len(Xm)
    if n == 0 or m == 0:
        raise InputError(f"mix_training_data: {n} target and {m} mixed-in images; both must be at least one")
    reps = (1 - fraction) * m / (fraction * n)
    if reps >= 1:
        r = round(reps)
        X2, Y2 = X * r + list(Xm), Y * r + list(Ym)
        k = m
    else:
        k = max(1, min(m, round(fraction * n / (1 - fraction))))
        X2, Y2 = list(X) + list(Xm[:k]), list(Y) + list(Ym[:k])
    share = k / len(X2)
    return X2, Y2, f"{k} pretraining-domain images, {share:.0%} of sampled patches"


def augmenter(rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A stardist augmenter: flips, 90 degree rotations (square patches), intensity scale/shift, noise."""

    def augment(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.shape[0] == x.shape[1] and rng.random() < 0.75:
            k = int(rng.integers(1, 4))
            x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
        for axis in (0, 1):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
        if rng.random() < 0.5:
            x = x + rng.normal(0, rng.uniform(0, 0.05), x.shape)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)

    return augment

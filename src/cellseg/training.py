"""Training and retraining of StarDist models on annotated images.

:func:`train` builds a model from a :class:`~cellseg.models.ModelConfig` and trains it from scratch;
:func:`retrain` continues from an existing model's weights (transfer learning), optionally with the
encoder frozen. Both normalise the images, split off validation data, augment the training patches,
optimise the probability/NMS thresholds on the validation images, report progress and poll for
cancellation after every step. A cancelled run stops within one step and keeps the best weights so far.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from cellseg import io as cio
from cellseg.config import ModelConfig, TrainConfig
from cellseg.errors import (
    InputError,
    require_bool,
    require_callable,
    require_int,
    require_number,
    require_pair,
)
from cellseg.models import CellsegModel, set_seed
from cellseg.prediction import as_image_array, channel_mismatch, check_model

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class TrainResult:
    """What :func:`train` and :func:`retrain` return."""

    model: CellsegModel
    history: pd.DataFrame
    cancelled: bool = False
    seconds: float = 0.0
    steps: int = 0


# -- augmentation ---------------------------------------------------------------------------------

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


# -- progress and cancellation ---------------------------------------------------------------------

def _progress_callback(total_steps: int, progress: ProgressFn | None, should_cancel: CancelFn | None,
                       history: list[dict[str, Any]], start_step: int = 0):
    import keras

    # Keras' own progress bar is silenced by redirecting stdout during fit; the caller's progress
    # callback still writes to the stdout it had when training started.
    caller_stdout = sys.stdout

    class Progress(keras.callbacks.Callback):
        """Reports each step, polls for cancellation, and records the per-epoch history."""

        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.cancelled = False
            self.t0 = time.perf_counter()
            self.epoch = 0
            self.epoch_offset = 0  # epochs done in earlier phases (freeze, then unfreeze)

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.step += 1
            if progress is not None:
                loss = (logs or {}).get("loss")
                msg = f"step {self.step}/{total_steps}" + (f", loss {float(loss):.4f}" if loss is not None else "")
                with contextlib.redirect_stdout(caller_stdout):
                    progress(min(self.step / total_steps, 1.0), msg)
            if should_cancel is not None and should_cancel():
                self.cancelled = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            row = {"epoch": self.epoch_offset + epoch + 1, "step": start_step + self.step,
                   "seconds": round(time.perf_counter() - self.t0, 3)}
            for key in ("loss", "prob_loss", "dist_loss", "val_loss", "val_prob_loss", "val_dist_loss",
                        "learning_rate"):
                if key in logs:
                    row[key] = float(logs[key])
            history.append(row)

    return Progress()


# -- data -----------------------------------------------------------------------------------------

def prepare_data(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], config: ModelConfig,
                 patch_size: Sequence[int], names: Sequence[str] | None = None,
                 label_components: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate and normalise image/mask pairs for ``config``; errors name the image."""
    images = _image_list(images, "images")
    masks = _image_list(masks, "masks")
    patch_size = require_pair(patch_size, "patch_size", lo=1)
    if len(images) == 0:
        raise InputError("no training images given")
    if len(images) != len(masks):
        raise InputError(f"{len(images)} images but {len(masks)} masks")
    names = _check_names(names, len(images))
    X, Y = [], []
    for name, img, mask in zip(names, images, masks):
        img = as_image_array(img, name)
        if img.ndim == 3 and img.shape[-1] != config.n_channel_in and img.shape[0] < img.shape[-1]:
            raise InputError(channel_mismatch(name, img.shape, config.n_channel_in))
        img = cio.check_image(img, name)
        channels = 1 if img.ndim == 2 else img.shape[-1]
        if channels != config.n_channel_in:
            raise InputError(channel_mismatch(name, img.shape, config.n_channel_in))
        mask = cio.check_mask(as_image_array(mask, f"{name}: mask"), name, label_components=label_components)
        if mask.shape != img.shape[:2]:
            raise InputError(f"{name}: mask shape {mask.shape} does not match image shape {img.shape[:2]}")
        if any(s < p for s, p in zip(img.shape[:2], patch_size)):
            raise InputError(
                f"{name}: image {img.shape[0]}x{img.shape[1]} is smaller than the patch size "
                f"{patch_size[0]}x{patch_size[1]}; use a smaller patch_size (a multiple of {config.divisor})"
            )
        X.append(cio.normalize(img))
        Y.append(mask)
    cio.check_annotations(Y, "training data")
    return X, Y


def _image_list(images: Any, what: str) -> list[Any]:
    """``images`` as a list; a single 2D array (not a list of images) or a non-sequence is refused."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise InputError(f"{what} is one 2D image (shape {images.shape}); pass a list of images, e.g. [image]")
    if images is None or isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise InputError(f"{what} must be a list of image arrays, not {type(images).__name__}")
    return list(images)


def _check_names(names: Any, n: int) -> list[str]:
    """One name per image (default ``image i``); InputError for a string or a list of another length."""
    if names is None:
        return [f"image {i}" for i in range(n)]
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise InputError(f"names must be a list of one name per image, not {type(names).__name__}")
    if len(names) != n:
        raise InputError(f"{len(names)} names for {n} images; give one name per image")
    return [str(x) for x in names]


def _pair_of_lists(data: Any, what: str) -> tuple[list[Any], list[Any]]:
    """``(images, masks)`` of ``validation=`` / ``mix_data=``; InputError naming ``what`` otherwise."""
    if isinstance(data, (str, bytes)) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InputError(f"{what} must be a pair (images, masks) of two lists, not {type(data).__name__}"
                         + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    return _image_list(data[0], f"{what} images"), _image_list(data[1], f"{what} masks")


def _check_training_args(names: Any, n_images: int | None, validation: Any, progress: Any, should_cancel: Any,
                         mix_data: Any, label_components: Any, data_description: Any) -> None:
    """The arguments of :func:`train`/:func:`retrain`/:func:`fit` other than the data and configs."""
    if names is not None and n_images is not None:
        _check_names(names, n_images)
    require_callable(progress, "progress")
    require_callable(should_cancel, "should_cancel")
    require_bool(label_components, "label_components")
    if validation is not None:
        _pair_of_lists(validation, "validation")
    if mix_data is not None:
        _pair_of_lists(mix_data, "mix_data")
    if data_description is not None and not isinstance(data_description, str):
        raise InputError(f"data_description must be a string, not {type(data_description).__name__}")


_as_train_config = TrainConfig.of


def _n(images: Any) -> int | None:
    return len(images) if hasattr(images, "__len__") and not isinstance(images, (str, bytes)) else None


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


# -- training -------------------------------------------------------------------------------------

def train(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], model_config: ModelConfig | None = None,
          train_config: TrainConfig | None = None, *, names: Sequence[str] | None = None,
          validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
          progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
          model_name: str = "cellseg", data_description: str | None = None,
          label_components: bool = False) -> TrainResult:
    """Train a new StarDist model from scratch.

    Parameters
    ----------
    images, masks
        Training images (YX or YXC, any numeric dtype; normalised here) and instance label masks.
    model_config, train_config
        Architecture and training settings (defaults: :class:`ModelConfig`, :class:`TrainConfig`).
    names
        Image names used in error messages and provenance.
    validation
        Explicit validation (images, masks); by default split off ``train_config.validation_fraction``.
    progress, should_cancel
        ``progress(fraction, message)`` after every step; ``should_cancel()`` polled after every step.
    """
    model_config = ModelConfig.of(model_config)
    train_config = _as_train_config(train_config)
    _check_training_args(names, _n(images), validation, progress, should_cancel, None, label_components,
                         data_description)
    if not isinstance(model_name, str) or not model_name.strip():
        raise InputError(f"model_name={model_name!r} must be a non-empty string")
    model = CellsegModel.create(model_config, seed=train_config.seed, name=model_name)
    return _fit(model, images, masks, train_config, kind="train", names=names, validation=validation,
                progress=progress, should_cancel=should_cancel, data_description=data_description,
                label_components=label_components)


def retrain(model: CellsegModel, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
            train_config: TrainConfig | None = None, *, names: Sequence[str] | None = None,
            validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
            progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
            data_description: str | None = None, label_components: bool = False,
            mix_data: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None) -> TrainResult:
    """Continue training a copy of ``model`` on new images (transfer learning / fine-tuning).

    The given model is left unchanged. ``train_config.learning_rate`` defaults to the model's own.
    Strategies (see :class:`TrainConfig`): fine-tune all layers (default); ``freeze_encoder`` (always) or
    ``freeze_encoder_epochs`` (first K epochs); ``encoder_lr_factor`` (slower encoder); ``reinit_heads``;
    and ``mix_data`` = (images, masks) of the pretraining domain, mixed in at ``mix_fraction`` of the
    training patches. Provenance records what it came from.
    """
    check_model(model)
    train_config = _as_train_config(train_config)
    _check_training_args(names, _n(images), validation, progress, should_cancel, mix_data, label_components,
                         data_description)
    new = model.copy()
    new.provenance.setdefault("retrained_from", [])
    new.provenance["retrained_from"] = [*model.provenance.get("retrained_from", []),
                                        {"name": model.name, "fingerprint": model.fingerprint(),
                                         "steps_trained": model.steps_trained}]
    return _fit(new, images, masks, train_config, kind="retrain", names=names, validation=validation,
                progress=progress, should_cancel=should_cancel, data_description=data_description,
                label_components=label_components, mix_data=mix_data)


def fit(model: CellsegModel, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
        train_config: TrainConfig | None = None, *, names: Sequence[str] | None = None,
        validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
        progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
        data_description: str | None = None, label_components: bool = False,
        mix_data: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
        kind: str = "retrain") -> TrainResult:
    """Train ``model`` itself (no copy), e.g. to evaluate it from ``progress`` while it trains."""
    check_model(model)
    train_config = _as_train_config(train_config)
    _check_training_args(names, _n(images), validation, progress, should_cancel, mix_data, label_components,
                         data_description)
    if kind not in ("train", "retrain"):
        raise InputError(f"kind={kind!r} must be 'train' or 'retrain'")
    return _fit(model, images, masks, train_config, kind=kind, names=names, validation=validation,
                progress=progress, should_cancel=should_cancel, data_description=data_description,
                label_components=label_components, mix_data=mix_data)


def _fit(model: CellsegModel, images, masks, cfg: TrainConfig, *, kind: str, names, validation,
         progress: ProgressFn | None, should_cancel: CancelFn | None, data_description: str | None,
         label_components: bool, mix_data=None) -> TrainResult:
    sd = model.stardist
    mc = model.config
    patch_size = tuple(cfg.patch_size or mc.patch_size)
    if any(p % mc.divisor or p < mc.divisor for p in patch_size):
        raise InputError(f"patch_size={patch_size} must be multiples of {mc.divisor} (grid x 2**unet_n_depth)")
    X, Y = prepare_data(images, masks, mc, patch_size, names=names, label_components=label_components)
    if validation is not None:
        val_images, val_masks = _pair_of_lists(validation, "validation")
        Xv, Yv = prepare_data(val_images, val_masks, mc, patch_size, label_components=label_components,
                              names=[f"validation image {i}" for i in range(len(val_images))])
        train_idx = list(range(len(X)))
        val_note = f"{len(Xv)} separate validation images"
    else:
        train_idx, val_idx = split_validation(len(X), cfg.validation_fraction, cfg.seed)
        Xv, Yv = [X[i] for i in val_idx], [Y[i] for i in val_idx]
        X, Y = [X[i] for i in train_idx], [Y[i] for i in train_idx]
        val_note = (f"{len(val_idx)} of the images held back" if train_idx != val_idx
                    else "the training images (fewer than 3 images)")
    mix_note, n_train = None, len(X)
    mix_images, mix_masks = _pair_of_lists(mix_data, "mix_data") if mix_data is not None else ([], [])
    if mix_images:
        Xm, Ym = prepare_data(mix_images, mix_masks, mc, patch_size, names=[f"mix image {i}" for i in
                              range(len(mix_images))], label_components=label_components)
        X, Y, mix_note = mix_training_data(X, Y, Xm, Ym, cfg.mix_fraction)

    lr = cfg.learning_rate or mc.learning_rate
    sd.config.train_patch_size = patch_size
    sd.config.train_batch_size = cfg.batch_size or mc.batch_size
    sd.config.train_learning_rate = lr
    sd.config.train_reduce_lr = {"factor": 0.5, "patience": 10, "min_delta": 0} if cfg.reduce_lr else None
    sd.config.train_tensorboard = False

    if cfg.reinit_heads:
        reinit_heads(model, cfg.seed)
    if cfg.freeze_encoder:
        phases = [(cfg.epochs, True)]
    else:
        k = min(cfg.freeze_encoder_epochs, cfg.epochs)
        phases = [p for p in ((k, True), (cfg.epochs - k, False)) if p[0] > 0]
    encoder = model.encoder_layers()
    set_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    cb = _progress_callback(cfg.total_steps, progress, should_cancel, history, start_step=model.steps_trained)
    aug = augmenter(np.random.default_rng(cfg.seed)) if cfg.augment else None

    t0 = time.perf_counter()
    best = None
    for i, (epochs, frozen) in enumerate(phases):
        for layer in model.keras_model.layers:
            layer.trainable = not (frozen and layer in encoder)
        sd._model_prepared = False
        optimizer = _optimizer(lr, encoder if cfg.encoder_lr_factor != 1 and not frozen else [],
                               cfg.encoder_lr_factor)
        with contextlib.redirect_stdout(io.StringIO()):
            sd.prepare_for_training(optimizer=optimizer)
        _carry_best(sd.callbacks, best)
        sd.callbacks.append(cb)
        cb.epoch_offset = sum(p[0] for p in phases[:i])
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # stardist feeds a generator
            sd.train(X, Y, validation_data=(Xv, Yv), augmenter=aug, seed=cfg.seed + i, epochs=epochs,
                     steps_per_epoch=cfg.steps_per_epoch)
        best = _best_val_loss(sd.callbacks)
        if cb.cancelled:
            break
    for layer in model.keras_model.layers:
        layer.trainable = True
    seconds = time.perf_counter() - t0
    steps = cb.step

    if cfg.optimize_thresholds and not cb.cancelled and steps > 0:
        if progress is not None:
            progress(1.0, "optimising thresholds on the validation images")
        optimize_thresholds(model, Xv, Yv)
    model.mark_changed()
    model.provenance["steps_trained"] = model.steps_trained + steps
    record = {
        "kind": kind,
        "n_images": n_train,
        "validation": val_note,
        "data": data_description or (f"{len(images)} images" + (f" ({', '.join(list(names)[:5])}...)" if names else "")),
        "steps": steps,
        "epochs": cfg.epochs,
        "steps_per_epoch": cfg.steps_per_epoch,
        "seconds": round(seconds, 2),
        "cancelled": cb.cancelled,
        "train_config": asdict(cfg),
        "mixed_in": mix_note,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "history": history,
    }
    model.provenance.setdefault("trainings", []).append(record)
    model.provenance["thresholds"] = model.thresholds
    return TrainResult(model=model, history=pd.DataFrame(history), cancelled=cb.cancelled, seconds=seconds,
                       steps=steps)


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


def reinit_heads(model: CellsegModel, seed: int = 0) -> list[str]:
    """Re-initialise the output heads (``prob``, ``dist``) like a new model; returns their names."""
    import keras

    check_model(model)
    seed = require_int(seed, "seed", 0, 2**32 - 1)

    hook = getattr(model.stardist, "head_layers", None)
    heads = list(hook()) if hook is not None else [
        layer for layer in model.keras_model.layers if layer.name in ("prob", "dist", "prob_class")]
    for i, layer in enumerate(heads):
        layer.kernel.assign(keras.initializers.GlorotUniform(seed=seed + i)(layer.kernel.shape))
        if layer.bias is not None:
            layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    model.mark_changed()
    return [layer.name for layer in heads]


def _optimizer(lr: float, slow_layers: Sequence[Any], factor: float):
    """Adam; the variables of ``slow_layers`` get ``lr * factor`` (per-variable learning rate)."""
    import keras

    if not slow_layers:
        return keras.optimizers.Adam(lr)

    class LayerwiseAdam(keras.optimizers.Adam):
        """Adam that scales the learning rate of some variables (Adam ignores gradient scaling)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._slow_keys: set[int] | None = None

        def update_step(self, gradient, variable, learning_rate):
            if self._slow_keys is None:
                self._slow_keys = {self._var_key(v) for layer in slow_layers for v in layer.trainable_weights}
            if self._var_key(variable) in self._slow_keys:
                learning_rate = learning_rate * factor
            return super().update_step(gradient, variable, learning_rate)

    return LayerwiseAdam(lr)


def _carry_best(callbacks: list[Any], best: float | None) -> None:
    """Let a new phase's checkpoint callback keep only weights better than the earlier phases' best."""
    if best is None:
        return
    for c in callbacks:
        if hasattr(c, "best") and hasattr(c, "save_best_only"):
            c.best = best


def _best_val_loss(callbacks: list[Any]) -> float | None:
    for c in callbacks:
        if hasattr(c, "best") and hasattr(c, "save_best_only"):
            return float(c.best)
    return None


def optimize_thresholds(model: CellsegModel, X: Sequence[np.ndarray], Y: Sequence[np.ndarray],
                        max_images: int = 32) -> dict[str, float]:
    """Choose the probability and NMS thresholds that maximise accuracy on ``(X, Y)`` (normalised)."""
    check_model(model)
    max_images = require_int(max_images, "max_images", 1)
    X, Y = _image_list(X, "X")[:max_images], _image_list(Y, "Y")[:max_images]
    if not X or len(X) != len(Y):
        raise InputError(f"optimize_thresholds: {len(X)} images and {len(Y)} masks; need as many masks as "
                         "images, at least one")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.stardist.optimize_thresholds(X, Y, save_to_json=False,
                                           optimize_kwargs={"verbose": 0, "tol": 1e-2, "maxiter": 20})
    t = model.stardist.thresholds
    if not (math.isfinite(t.prob) and math.isfinite(t.nms)):
        model.thresholds = {"prob": 0.5, "nms": 0.4}
    model.mark_changed()
    return model.thresholds

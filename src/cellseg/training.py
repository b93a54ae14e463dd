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
from cellseg.errors import InputError
from cellseg.models import CellsegModel, ModelConfig, set_seed

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class TrainConfig:
    """How to train (the architecture is in :class:`~cellseg.models.ModelConfig`).

    Parameters
    ----------
    epochs, steps_per_epoch
        Training length: ``epochs * steps_per_epoch`` optimiser steps.
    learning_rate
        Adam learning rate; ``None`` uses the model's own (``ModelConfig.learning_rate``).
    batch_size, patch_size
        Override the model's training batch and patch size (``None`` keeps them).
    augment
        Random flips, 90 degree rotations, intensity scale/shift and noise on training patches.
    validation_fraction
        Share of the images held back for validation and threshold optimisation. With fewer than
        3 images the training images themselves are used for validation.
    seed
        Seeds weights init, patch sampling and augmentation: the same seed gives the same weights.
    optimize_thresholds
        Optimise the probability and NMS thresholds on the validation images after training.
    freeze_encoder
        Keep the encoder's weights fixed (retraining only the decoder and output heads).
    freeze_encoder_epochs
        Keep the encoder fixed for the first this many epochs, then train all layers (0: never).
    encoder_lr_factor
        The encoder's learning rate is ``learning_rate * encoder_lr_factor`` (1: same as the rest).
    reinit_heads
        Re-initialise the output heads (``prob`` and ``dist`` layers) before retraining.
    mix_fraction
        With ``retrain(..., mix_data=...)``: share of training patches drawn from that pretraining data.
    reduce_lr
        Halve the learning rate when the validation loss stalls (stardist's default schedule).
    """

    epochs: int = 10
    steps_per_epoch: int = 50
    learning_rate: float | None = None
    batch_size: int | None = None
    patch_size: tuple[int, int] | None = None
    augment: bool = True
    validation_fraction: float = 0.15
    seed: int = 0
    optimize_thresholds: bool = True
    freeze_encoder: bool = False
    reduce_lr: bool = True
    freeze_encoder_epochs: int = 0
    encoder_lr_factor: float = 1.0
    reinit_heads: bool = False
    mix_fraction: float = 0.25

    def validate(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("steps_per_epoch", self.steps_per_epoch >= 1, "must be >= 1"),
            ("learning_rate", self.learning_rate is None or 0 < self.learning_rate < 1, "must be in (0, 1)"),
            ("batch_size", self.batch_size is None or self.batch_size >= 1, "must be >= 1"),
            ("validation_fraction", 0 <= self.validation_fraction < 1, "must be in [0, 1)"),
            ("freeze_encoder_epochs", 0 <= self.freeze_encoder_epochs, "must be >= 0"),
            ("encoder_lr_factor", 0 <= self.encoder_lr_factor <= 1, "must be in [0, 1]"),
            ("mix_fraction", 0 < self.mix_fraction < 1, "must be in (0, 1)"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r} {what}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


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
    if len(images) == 0:
        raise InputError("no training images given")
    if len(images) != len(masks):
        raise InputError(f"{len(images)} images but {len(masks)} masks")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    X, Y = [], []
    for name, img, mask in zip(names, images, masks):
        img = cio.check_image(np.asarray(img), name)
        channels = 1 if img.ndim == 2 else img.shape[-1]
        if channels != config.n_channel_in:
            raise InputError(f"{name}: image has {channels} channel(s) but the model expects {config.n_channel_in}")
        mask = cio.check_mask(np.asarray(mask), name, label_components=label_components)
        if mask.shape != img.shape[:2]:
            raise InputError(f"{name}: mask shape {mask.shape} does not match image shape {img.shape[:2]}")
        if any(s < p for s, p in zip(img.shape[:2], patch_size)):
            raise InputError(
                f"{name}: image {img.shape[0]}x{img.shape[1]} is smaller than the patch size "
                f"{patch_size[0]}x{patch_size[1]}; use a smaller patch_size (a multiple of {config.divisor})"
            )
        X.append(cio.normalize(img))
        Y.append(mask)
    return X, Y


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation images; with < 3 images validate on the training set."""
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
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    model_config.validate()
    train_config.validate()
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
    train_config = train_config or TrainConfig()
    train_config.validate()
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
    train_config = train_config or TrainConfig()
    train_config.validate()
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
        Xv, Yv = prepare_data(validation[0], validation[1], mc, patch_size, label_components=label_components)
        train_idx = list(range(len(X)))
        val_note = f"{len(Xv)} separate validation images"
    else:
        train_idx, val_idx = split_validation(len(X), cfg.validation_fraction, cfg.seed)
        Xv, Yv = [X[i] for i in val_idx], [Y[i] for i in val_idx]
        X, Y = [X[i] for i in train_idx], [Y[i] for i in train_idx]
        val_note = (f"{len(val_idx)} of the images held back" if train_idx != val_idx
                    else "the training images (fewer than 3 images)")
    mix_note, n_train = None, len(X)
    if mix_data is not None and len(mix_data[0]):
        Xm, Ym = prepare_data(mix_data[0], mix_data[1], mc, patch_size, names=[f"mix image {i}" for i in
                              range(len(mix_data[0]))], label_components=label_components)
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
    n, m = len(X), len(Xm)
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
    X, Y = list(X)[:max_images], list(Y)[:max_images]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.stardist.optimize_thresholds(X, Y, save_to_json=False,
                                           optimize_kwargs={"verbose": 0, "tol": 1e-2, "maxiter": 20})
    t = model.stardist.thresholds
    if not (math.isfinite(t.prob) and math.isfinite(t.nms)):
        model.thresholds = {"prob": 0.5, "nms": 0.4}
    model.mark_changed()
    return model.thresholds

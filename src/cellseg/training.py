"""Training and retraining of StarDist models on annotated images.

:func:`fit` is the one training entry point: it trains a model on a
:class:`~cellseg.trainingdata.TrainingData` with a :class:`~cellseg.config.TrainConfig`, reporting to
:class:`~cellseg.callbacks.TrainingCallback` objects (progress, cancellation, evaluation). It normalises
the images, splits off validation data, augments the training patches, keeps the weights with the best
validation loss and optimises the probability/NMS thresholds on the validation images. A run stopped by
a callback stops within one step and keeps the best weights so far.

:func:`train` (a new model from a :class:`~cellseg.config.ModelConfig`) and :func:`retrain` (a copy of an
existing model: transfer learning) are convenience wrappers of :func:`fit` taking plain arguments
(``progress`` and ``should_cancel`` functions instead of callbacks).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from cellseg.adapt import AUTO_CHANNEL_MODE, CONVERTIBLE, adapt_channels, plan_input
from cellseg.callbacks import (
    BestWeights,
    CancelFn,
    EarlyStopping,
    History,
    ProgressFn,
    TimeBudget,
    TrainingCallback,
    check_callbacks,
    from_functions,
)
from cellseg.config import ModelConfig, TrainConfig, check_patch_size
from cellseg.errors import InputError, require_int
from cellseg.models import CellsegModel, set_seed
from cellseg.prediction import check_model
from cellseg.trainingdata import (
    TrainingData,
    augmenter,
    image_list,
    mix_training_data,
    prepare_data,
    prepare_training,
    split_validation,
)

__all__ = [
    "TrainResult", "TrainingData", "TrainingCallback", "fit", "train", "retrain",
    "optimize_thresholds", "reinit_heads", "prepare_data", "split_validation", "mix_training_data", "augmenter",
]

Pair = tuple[Sequence[np.ndarray], Sequence[np.ndarray]]


@dataclass
class TrainResult:
    """What :func:`fit`, :func:`train` and :func:`retrain` return."""

    model: CellsegModel
    history: pd.DataFrame
    cancelled: bool = False
    seconds: float = 0.0
    steps: int = 0
    stop_reason: str = "all steps done"  # or "cancelled", a spent time budget, early stopping
    validation_ap50: float | None = None  # AP@0.5 on the validation data with the final thresholds
    kept_start: bool = False  # retraining did not beat the starting weights on validation: they were kept
    start_validation_ap50: float | None = None  # the starting model's validation AP@0.5 (retraining only)
    input_note: str = ""  # how the images were adapted: background, scale (see cellseg.adapt)
    channels_note: str = ""  # how the channels were matched, when the images' are not the model's


# -- the entry point ------------------------------------------------------------------------------

def fit(model: CellsegModel, data: TrainingData, config: TrainConfig | dict[str, Any] | None = None,
        callbacks: Sequence[TrainingCallback] = (), *, kind: str = "retrain") -> TrainResult:
    """Train ``model`` itself (no copy; a new model when its first layer is adapted to the images'
    channels, see ``channels`` in :class:`TrainConfig`) on ``data``: the one training entry point.

    ``config`` is a :class:`TrainConfig` (or a dict of its parameters; default: ``TrainConfig()``);
    ``callbacks`` are :class:`~cellseg.callbacks.TrainingCallback` objects (progress, cancellation,
    evaluation while training); ``kind`` ("train" or "retrain") is recorded in the provenance. The
    model's weights become those of the epoch with the lowest validation loss; its provenance records
    the training (data, steps, history, settings).
    """
    check_model(model)
    if not isinstance(data, TrainingData):
        raise InputError(f"data must be a cellseg.trainingdata.TrainingData (images, masks, ...), not "
                         f"{type(data).__name__}")
    cfg = TrainConfig.of(config)
    callbacks = check_callbacks(callbacks)
    if kind not in ("train", "retrain"):
        raise InputError(f"kind={kind!r} must be 'train' or 'retrain'")
    model, channels_note = _match_model_channels(model, data, cfg)
    mc = model.config
    patch_size = check_patch_size(cfg.patch_size or mc.patch_size, mc.divisor)
    spec, input_note = plan_input(model, data, cfg.scale, fresh=kind == "train")
    prepared = prepare_training(data, mc, cfg, patch_size, spec, spec.scale)
    model.input_spec = spec

    from cellseg import keras_glue

    lr = cfg.learning_rate or mc.learning_rate
    sd = model.stardist
    sd.config.train_patch_size = patch_size
    sd.config.train_batch_size = cfg.batch_size or mc.batch_size
    sd.config.train_learning_rate = lr
    plateau = max(2, cfg.patience // 2) if cfg.patience else 10  # halve the rate before stopping early
    sd.config.train_reduce_lr = {"factor": 0.5, "patience": plateau, "min_delta": 0} if cfg.reduce_lr else None
    sd.config.train_tensorboard = False
    if cfg.reinit_heads:
        reinit_heads(model, cfg.seed)
    phases = _phases(cfg)
    encoder = model.encoder_layers()
    set_seed(cfg.seed)
    best, history = BestWeights(), History(start_step=model.steps_trained)
    stoppers = ([TimeBudget(cfg.minutes * 60)] if cfg.minutes else []) + (
        [EarlyStopping(cfg.patience)] if cfg.patience else [])
    hooks = [history, best, *callbacks, *stoppers]
    start = _Start(model, prepared.X_val, prepared.Y_val) if kind == "retrain" and cfg.keep_start else None
    bridge = keras_glue.KerasBridge(hooks, cfg.total_steps)
    aug = augmenter(np.random.default_rng(cfg.seed)) if cfg.augment else None
    for cb in hooks:
        cb.on_train_begin(model, cfg.total_steps)

    t0 = time.perf_counter()
    for i, (epochs, frozen) in enumerate(phases):
        slow = encoder if cfg.encoder_lr_factor != 1 and not frozen else []
        bridge.epoch_offset = sum(p[0] for p in phases[:i])
        keras_glue.train_phase(model, prepared.X, prepared.Y, (prepared.X_val, prepared.Y_val), bridge,
                               epochs=epochs, steps_per_epoch=cfg.steps_per_epoch, seed=cfg.seed + i,
                               frozen=encoder if frozen else [], augmenter=aug,
                               optimizer=keras_glue.make_optimizer(lr, slow, cfg.encoder_lr_factor))
        best.restore()  # the next phase starts from, and the run ends with, the best weights so far
        if bridge.stopped:
            break
    seconds = time.perf_counter() - t0
    steps = bridge.step
    cancelled = bridge.stopped and not (bridge.stopper is not None and bridge.stopper.finishes)
    stop_reason = bridge.stopper.stop_reason if bridge.stopper is not None else "all steps done"

    val_ap, kept_start = None, False
    if cfg.optimize_thresholds and not cancelled and steps > 0:
        for cb in callbacks:
            cb.on_status("optimising thresholds on the validation images")
        optimize_thresholds(model, prepared.X_val, prepared.Y_val)
    if not cancelled and steps > 0:
        val_ap = validation_ap(model, prepared.X_val, prepared.Y_val)
        if start is not None and start.ap is not None and val_ap is not None and val_ap < start.ap + KEEP_MARGIN:
            stop_reason += (f"; the starting weights were kept: retraining did not beat them on the validation data "
                            f"by {KEEP_MARGIN} (AP@0.5 {val_ap:.3f} vs {start.ap:.3f})")
            val_ap, kept_start = start.restore(), True
    model.provenance["steps_trained"] = model.steps_trained + steps
    model.provenance.setdefault("trainings", []).append({
        "kind": kind,
        "n_images": prepared.n_train,
        "validation": prepared.validation_note,
        "validation_ap50": val_ap,
        "start_validation_ap50": None if start is None else start.ap,
        "kept_start": kept_start,
        "input": input_note + (f"; {channels_note}" if channels_note else ""),
        "data": data.describe(),
        "steps": steps,
        "epochs": cfg.epochs,
        "steps_per_epoch": cfg.steps_per_epoch,
        "seconds": round(seconds, 2),
        "cancelled": cancelled,
        "stop_reason": stop_reason,
        "train_config": asdict(cfg),
        "mixed_in": prepared.mix_note,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "history": history.rows,
    })
    model.provenance["thresholds"] = model.thresholds
    return TrainResult(model=model, history=pd.DataFrame(history.rows), cancelled=cancelled, seconds=seconds,
                       steps=steps, stop_reason=stop_reason, validation_ap50=val_ap, kept_start=kept_start,
                       start_validation_ap50=None if start is None else start.ap,
                       input_note=input_note,
                       channels_note=channels_note)


#: A retrained model is kept only if its validation AP@0.5 beats the starting model's by this much. The
#: validation patches come from the training images, so the retrained model's score there is optimistic;
#: a smaller gain is within that optimism, and the pretrained model's generality is worth more (measured
#: in docs/transfer-learning.md: on DSB2018 fluorescence, gains of 0 and 0.014 on validation came with
#: losses of 0.05-0.07 AP@0.5 on the other images).
KEEP_MARGIN = 0.05


class _Start:
    """The weights, thresholds and validation AP@0.5 a retraining started from (kept unless training beat
    them on the validation data by :data:`KEEP_MARGIN`)."""

    def __init__(self, model: CellsegModel, X: Sequence[np.ndarray], Y: Sequence[np.ndarray]) -> None:
        self.model, self.weights, self.thresholds = model, model.keras_model.get_weights(), model.thresholds
        self.ap = validation_ap(model, X, Y)

    def restore(self) -> float | None:
        self.model.keras_model.set_weights(self.weights)
        self.model.thresholds = self.thresholds
        return self.ap


def _match_model_channels(model: CellsegModel, data: TrainingData, cfg: TrainConfig) -> tuple[CellsegModel, str]:
    """``model``, or a copy adapted to the images' channels (``cfg.channels``), and a note ("" if equal)."""
    n = model.config.n_channel_in
    counts = [1 if np.ndim(im) == 2 else int(np.shape(im)[-1]) for im in data.images]
    c = max(set(counts), key=counts.count)
    if c == n or (c, n) not in CONVERTIBLE:
        return model, ""  # equal, or refused naming the image by prepare_data
    mode = AUTO_CHANNEL_MODE if cfg.channels == "auto" else cfg.channels
    if mode == "adapt":
        return adapt_channels(model, c), f"the model's first layer adapted from {n} to {c} channels"
    return model, f"images converted from {c} to {n} channel(s)"


def validation_ap(model: CellsegModel, X: Sequence[np.ndarray], Y: Sequence[np.ndarray]) -> float | None:
    """AP@0.5 of ``model`` (its thresholds) on network inputs ``X`` with masks ``Y``; None without objects."""
    from cellseg.metrics import ap_at, score_dataset
    from cellseg.prediction import predict_batch

    if not X or not any(np.any(y) for y in Y):
        return None
    pred = [labels for labels, _ in predict_batch(model, list(X), normalize=False, scale=1.0, invert="no")]
    return round(ap_at(score_dataset(list(Y), pred, thresholds=(0.5,))[1], 0.5), 4)


def _phases(cfg: TrainConfig) -> list[tuple[int, bool]]:
    """(epochs, encoder frozen) of each phase: frozen throughout, or frozen for the first K epochs."""
    if cfg.freeze_encoder:
        return [(cfg.epochs, True)]
    k = min(cfg.freeze_encoder_epochs, cfg.epochs)
    return [p for p in ((k, True), (cfg.epochs - k, False)) if p[0] > 0]


# -- wrappers with plain arguments ----------------------------------------------------------------

def train(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], model_config: ModelConfig | None = None,
          train_config: TrainConfig | None = None, *, names: Sequence[str] | None = None,
          validation: Pair | None = None, progress: ProgressFn | None = None,
          should_cancel: CancelFn | None = None, model_name: str = "cellseg", data_description: str | None = None,
          label_components: bool = False) -> TrainResult:
    """Train a new StarDist model from scratch (a wrapper of :func:`fit`).

    Parameters
    ----------
    images, masks
        Training images (YX or YXC, any numeric dtype; normalised here) and instance label masks.
    model_config, train_config
        Architecture and training settings (defaults: :class:`ModelConfig`, :class:`TrainConfig`).
    names, validation, data_description, label_components
        See :class:`~cellseg.trainingdata.TrainingData`; by default validation images are split off
        (``train_config.validation_fraction``).
    progress, should_cancel
        ``progress(fraction, message)`` after every step; ``should_cancel()`` polled after every step.
    """
    model_config = ModelConfig.of(model_config)
    train_config = TrainConfig.of(train_config)
    data = _training_data(images, masks, names, validation, None, label_components, data_description)
    callbacks = from_functions(progress, should_cancel)
    if not isinstance(model_name, str) or not model_name.strip():
        raise InputError(f"model_name={model_name!r} must be a non-empty string")
    model = CellsegModel.create(model_config, seed=train_config.seed, name=model_name)
    return fit(model, data, train_config, callbacks, kind="train")


def retrain(model: CellsegModel, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
            train_config: TrainConfig | None = None, *, names: Sequence[str] | None = None,
            validation: Pair | None = None, progress: ProgressFn | None = None,
            should_cancel: CancelFn | None = None, data_description: str | None = None,
            label_components: bool = False, mix_data: Pair | None = None) -> TrainResult:
    """Continue training a copy of ``model`` on new images (transfer learning; a wrapper of :func:`fit`).

    The given model is left unchanged. Without ``train_config`` the retraining budget is used
    (:meth:`TrainConfig.retraining`, the same defaults as ``cellseg retrain`` and the Retrainer node).
    Strategies (see :class:`TrainConfig`): fine-tune all layers (default); ``freeze_encoder`` (always) or
    ``freeze_encoder_epochs`` (first K epochs); ``encoder_lr_factor`` (slower encoder); ``reinit_heads``;
    and ``mix_data`` = (images, masks) of the pretraining domain, mixed in at ``mix_fraction`` of the
    training patches. Provenance records what it came from. Other arguments as in :func:`train`.
    """
    check_model(model)
    train_config = TrainConfig.retraining() if train_config is None else TrainConfig.of(train_config)
    data = _training_data(images, masks, names, validation, mix_data, label_components, data_description)
    callbacks = from_functions(progress, should_cancel)
    new = model.copy()
    new.provenance["retrained_from"] = [*model.provenance.get("retrained_from", []),
                                        {"name": model.name, "fingerprint": model.fingerprint(),
                                         "steps_trained": model.steps_trained}]
    return fit(new, data, train_config, callbacks, kind="retrain")


def _training_data(images: Any, masks: Any, names: Any, validation: Any, mix_data: Any, label_components: Any,
                   data_description: Any) -> TrainingData:
    """The wrappers' arguments as :class:`TrainingData` (errors name the wrappers' arguments)."""
    if data_description is not None and not isinstance(data_description, str):
        raise InputError(f"data_description must be a string, not {type(data_description).__name__}")
    return TrainingData(images, masks, names=names, validation=validation, mix_data=mix_data,
                        label_components=label_components, description=data_description)


# -- steps of a training run ----------------------------------------------------------------------

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
    return [layer.name for layer in heads]


def optimize_thresholds(model: CellsegModel, X: Sequence[np.ndarray], Y: Sequence[np.ndarray],
                        max_images: int = 32) -> dict[str, float]:
    """Choose the probability and NMS thresholds that maximise accuracy on ``(X, Y)`` (normalised)."""
    check_model(model)
    max_images = require_int(max_images, "max_images", 1)
    X, Y = image_list(X, "X")[:max_images], image_list(Y, "Y")[:max_images]
    if not X or len(X) != len(Y):
        raise InputError(f"optimize_thresholds: {len(X)} images and {len(Y)} masks; need as many masks as "
                         "images, at least one")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.stardist.optimize_thresholds(X, Y, save_to_json=False,
                                           optimize_kwargs={"verbose": 0, "tol": 1e-2, "maxiter": 20})
    t = model.stardist.thresholds
    if not (math.isfinite(t.prob) and math.isfinite(t.nms)):
        model.thresholds = {"prob": 0.5, "nms": 0.4}
    return model.thresholds

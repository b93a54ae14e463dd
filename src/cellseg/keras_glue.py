"""Keras and stardist specifics of a training run (imports TensorFlow; used by :func:`cellseg.training.fit`).

:class:`KerasBridge` forwards Keras' callbacks to cellseg's :class:`~cellseg.callbacks.TrainingCallback`
objects and stops training when one asks; :class:`LayerwiseAdam` gives the encoder a slower learning
rate; :func:`train_phase` runs one phase (encoder frozen or not) of stardist's training loop.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np

from cellseg.callbacks import TrainingCallback
from cellseg.models import CellsegModel


class KerasBridge(keras.callbacks.Callback):
    """Counts steps over all phases of a run and calls the cellseg callbacks' hooks.

    After every step and epoch each callback's :meth:`~TrainingCallback.should_stop` is polled; the first
    True sets :attr:`stopped` (and :attr:`stopper`) and stops Keras there. Hooks run with the standard output the caller
    had when this bridge was made (Keras' progress bar is silenced by redirecting it).
    """

    def __init__(self, callbacks: Sequence[TrainingCallback], total_steps: int) -> None:
        super().__init__()
        self.callbacks = list(callbacks)
        self.total_steps = total_steps
        self.step = 0
        self.stopped = False
        self.stopper: TrainingCallback | None = None  # the callback that stopped the run
        self.epoch_offset = 0  # epochs done in earlier phases (freeze, then unfreeze)
        self._stdout = sys.stdout

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.step += 1
        logs = dict(logs or {})
        with contextlib.redirect_stdout(self._stdout):
            for cb in self.callbacks:
                cb.on_step(self.step, self.total_steps, logs)
            self._poll()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        with contextlib.redirect_stdout(self._stdout):
            for cb in self.callbacks:
                cb.on_epoch_end(self.epoch_offset + epoch + 1, self.step, logs)
            self._poll()

    def _poll(self) -> None:
        if self.stopped:
            return
        for cb in self.callbacks:
            if cb.should_stop():
                self.stopped, self.stopper = True, cb
                self.model.stop_training = True
                return


class LayerwiseAdam(keras.optimizers.Adam):
    """Adam whose variables of ``slow_layers`` learn at ``learning_rate * factor``.

    Scaling the gradients would not do (Adam is invariant to the gradients' scale), so the learning rate
    is scaled per variable.
    """

    def __init__(self, learning_rate: float, slow_layers: Sequence[Any], factor: float, **kwargs: Any) -> None:
        super().__init__(learning_rate, **kwargs)
        self.slow_layers = list(slow_layers)
        self.factor = factor
        self._slow_keys: set[int] | None = None

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        if self._slow_keys is None:
            self._slow_keys = {self._var_key(v) for layer in self.slow_layers for v in layer.trainable_weights}
        if self._var_key(variable) in self._slow_keys:
            learning_rate = learning_rate * self.factor
        return super().update_step(gradient, variable, learning_rate)


def make_optimizer(learning_rate: float, slow_layers: Sequence[Any], factor: float) -> keras.optimizers.Optimizer:
    """Adam, or :class:`LayerwiseAdam` when some layers learn slower."""
    if not slow_layers:
        return keras.optimizers.Adam(learning_rate)
    return LayerwiseAdam(learning_rate, slow_layers, factor)


@contextlib.contextmanager
def _without_stardist_checkpoints(sd: Any) -> Iterator[None]:
    """stardist without its model folder: no checkpoint callbacks, no reloading of weights files after
    training (:class:`~cellseg.callbacks.BestWeights` keeps the best weights instead)."""
    basedir = sd.basedir
    sd.basedir = None
    try:
        yield
    finally:
        sd.basedir = basedir


def train_phase(model: CellsegModel, X: list[np.ndarray], Y: list[np.ndarray],
                validation: tuple[list[np.ndarray], list[np.ndarray]], bridge: KerasBridge, *, epochs: int,
                steps_per_epoch: int, seed: int, frozen: Sequence[Any], optimizer: keras.optimizers.Optimizer,
                augmenter: Callable | None) -> None:
    """Train ``model`` for ``epochs`` epochs with the layers ``frozen`` fixed (stardist's loop, quiet)."""
    sd = model.stardist
    frozen_ids = {id(layer) for layer in frozen}
    for layer in model.keras_model.layers:
        layer.trainable = id(layer) not in frozen_ids
    sd._model_prepared = False
    try:
        with _without_stardist_checkpoints(sd):
            with contextlib.redirect_stdout(io.StringIO()):
                sd.prepare_for_training(optimizer=optimizer)
            sd.callbacks.append(bridge)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # stardist feeds a generator
                sd.train(X, Y, validation_data=validation, augmenter=augmenter, seed=seed, epochs=epochs,
                         steps_per_epoch=steps_per_epoch)
    finally:
        for layer in model.keras_model.layers:
            layer.trainable = True

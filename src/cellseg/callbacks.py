"""Hooks into a training run: what :func:`cellseg.training.fit` calls while it trains.

A :class:`TrainingCallback` sees the run start, every optimiser step, every epoch's losses and the
stages after training (e.g. threshold optimisation), and may ask the run to stop. Built in: progress
reporting (:class:`ProgressReporter`), cancellation (:class:`CancelWhen`), keeping the best weights
(:class:`BestWeights`), the history table (:class:`History`) and evaluation at chosen steps
(:class:`EvaluateAtSteps`, used by ``cellseg tl-eval``). Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cellseg.errors import InputError, require_callable

if TYPE_CHECKING:
    from cellseg.models import CellsegModel

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

#: The per-epoch values kept in the history table (when Keras reports them).
HISTORY_KEYS = ("loss", "prob_loss", "dist_loss", "val_loss", "val_prob_loss", "val_dist_loss", "learning_rate")


class TrainingCallback:
    """Base class of the hooks of a training run; every hook does nothing unless overridden.

    Steps are counted from 1 within the run; epochs from 1 over all phases of the run (a retraining with
    ``freeze_encoder_epochs`` runs two phases). Hooks run with the caller's standard output (Keras'
    own output is silenced). A callback whose stop :attr:`finishes` the run (a time budget, early
    stopping) ends it as done, with its :attr:`stop_reason`; any other stop is a cancellation.
    """

    finishes: bool = False
    stop_reason: str = "cancelled"

    def on_train_begin(self, model: CellsegModel, total_steps: int) -> None:
        """The run starts training ``model`` for at most ``total_steps`` steps (the data is checked)."""

    def on_step(self, step: int, total: int, logs: dict[str, Any]) -> None:
        """Optimiser step ``step`` of ``total`` is done; ``logs`` holds Keras' running losses."""

    def on_epoch_end(self, epoch: int, step: int, logs: dict[str, Any]) -> None:
        """Epoch ``epoch`` ended after ``step`` steps; ``logs`` holds its training and validation losses."""

    def should_stop(self) -> bool:
        """Polled after every step and epoch: True stops the run there (``cancelled`` unless :attr:`finishes`)."""
        return False

    def on_status(self, message: str) -> None:
        """A stage after the training steps begins, e.g. threshold optimisation."""


def check_callbacks(callbacks: Any) -> list[TrainingCallback]:
    """``callbacks`` as a list of :class:`TrainingCallback`; :class:`InputError` naming a wrong one."""
    if isinstance(callbacks, TrainingCallback):
        return [callbacks]
    if callbacks is None or isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise InputError(f"callbacks must be a list of TrainingCallback objects, not {type(callbacks).__name__}")
    out = list(callbacks)
    for i, cb in enumerate(out):
        if not isinstance(cb, TrainingCallback):
            raise InputError(f"callbacks[{i}]={cb!r} must be a cellseg.callbacks.TrainingCallback, not "
                             f"{type(cb).__name__}")
    return out


def from_functions(progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> list[TrainingCallback]:
    """The callbacks for ``progress(fraction, message)`` and ``should_cancel()`` functions (None: none)."""
    require_callable(progress, "progress")
    require_callable(should_cancel, "should_cancel")
    out: list[TrainingCallback] = []
    if progress is not None:
        out.append(ProgressReporter(progress))
    if should_cancel is not None:
        out.append(CancelWhen(should_cancel))
    return out


class ProgressReporter(TrainingCallback):
    """Calls ``progress(fraction, message)`` after every step ("step 3/50, loss 0.1234") and for each stage."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress

    def on_step(self, step: int, total: int, logs: dict[str, Any]) -> None:
        loss = logs.get("loss")
        message = f"step {step}/{total}" + (f", loss {float(loss):.4f}" if loss is not None else "")
        self.progress(min(step / total, 1.0), message)

    def on_status(self, message: str) -> None:
        self.progress(1.0, message)


class CancelWhen(TrainingCallback):
    """Stops the run when ``should_cancel()`` returns True (polled once after every step)."""

    def __init__(self, should_cancel: CancelFn) -> None:
        self.should_cancel = should_cancel

    def should_stop(self) -> bool:
        return bool(self.should_cancel())


class BestWeights(TrainingCallback):
    """Keeps the weights of the epoch with the lowest validation loss; :meth:`restore` puts them back.

    Like Keras' ``ModelCheckpoint(save_best_only=True)`` (which stardist used): the first epoch is always
    kept, later ones when their ``val_loss`` is lower. One instance spans all phases of a run, so that a
    later phase keeps only weights better than the earlier phases' best.
    """

    def __init__(self) -> None:
        self.model: CellsegModel | None = None
        self.best: float | None = None
        self.weights: list[Any] | None = None

    def on_train_begin(self, model: CellsegModel, total_steps: int) -> None:
        self.model = model

    def on_epoch_end(self, epoch: int, step: int, logs: dict[str, Any]) -> None:
        current = logs.get("val_loss")
        if current is None or self.best is None or current < self.best:
            if current is not None:
                self.best = float(current)
            assert self.model is not None
            self.weights = self.model.keras_model.get_weights()

    def restore(self) -> None:
        """Set the model's weights to the best ones seen (no-op before the first epoch ended)."""
        if self.model is not None and self.weights is not None:
            self.model.keras_model.set_weights(self.weights)


class History(TrainingCallback):
    """One row per epoch: epoch, step (counting earlier trainings of the model), seconds and the losses."""

    def __init__(self, start_step: int = 0) -> None:
        self.start_step = start_step
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def on_train_begin(self, model: CellsegModel, total_steps: int) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, step: int, logs: dict[str, Any]) -> None:
        row = {"epoch": epoch, "step": self.start_step + step, "seconds": round(time.perf_counter() - self.t0, 3)}
        row.update({key: float(logs[key]) for key in HISTORY_KEYS if key in logs})
        self.rows.append(row)


class EvaluateAtSteps(TrainingCallback):
    """Calls ``evaluate(model)`` after each of ``steps`` and keeps one result row per evaluation.

    Each row is ``{"step", "train_seconds", **evaluate(model)}``; ``train_seconds`` counts the time since
    this callback was made, less the time spent evaluating (make it just before :func:`fit`).
    """

    def __init__(self, steps: Iterable[int], evaluate: Callable[[CellsegModel], dict[str, Any]]) -> None:
        require_callable(evaluate, "evaluate")
        self.steps = set(steps)
        self.evaluate = evaluate
        self.results: list[dict[str, Any]] = []
        self.model: CellsegModel | None = None
        self.t0 = time.perf_counter()
        self.eval_seconds = 0.0

    def train_seconds(self) -> float:
        """Seconds since this callback was made, not counting evaluations."""
        return time.perf_counter() - self.t0 - self.eval_seconds

    def on_train_begin(self, model: CellsegModel, total_steps: int) -> None:
        self.model = model

    def on_step(self, step: int, total: int, logs: dict[str, Any]) -> None:
        if step in self.steps and self.model is not None:
            self.steps.discard(step)
            t = time.perf_counter()
            self.results.append({"step": step, "train_seconds": self.train_seconds(), **self.evaluate(self.model)})
            self.eval_seconds += time.perf_counter() - t


class TimeBudget(TrainingCallback):
    """Ends the run once ``seconds`` of training have passed (the best weights so far are kept)."""

    finishes = True

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.t0 = time.perf_counter()
        self.stop_reason = f"time budget of {_duration(self.seconds)} spent"

    def on_train_begin(self, model: CellsegModel, total_steps: int) -> None:
        self.t0 = time.perf_counter()

    def should_stop(self) -> bool:
        return time.perf_counter() - self.t0 >= self.seconds


class EarlyStopping(TrainingCallback):
    """Ends the run when the validation loss has not improved for ``patience`` epochs in a row."""

    finishes = True

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)
        self.best: float | None = None
        self.waited = 0
        self.stop_reason = f"validation loss did not improve for {self.patience} epoch(s)"

    def on_epoch_end(self, epoch: int, step: int, logs: dict[str, Any]) -> None:
        current = logs.get("val_loss")
        if current is None:
            return
        if self.best is None or float(current) < self.best:
            self.best, self.waited = float(current), 0
        else:
            self.waited += 1

    def should_stop(self) -> bool:
        return self.waited >= self.patience


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"

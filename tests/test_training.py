"""Training and retraining: determinism, cancellation, progress, callbacks, provenance and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.callbacks import TrainingCallback
from cellseg.config import TrainConfig
from cellseg.errors import InputError
from cellseg.models import CellsegModel, load_model
from cellseg.training import TrainingData, fit, retrain, split_validation, train


def _short(**kw) -> TrainConfig:
    return TrainConfig(epochs=1, steps_per_epoch=4, optimize_thresholds=False, **kw)


def test_same_seed_same_weights(easy_data, tiny_config):
    (images, masks), _ = easy_data
    a = train(images[:3], masks[:3], tiny_config, _short(seed=3)).model.get_weights()
    b = train(images[:3], masks[:3], tiny_config, _short(seed=3)).model.get_weights()
    c = train(images[:3], masks[:3], tiny_config, _short(seed=4)).model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_progress_and_history(easy_data, tiny_config):
    (images, masks), _ = easy_data
    calls = []
    result = train(images[:4], masks[:4], tiny_config, TrainConfig(epochs=2, steps_per_epoch=3,
                                                                      optimize_thresholds=False),
                   progress=lambda f, m: calls.append((f, m)))
    assert [round(f, 3) for f, _ in calls] == [round(i / 6, 3) for i in range(1, 7)]
    assert "step 6/6" in calls[-1][1]
    assert list(result.history["epoch"]) == [1, 2]
    assert {"loss", "val_loss"} <= set(result.history.columns)
    assert result.steps == 6 and not result.cancelled


def test_cancellation_stops_within_one_step(easy_data, tiny_config):
    (images, masks), _ = easy_data
    polls = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) >= 2

    result = train(images[:3], masks[:3], tiny_config, TrainConfig(epochs=5, steps_per_epoch=10),
                   should_cancel=should_cancel)
    assert result.cancelled
    assert result.steps == 2
    assert result.model.provenance["trainings"][-1]["cancelled"] is True
    # the cancelled model is still usable and saveable
    assert load_model(result.model.to_bytes()).steps_trained == 2


def test_retrain_continues_from_weights_and_keeps_the_original(tiny_model_bytes, easy_data):
    (images, masks), _ = easy_data
    original = load_model(tiny_model_bytes)
    before = original.get_weights()
    result = retrain(original, images[:2], masks[:2], _short(learning_rate=1e-3), names=["a", "b"])
    assert all(np.array_equal(x, y) for x, y in zip(before, original.get_weights()))
    after = result.model.get_weights()
    kept = result.kept_start  # the starting weights scored higher on validation
    assert kept == ("were kept" in result.stop_reason)
    assert (result.validation_ap50 < result.start_validation_ap50 + 0.05) == kept
    assert all(np.array_equal(x, y) for x, y in zip(before, after)) == kept
    prov = result.model.provenance
    assert prov["steps_trained"] == original.steps_trained + 4
    assert prov["retrained_from"][-1]["fingerprint"] == original.fingerprint()
    assert prov["trainings"][-1]["kind"] == "retrain"
    assert "held-back 64x64 patch of 2 of the images" in prov["trainings"][-1]["validation"]


def test_retraining_that_makes_the_model_worse_keeps_the_start(tiny_model_bytes, easy_data):
    (images, masks), _ = easy_data
    original = load_model(tiny_model_bytes)
    result = retrain(original, images[:4], masks[:4], TrainConfig(epochs=2, steps_per_epoch=5, learning_rate=0.5,
                                                                  optimize_thresholds=False))
    assert result.kept_start and "starting weights were kept: retraining did not beat them" in result.stop_reason
    assert all(np.array_equal(x, y) for x, y in zip(original.get_weights(), result.model.get_weights()))
    assert result.model.thresholds == original.thresholds and result.validation_ap50 > 0.3


def test_split_validation():
    assert split_validation(2, 0.15, 0) == ([0, 1], [0, 1])
    tr, va = split_validation(20, 0.15, 0)
    assert len(va) == 3 and not set(tr) & set(va) and len(tr) + len(va) == 20


def test_bad_training_input(easy_data, tiny_config):
    (images, masks), _ = easy_data
    with pytest.raises(InputError, match="b.tif: mask shape"):
        train([images[0], images[1]], [masks[0], masks[1][:50]], tiny_config, _short(), names=["a.tif", "b.tif"])
    with pytest.raises(InputError, match="smaller than the patch size"):
        train([images[0][:40, :40]], [masks[0][:40, :40]], tiny_config, _short(), names=["small.tif"])
    with pytest.raises(InputError, match="not integer"):
        train([images[0]], [masks[0].astype(np.float32)], tiny_config, _short())
    binary = (masks[0] > 0).astype(np.uint8)
    with pytest.raises(InputError, match="label_components"):
        train([images[0]], [binary], tiny_config, _short())
    with pytest.raises(InputError, match=r"two.png: image has 2 channel\(s\) but the model expects 1"):
        train([np.stack([images[0]] * 2, -1)], [masks[0]], tiny_config, _short(), names=["two.png"])
    nan = images[0].astype(np.float32)
    nan[0, 0] = np.inf
    with pytest.raises(InputError):
        train([nan], [masks[0]], tiny_config, _short())
    with pytest.raises(InputError, match="epochs"):
        train(images[:1], masks[:1], tiny_config, TrainConfig(epochs=0))
    with pytest.raises(InputError, match="no training images"):
        train([], [], tiny_config, _short())


class Recorder(TrainingCallback):
    """Records the hooks fit calls, the weights after each epoch, and stops after ``stop_after`` steps."""

    def __init__(self, stop_after: int) -> None:
        self.events: list[tuple] = []
        self.weights: list[tuple[float, list]] = []
        self.stop_after = stop_after
        self.steps = 0

    def on_train_begin(self, model, total_steps):
        self.model = model
        self.events.append(("begin", total_steps))

    def on_step(self, step, total, logs):
        self.steps = step
        self.events.append(("step", step, total))

    def on_epoch_end(self, epoch, step, logs):
        self.events.append(("epoch", epoch, step))
        self.weights.append((logs["val_loss"], self.model.keras_model.get_weights()))

    def should_stop(self):
        return self.steps >= self.stop_after


def test_fit_calls_the_hooks_and_keeps_the_best_weights(easy_data, tiny_config):
    (images, masks), _ = easy_data
    model = CellsegModel.create(tiny_config, seed=0)
    rec = Recorder(stop_after=5)
    data = TrainingData(images[:3], masks[:3], names=["a", "b", "c"], description="three easy images")
    result = fit(model, data, TrainConfig(epochs=3, steps_per_epoch=2, optimize_thresholds=False), [rec])
    assert result.model is model and result.cancelled and result.steps == 5
    assert rec.events == [("begin", 6), ("step", 1, 6), ("step", 2, 6), ("epoch", 1, 2), ("step", 3, 6),
                          ("step", 4, 6), ("epoch", 2, 4), ("step", 5, 6), ("epoch", 3, 5)]
    losses = [loss for loss, _ in rec.weights]
    best = rec.weights[losses.index(min(losses))][1]
    assert all(np.array_equal(x, y) for x, y in zip(best, model.keras_model.get_weights()))
    assert model.provenance["trainings"][-1]["data"] == "three easy images"
    assert list(result.history["epoch"]) == [1, 2, 3] and list(result.history["step"]) == [2, 4, 5]


def test_fit_arguments(untrained_tiny_model, easy_data):
    (images, masks), _ = easy_data
    model = untrained_tiny_model.copy()
    data = TrainingData(images[:1], masks[:1])
    with pytest.raises(InputError, match="data must be a cellseg.trainingdata.TrainingData"):
        fit(model, images[:1])
    with pytest.raises(InputError, match=r"callbacks\[0\]=3 must be a cellseg.callbacks.TrainingCallback"):
        fit(model, data, callbacks=[3])
    with pytest.raises(InputError, match="train_config must be a TrainConfig"):
        fit(model, data, 3)
    with pytest.raises(InputError, match="2 images but 1 masks"):
        TrainingData(images[:2], masks[:1])
    with pytest.raises(InputError, match=r"mix_data must be a pair \(images, masks\)"):
        TrainingData(images[:1], masks[:1], mix_data=images[:1])
    with pytest.raises(InputError, match="progress=3 must be a function"):
        retrain(model, images[:1], masks[:1], progress=3)


def test_time_budget_ends_training_as_done_with_the_best_weights(easy_data, tiny_config):
    (images, masks), _ = easy_data
    result = train(images[:3], masks[:3], tiny_config, TrainConfig(epochs=50, steps_per_epoch=10, minutes=1e-4))
    assert 1 <= result.steps < 500 and not result.cancelled  # a finished run, not a cancelled one
    assert result.stop_reason.startswith("time budget of") and "spent" in result.stop_reason
    record = result.model.provenance["trainings"][-1]
    assert record["stop_reason"] == result.stop_reason and record["cancelled"] is False
    assert result.model.thresholds != {"prob": 0.5, "nms": 0.4}  # thresholds optimised as after a full run


def test_early_stopping_counts_epochs_without_improvement():
    from cellseg.callbacks import EarlyStopping

    stop = EarlyStopping(2)
    for epoch, val in enumerate([1.0, 0.8, 0.9, 0.85], start=1):
        stop.on_epoch_end(epoch, epoch * 10, {"val_loss": val})
        assert stop.should_stop() is (epoch == 4), epoch
    stop.on_epoch_end(5, 50, {"val_loss": 0.5})  # an improvement resets the count
    assert not stop.should_stop() and stop.finishes and "2 epoch" in stop.stop_reason


def test_early_stopping_in_fit(easy_data, tiny_config):
    (images, masks), _ = easy_data
    config = TrainConfig(epochs=30, steps_per_epoch=2, patience=1, learning_rate=0.5, optimize_thresholds=False)
    result = train(images[:3], masks[:3], tiny_config, config)
    assert not result.cancelled
    if result.steps < 60:  # stopped early: said why, at an epoch end
        assert result.stop_reason.startswith("validation loss did not improve") and result.steps % 2 == 0
    else:
        assert result.stop_reason == "all steps done"
    with pytest.raises(InputError, match="minutes=0"):
        TrainConfig(minutes=0)
    with pytest.raises(InputError, match="patience=0"):
        TrainConfig(patience=0)

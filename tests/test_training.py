"""Training and retraining: determinism, cancellation, progress, provenance and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.errors import InputError
from cellseg.models import load_model
from cellseg.training import TrainConfig, retrain, split_validation, train


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
    assert not all(np.array_equal(x, y) for x, y in zip(before, after))
    prov = result.model.provenance
    assert prov["steps_trained"] == original.steps_trained + 4
    assert prov["retrained_from"][-1]["fingerprint"] == original.fingerprint()
    assert prov["trainings"][-1]["kind"] == "retrain"
    assert "fewer than 3" in prov["trainings"][-1]["validation"]


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
    with pytest.raises(InputError, match="channel"):
        train([np.stack([images[0]] * 3, -1)], [masks[0]], tiny_config, _short(), names=["rgb.png"])
    nan = images[0].astype(np.float32)
    nan[0, 0] = np.inf
    with pytest.raises(InputError):
        train([nan], [masks[0]], tiny_config, _short())
    with pytest.raises(InputError, match="epochs"):
        train(images[:1], masks[:1], tiny_config, TrainConfig(epochs=0))
    with pytest.raises(InputError, match="no training images"):
        train([], [], tiny_config, _short())

"""Retraining strategies: freezing really freezes, slower encoder, head re-initialisation, data mixing."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg import simulate
from cellseg.config import ModelConfig, TrainConfig
from cellseg.models import CellsegModel
from cellseg.training import mix_training_data, retrain


@pytest.fixture(scope="module")
def setup():
    images, masks = simulate.simulate_dataset(3, size=64, preset="low_noise", seed=1)
    mc = ModelConfig(n_rays=8, unet_n_depth=2, unet_n_filter_base=4, patch_size=(32, 32), batch_size=2)
    return CellsegModel.create(mc, seed=0), images, masks


def _split(model, new):
    """Encoder and other weights of ``model`` and ``new`` (same architecture; layers matched by index)."""
    enc = {id(la) for la in model.encoder_layers()}
    out: dict[str, list] = {"enc_old": [], "enc_new": [], "dec_old": [], "dec_new": []}
    for a, b in zip(model.keras_model.layers, new.keras_model.layers):
        key = "enc" if id(a) in enc else "dec"
        out[f"{key}_old"] += a.get_weights()
        out[f"{key}_new"] += b.get_weights()
    return out


def _changed(a, b):
    return [not np.array_equal(x, y) for x, y in zip(a, b)]


def _tc(**kw) -> TrainConfig:
    return TrainConfig(epochs=2, steps_per_epoch=2, optimize_thresholds=False, validation_fraction=0, keep_start=False,
                       **kw)


def test_freeze_encoder_keeps_encoder_weights(setup):
    model, images, masks = setup
    w = _split(model, retrain(model, images, masks, _tc(freeze_encoder=True)).model)
    assert w["enc_old"] and not any(_changed(w["enc_old"], w["enc_new"]))
    assert all(_changed(w["dec_old"], w["dec_new"]))


def test_freeze_first_epochs_then_unfreeze(setup, monkeypatch):
    model, images, masks = setup
    # keep the last weights (not the best-val-loss ones, which may be phase 1's after 2 tiny epochs)
    monkeypatch.setattr("cellseg.callbacks.BestWeights.restore", lambda self: None)
    res = retrain(model, images, masks, _tc(freeze_encoder_epochs=1))
    assert res.steps == 4 and list(res.history["epoch"]) == [1, 2]
    w = _split(model, res.model)
    assert any(_changed(w["enc_old"], w["enc_new"]))  # trained in the second phase


def test_encoder_lr_factor_zero_acts_as_freeze(setup):
    model, images, masks = setup
    w = _split(model, retrain(model, images, masks, _tc(encoder_lr_factor=0.0, reduce_lr=False)).model)
    assert not any(_changed(w["enc_old"], w["enc_new"]))
    assert any(_changed(w["dec_old"], w["dec_new"]))


def test_reinit_heads_and_mix_data(setup):
    model, images, masks = setup
    extra_images, extra_masks = simulate.simulate_dataset(4, size=64, preset="high_noise", seed=2)
    res = retrain(model, images, masks, _tc(reinit_heads=True, mix_fraction=0.5),
                  mix_data=(extra_images, extra_masks))
    rec = res.model.provenance["trainings"][-1]
    assert rec["n_images"] == 3 and "pretraining-domain" in rec["mixed_in"]
    X, _, note = mix_training_data([1, 2], [1, 2], [3] * 8, [3] * 8, 0.25)
    assert X.count(3) / len(X) == pytest.approx(0.25, abs=0.05), note

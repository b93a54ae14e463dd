"""Backbones build, train a few steps, save and reload with identical predictions; ImageNet weights file."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg import simulate
from cellseg.config import ModelConfig, TrainConfig
from cellseg.errors import ModelLoadError
from cellseg.models import CellsegModel, load_model
from cellseg.training import train


def _tiny(backbone: str, **kw) -> ModelConfig:
    return ModelConfig(backbone=backbone, n_rays=8, unet_n_depth=2, unet_n_filter_base=4, patch_size=(32, 32),
                       batch_size=2, **kw)


@pytest.fixture(scope="module")
def data():
    return simulate.simulate_dataset(2, size=64, preset="low_noise", seed=0)


@pytest.mark.parametrize("backbone", ["resunet", "resnet50"])
def test_backbone_trains_saves_reloads(backbone, data, tmp_path):
    images, masks = data
    tc = TrainConfig(epochs=1, steps_per_epoch=2, seed=0, optimize_thresholds=False)
    result = train(images, masks, _tiny(backbone), tc)
    model = result.model
    assert result.steps == 2 and type(model.stardist).__name__ != "StarDist2D"
    assert model.encoder_layers() and len(model.encoder_layers()) < len(model.keras_model.layers)
    x = np.random.default_rng(0).random((1, 64, 64, 1)).astype("float32")
    before = model.keras_model.predict(x, verbose=0)
    # resnet50 builds a whole ResNet50 per load: check the zip path only (it covers the folder path)
    for target in ((tmp_path / "m", tmp_path / "m.zip") if backbone == "resunet" else (tmp_path / "m.zip",)):
        model.save(target)
        again = load_model(target)
        assert again.config.backbone == backbone
        assert type(again.stardist) is type(model.stardist)
        after = again.keras_model.predict(x, verbose=0)
        assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_same_seed_same_weights():
    a = CellsegModel.create(_tiny("resunet"), seed=3)
    b = CellsegModel.create(_tiny("resunet"), seed=3)
    assert a.fingerprint() == b.fingerprint()


def test_missing_imagenet_file_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSEG_IMAGENET_WEIGHTS", str(tmp_path / "nothing.h5"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    mc = _tiny("resnet50+imagenet")  # the CLI's spelling of backbone_options={"imagenet": True}
    assert mc.backbone == "resnet50" and mc.backbone_options == {"imagenet": True}
    with pytest.raises(ModelLoadError, match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5") as err:
        CellsegModel.create(mc)
    assert str(tmp_path / "keras" / "models") in str(err.value) and "CELLSEG_IMAGENET_WEIGHTS" in str(err.value)


def test_imagenet_weights_are_loaded_from_local_file(tmp_path, monkeypatch):
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from cellseg.backbones import IMAGENET_FILE

    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / IMAGENET_FILE
    with h5py.File(path, "w") as f:  # the layout of keras-applications' file
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    monkeypatch.setenv("CELLSEG_IMAGENET_WEIGHTS", str(tmp_path))
    model = CellsegModel.create(_tiny("resnet50", backbone_options={"imagenet": True}), seed=5)
    for name in ("conv1_conv", "conv2_block1_1_conv", "conv3_block4_3_bn"):
        got, want = model.keras_model.get_layer(name).get_weights(), ref.get_layer(name).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(got, want))

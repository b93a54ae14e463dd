"""Models, bundles and prediction: creation, save/load round trips, stardist compatibility, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from cellseg import metrics
from cellseg.bundle import BUNDLE_FILES, BundleMeta, pretrained_meta, pretrained_names
from cellseg.config import ModelConfig
from cellseg.errors import InputError, ModelLoadError
from cellseg.models import CellsegModel, load_model
from cellseg.prediction import predict
from cellseg.segment import OBJECT_COLUMNS


def test_model_config_validation_names_the_parameter():
    with pytest.raises(InputError, match="patch_size"):
        ModelConfig(patch_size=(100, 100))
    with pytest.raises(InputError, match="n_rays"):
        ModelConfig(n_rays=2)
    with pytest.raises(InputError, match="backbone"):
        ModelConfig(backbone="vgg")
    assert ModelConfig(unet_n_depth=2, grid=(2, 2)).divisor == 8


def test_trained_model_beats_untrained(tiny_trained, tiny_config, easy_data):
    _, (images, masks) = easy_data
    untrained = CellsegModel.create(tiny_config, seed=0)

    def f1(model):
        preds = [predict(model, im)[0] for im in images]
        _, summary = metrics.score_dataset(masks, preds)
        return float(summary.set_index("iou_threshold").loc[0.5, "f1"])

    trained_f1, untrained_f1 = f1(tiny_trained.model), f1(untrained)
    assert trained_f1 > 0.5, trained_f1
    assert trained_f1 > untrained_f1 + 0.3, (trained_f1, untrained_f1)


def test_predict_objects_table(tiny_model_bytes, easy_data):
    model = load_model(tiny_model_bytes)
    _, (images, _) = easy_data
    labels, objects = predict(model, images[0])
    assert labels.shape == images[0].shape and labels.dtype == np.int32
    assert list(objects.columns) == OBJECT_COLUMNS
    present = set(np.unique(labels)) - {0}
    assert set(objects["label"]) == present
    row = objects.iloc[0]
    assert row["area"] == int((labels == row["label"]).sum())
    assert 0 <= row["probability"] <= 1
    assert row["polygon"].startswith("POLYGON ((")
    ys, xs = np.nonzero(labels == row["label"])
    assert abs(row["centroid_y"] - ys.mean()) < 1e-6 and abs(row["centroid_x"] - xs.mean()) < 1e-6
    # explicit thresholds: a prob threshold of 1 finds nothing
    labels_none, objects_none = predict(model, images[0], prob_thresh=1.0)
    assert labels_none.max() == 0 and len(objects_none) == 0
    # n_tiles gives (nearly) the same segmentation
    tiled, _ = predict(model, images[0], n_tiles=(2, 2))
    _, summary = metrics.score_dataset([labels], [tiled])
    assert metrics.ap_at(summary, 0.5) > 0.9


def test_bytes_round_trip_is_bit_exact_and_predicts_the_same(tiny_model_bytes, easy_data):
    _, (images, _) = easy_data
    model = load_model(tiny_model_bytes)
    assert model.to_bytes() == tiny_model_bytes
    with zipfile.ZipFile(__import__("io").BytesIO(tiny_model_bytes)) as zf:
        assert zf.namelist() == list(BUNDLE_FILES)
        meta = json.loads(zf.read("cellseg.json"))
    assert meta["provenance"]["steps_trained"] == 160
    assert meta["provenance"]["trainings"][0]["history"]
    again = load_model(model.to_bytes())
    a, b = predict(model, images[1])[0], predict(again, images[1])[0]
    np.testing.assert_array_equal(a, b)
    assert again.thresholds == model.thresholds
    # changing thresholds changes the bytes
    again.thresholds = {"prob": 0.9, "nms": 0.3}
    assert again.to_bytes() != tiny_model_bytes


def test_to_bytes_follows_every_change_without_being_told(untrained_tiny_model):
    """The bytes are kept while the model is unchanged and made again after any change (no mark_changed)."""
    model = untrained_tiny_model.copy()
    first = model.to_bytes()
    assert model.to_bytes() is first  # unchanged: not written again
    model.provenance["name"] = "renamed"  # changed in place, as training does
    renamed = model.to_bytes()
    assert renamed != first and BundleMeta.read(renamed).name == "renamed"
    model.geometry["receptive_field"] = 7  # as tiling.receptive_field does
    assert BundleMeta.read(model.to_bytes()).geometry == {"receptive_field": 7}
    weights = model.get_weights()
    model.keras_model.set_weights([w + 1 for w in weights])
    changed = model.to_bytes()
    np.testing.assert_array_equal(load_model(changed).get_weights()[0], weights[0] + 1)


def test_folder_save_is_loadable_by_plain_stardist(tmp_path, tiny_model_bytes, easy_data):
    from csbdeep.utils import normalize
    from stardist.models import StarDist2D

    _, (images, _) = easy_data
    model = load_model(tiny_model_bytes)
    out = model.save(tmp_path / "mymodel")
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLE_FILES)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    sd = StarDist2D(None, name="mymodel", basedir=str(tmp_path))
    ours, _ = predict(model, images[2])
    theirs, _ = sd.predict_instances(normalize(images[2], 1, 99.8, axis=(0, 1)))
    np.testing.assert_array_equal(ours, theirs)
    # and our loader reads the folder (and a zip of it) back
    np.testing.assert_array_equal(predict(load_model(out), images[2])[0], ours)
    model.save(tmp_path / "m.zip")
    np.testing.assert_array_equal(predict(load_model(tmp_path / "m.zip"), images[2])[0], ours)


def test_save_overwrites_only_a_model_and_only_when_asked(tmp_path, tiny_model_bytes):
    model = load_model(tiny_model_bytes)
    model.save(tmp_path / "m")
    with pytest.raises(InputError, match="already holds a model.*overwrite"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    (tmp_path / "m" / "notes.txt").write_text("mine")  # a model folder with other files is not replaced
    with pytest.raises(InputError, match="notes.txt"):
        model.save(tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_bad_model_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(tmp_path)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="not a model zip"):
        load_model(tmp_path / "junk.zip")
    with pytest.raises(ModelLoadError, match="not a valid model zip"):
        load_model(b"garbage")
    with pytest.raises(ModelLoadError, match="not found.*names"):
        load_model("no_such_model_name")


def test_stardist_pretrained_offline_gives_clear_error(monkeypatch):
    from stardist.models import StarDist2D

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(StarDist2D, "from_pretrained", classmethod(lambda cls, name: offline()))
    with pytest.raises(ModelLoadError, match="offline.*folder"):
        load_model("2D_versatile_fluo")
    assert "2D_versatile_fluo" in pretrained_names()


def test_predict_bad_input(tiny_model_bytes):
    model = load_model(tiny_model_bytes)
    with pytest.raises(InputError, match=r"two.tif: image has 2 channel\(s\) but the model expects 1"):
        predict(model, np.zeros((64, 64, 2), np.float32), name="two.tif")
    bad = np.ones((64, 64), np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="nan.tif"):
        predict(model, bad, name="nan.tif")
    with pytest.raises(InputError, match="prob_thresh"):
        predict(model, np.ones((64, 64)), prob_thresh=2)


def test_bundle_meta_reads_folder_zip_and_bytes_as_the_model_has_it(untrained_tiny_model, tmp_path):
    model = untrained_tiny_model.copy()
    model.geometry.update(receptive_field=12, fingerprint=model.fingerprint())
    data = model.to_bytes()
    (tmp_path / "m.zip").write_bytes(data)
    zipfile.ZipFile(tmp_path / "m.zip").extractall(tmp_path / "folder")
    for source in (data, tmp_path / "m.zip", tmp_path / "folder"):
        assert BundleMeta.read(source) == model.meta()
        assert BundleMeta.read(source).summary() == model.summary()
    with pytest.raises(ModelLoadError, match="not a valid model zip"):
        BundleMeta.read(b"not a zip")
    with pytest.raises(ModelLoadError, match="no such folder or file"):
        BundleMeta.read(tmp_path / "missing")


def test_bundle_is_read_without_tensorflow(tmp_path, untrained_tiny_model):
    (tmp_path / "m.zip").write_bytes(untrained_tiny_model.to_bytes())
    code = (f"import sys; from cellseg.bundle import BundleMeta, pretrained_meta, pretrained_names\n"
            f"assert BundleMeta.read({str(tmp_path / 'm.zip')!r}).model_config.n_rays == 8\n"
            "assert [pretrained_meta(n).summary() for n in pretrained_names()]\n"
            "bad = [m for m in ('tensorflow', 'keras', 'stardist') if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_pretrained_meta_without_download():
    assert "dsb2018_simmix" in pretrained_names() and "2D_versatile_fluo" in pretrained_names()
    assert pretrained_meta("dsb2018_simmix").steps_trained > 0  # read from the shipped zip
    assert pretrained_meta("2D_versatile_fluo").model_config.n_channel_in == 1
    he = pretrained_meta("2D_versatile_he")
    assert he.model_config.n_channel_in == 3 and he.provenance["imported_from"] == "stardist pretrained 2D_versatile_he"
    with pytest.raises(ModelLoadError, match="unknown pretrained model 'nope'"):
        pretrained_meta("nope")


def test_summary_is_json_able(tiny_model_bytes):
    s = load_model(tiny_model_bytes).summary()
    json.dumps(s)
    assert s["backbone"] == "unet" and s["n_rays"] == 16 and s["steps_trained"] == 160
    assert set(s["thresholds"]) == {"prob", "nms"}

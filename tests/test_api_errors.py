"""Issue 12, model bundles and the API: every bad bundle, zip or argument is a one-line CellsegError naming
the file, key or parameter; no temporary folder is left behind; a killed tiled prediction leaves nothing.

The table of these messages is in docs/errors.md ("Model bundles and API").
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg import bundle as cbundle
from cellseg import models
from cellseg.config import ModelConfig
from cellseg.errors import CellsegError, InputError, ModelLoadError
from cellseg.models import CellsegModel, load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tiny_copy, tmp_path_factory) -> Path:
    """The tiny model's bundle folder (config.json, thresholds.json, weights_best.h5, cellseg.json)."""
    path = tmp_path_factory.mktemp("bundle") / "m"
    tiny_copy.save(path)
    return path


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    """Weights of a model with another architecture (resunet, 16 rays)."""
    other = CellsegModel.create(ModelConfig(backbone="resunet", n_rays=16, grid=(1, 1), unet_n_depth=1,
                                            unet_n_filter_base=4, patch_size=(32, 32)), seed=0)
    path = tmp_path_factory.mktemp("other") / "o"
    other.save(path)
    return path / "weights_best.h5"


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch) -> Path:
    """A temp folder of this test alone (other processes may use the real one): must be empty at the end."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == [], "temporary files left behind"


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def _zip_folder(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, prefix + f.name)
    return dest


def _edit(name: str, **changes):
    def apply(folder: Path) -> None:
        obj = json.loads((folder / name).read_text())
        for key, value in changes.items():
            if key.startswith("mc_"):
                obj["model_config"][key[3:]] = value
            else:
                obj[key] = value
        (folder / name).write_text(json.dumps(obj))
    return apply


def _write(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


# (id, how to corrupt a copy of the bundle, regex the message must match)
MALFORMED = [
    ("config-invalid-json", _write("config.json", "{not json"), r"config\.json is not valid JSON"),
    ("config-list", _write("config.json", "[1, 2]"), r"config\.json must hold a JSON object.*not a list"),
    ("config-empty", _write("config.json", "{}"), r"config\.json: n_rays, grid, n_channel_in missing"),
    ("config-n_rays-str", _edit("config.json", n_rays="32"), r"config\.json: n_rays='32' must be an integer"),
    ("config-grid-str", _edit("config.json", grid="2"), r"config\.json: grid='2' must be an integer or a pair"),
    ("config-n_channel_in-neg", _edit("config.json", n_channel_in=-1), r"config\.json: n_channel_in=-1 must be >= 1"),
    ("config-3d", _edit("config.json", n_dim=3), r"config\.json: n_dim=3: not a 2D StarDist model"),
    ("config-unbuildable", _edit("config.json", unet_kernel_size="x"),
     r"config\.json does not describe a network stardist can build"),
    ("meta-invalid-json", _write("cellseg.json", "{oops"), r"cellseg\.json is not valid JSON"),
    ("meta-list", _write("cellseg.json", "[]"), r"cellseg\.json must hold a JSON object.*not a list"),
    ("meta-empty", _write("cellseg.json", "{}"), r"cellseg\.json has no model_config"),
    ("meta-format", _edit("cellseg.json", format="other"), r"cellseg\.json: format='other'"),
    ("meta-newer", _edit("cellseg.json", format_version=3), r"cellseg\.json: format_version 3 .*newer cellseg"),
    ("meta-model_config-list", _edit("cellseg.json", model_config=[1]),
     r"cellseg\.json: model_config: model config must be a dict"),
    ("meta-n_rays-str", _edit("cellseg.json", mc_n_rays="32"), r"cellseg\.json: model_config: n_rays='32' must be an integer"),
    ("meta-grid-str", _edit("cellseg.json", mc_grid="2"), r"cellseg\.json: model_config: grid='2'"),
    ("meta-n_channel_in-neg", _edit("cellseg.json", mc_n_channel_in=-1),
     r"cellseg\.json: model_config: n_channel_in=-1 must be between 1 and 16"),
    ("meta-unknown-key", _edit("cellseg.json", mc_foo=1), r"cellseg\.json: model_config: unknown model parameter.*foo"),
    ("meta-backbone-unknown", _edit("cellseg.json", mc_backbone="vgg"), r"cellseg\.json: model_config: backbone='vgg'"),
    ("meta-options-list", _edit("cellseg.json", mc_backbone_options=[1]), r"cellseg\.json: model_config: backbone_options"),
    ("meta-provenance-list", _edit("cellseg.json", provenance=[1]), r"cellseg\.json: provenance must be a JSON object"),
    ("meta-steps-str", _edit("cellseg.json", provenance={"steps_trained": "many"}),
     r"cellseg\.json: provenance\.steps_trained='many'"),
    ("meta-geometry-list", _edit("cellseg.json", geometry=[1]), r"cellseg\.json: geometry must be a JSON object"),
    ("thresholds-invalid-json", _write("thresholds.json", "{x"), r"thresholds\.json is not valid JSON"),
    ("thresholds-list", _write("thresholds.json", "[0.5]"), r"thresholds\.json must hold a JSON object"),
    ("thresholds-empty", _write("thresholds.json", "{}"), r"thresholds\.json must be a dict with keys 'prob' and 'nms'"),
    ("thresholds-str", _write("thresholds.json", '{"prob": "a", "nms": 0.3}'), r"thresholds\.json\['prob'\]='a'"),
    ("thresholds-range", _write("thresholds.json", '{"prob": 5, "nms": 0.3}'), r"thresholds\.json\['prob'\]=5\.0"),
    ("weights-missing", lambda f: (f / "weights_best.h5").unlink(), r"has no weights file"),
    ("weights-garbage", _write("weights_best.h5", "garbage"), r"weights_best\.h5 is not an HDF5 weights file"),
    ("weights-empty", _write("weights_best.h5", ""), r"weights_best\.h5 is not an HDF5 weights file"),
    ("weights-of-another-model", None, r"the weights in weights_best\.h5 do not fit the network described by "
                                       r"config\.json and cellseg\.json"),
    ("config-missing", lambda f: (f / "config.json").unlink(), r"(has no config\.json|no config\.json found)"),
]


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize(("case", "corrupt", "pattern"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_bundle_is_one_line_error(case, corrupt, pattern, as_zip, bundle, other_weights, tmp_path,
                                            private_tmp):
    folder = tmp_path / "bad"
    shutil.copytree(bundle, folder)
    if corrupt is None:
        shutil.copy(other_weights, folder / "weights_best.h5")
    else:
        corrupt(folder)
    source = _zip_folder(folder, tmp_path / "bad.zip") if as_zip else folder
    with pytest.raises(ModelLoadError, match=pattern) as err:
        load_model(source)
    message = _one_line(err)
    assert str(source) in message  # names the bundle


def test_malformed_bundle_from_bytes_and_cli(bundle, tmp_path, private_tmp, capsys):
    """A zip whose config.json is {} (issue 12), as zip bytes and through `cellseg info`: one line, exit 2."""
    from cellseg.cli import main

    folder = tmp_path / "bad"
    shutil.copytree(bundle, folder)
    (folder / "config.json").write_text("{}")
    data = _zip_folder(folder, tmp_path / "bad.zip").read_bytes()
    with pytest.raises(ModelLoadError, match=r"model zip \(bytes\): config\.json: n_rays, grid, n_channel_in missing"):
        load_model(data)
    assert main(["info", str(tmp_path / "bad.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cellseg: error: model zip") and "config.json" in err[0], err


@pytest.mark.parametrize(("key", "value"), [("n_rays", 32), ("grid", [2, 2]), ("grid", 2), ("unet_n_depth", 2),
                                            ("unet_n_filter_base", 8), ("n_channel_in", 3)])
@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_cellseg_json_contradicting_config_json_is_refused(key, value, as_zip, bundle, tmp_path, private_tmp,
                                                           capsys):
    """Before: loaded with cellseg.json's architecture (wrong `info`, tiled predict crashed)."""
    from cellseg.cli import main

    folder = tmp_path / "bad"
    shutil.copytree(bundle, folder)
    _edit("cellseg.json", **{f"mc_{key}": value})(folder)
    source = _zip_folder(folder, tmp_path / "bad.zip") if as_zip else folder
    with pytest.raises(ModelLoadError, match=rf"cellseg\.json and config\.json disagree on {key} ") as err:
        load_model(source)
    _one_line(err)
    assert main(["info", str(source)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and f"disagree on {key}" in err_lines[0], err_lines


def test_good_bundles_still_load(bundle, tmp_path, private_tmp):
    """Controls: the bundle as folder, zip, nested zip and bytes; a stardist folder without cellseg.json."""
    for source in (bundle, _zip_folder(bundle, tmp_path / "m.zip"),
                   _zip_folder(bundle, tmp_path / "nested.zip", prefix="inner/").read_bytes()):
        model = load_model(source)
        assert model.config.n_rays == 8 and model.thresholds == {"prob": 0.5, "nms": 0.4}
        del model
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    (plain / "cellseg.json").unlink()
    model = load_model(plain)
    assert model.config.n_rays == 8 and model.provenance["name"] == "plain"
    del model
    import gc

    gc.collect()  # the models' own folders go with them


# -- zip resource limits --------------------------------------------------------------------------

def _bundle_zip(bundle: Path, extra: dict[str, bytes | int] | None = None, prefix: str = "") -> bytes:
    """The bundle as zip bytes plus ``extra`` members (an int: that many zero bytes, written in chunks)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(bundle.iterdir()):
            zf.write(f, prefix + f.name)
        for name, content in (extra or {}).items():
            if isinstance(content, int):
                with zf.open(name, "w") as out:
                    chunk = bytes(1 << 20)
                    for start in range(0, content, len(chunk)):
                        out.write(chunk[: min(len(chunk), content - start)])
            else:
                zf.writestr(name, content)
    return buf.getvalue()


def _declare_size(data: bytes, member: str, size: int) -> bytes:
    """Zip bytes whose central directory says ``member`` unpacks to ``size`` bytes (a lying header)."""
    raw = bytearray(data)
    name = member.encode()
    pos = 0
    while (pos := raw.find(b"PK\x01\x02", pos)) != -1:
        name_len = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46: pos + 46 + name_len] == name:
            struct.pack_into("<I", raw, pos + 24, size)
            return bytes(raw)
        pos += 4
    raise AssertionError(member)


def test_zip_bomb_is_refused_before_unpacking(bundle, tmp_path, private_tmp):
    """64 MiB of zeros pack into ~64 kB: refused by the compression ratio; nothing is written at all."""
    data = _bundle_zip(bundle, {"padding.bin": 64 << 20})
    assert len(data) < 1 << 20
    path = tmp_path / "bomb.zip"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match=r"bomb\.zip would unpack to \d+ bytes, more than 50 times its own size") as err:
        load_model(path)
    _one_line(err)


def test_zip_declaring_gigabytes_is_refused(bundle, private_tmp):
    """A 2 MB-class zip that says it holds 3 GiB (issue 12: a 2 MB zip wrote 2 GiB to /tmp)."""
    data = _declare_size(_bundle_zip(bundle), "weights_best.h5", 3 << 30)
    with pytest.raises(ModelLoadError, match=r"would unpack to \d+ bytes, more than") as err:
        load_model(data)
    _one_line(err)


def test_zip_entry_lying_about_its_size_writes_no_more(bundle, private_tmp):
    data = _declare_size(_bundle_zip(bundle), "weights_best.h5", 100)
    with pytest.raises(ModelLoadError, match=r"weights_best\.h5") as err:
        load_model(data)
    _one_line(err)


def test_zip_with_too_many_entries_is_refused(bundle, private_tmp):
    data = _bundle_zip(bundle, {f"logs/{i}.txt": b"" for i in range(cbundle.MAX_ZIP_ENTRIES)})
    with pytest.raises(ModelLoadError, match=rf"has {cbundle.MAX_ZIP_ENTRIES + 4} entries, more than the "
                                             rf"{cbundle.MAX_ZIP_ENTRIES}") as err:
        load_model(data)
    _one_line(err)


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "inner/../../evil.txt", "C:/evil.txt",
                                    "..\\evil.txt"])
def test_zip_with_unsafe_paths_is_refused(member, bundle, tmp_path, private_tmp):
    with pytest.raises(ModelLoadError, match=r"unsafe path .*evil\.txt") as err:
        load_model(_bundle_zip(bundle, {member: b"x"}))
    _one_line(err)
    assert not list(tmp_path.parent.glob("evil.txt"))


def test_zip_with_two_models_is_refused(bundle, private_tmp):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for prefix in ("a/", "b/"):
            for f in sorted(bundle.iterdir()):
                zf.write(f, prefix + f.name)
    with pytest.raises(ModelLoadError, match=r"holds 2 config\.json files \(a/config\.json, b/config\.json\)"):
        load_model(buf.getvalue())


def test_failed_create_leaves_no_temporary_folder(tmp_path, monkeypatch, private_tmp):
    """The model folder made before the network is built is removed when building fails."""
    monkeypatch.setenv("CELLSEG_IMAGENET_WEIGHTS", str(tmp_path / "nowhere.h5"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    config = ModelConfig(backbone="resnet50+imagenet", n_rays=8, grid=(2, 2), unet_n_depth=1,
                         unet_n_filter_base=4, patch_size=(32, 32))
    with pytest.raises(ModelLoadError, match="ImageNet weights"):
        CellsegModel.create(config, seed=0)


# -- API arguments --------------------------------------------------------------------------------

def _api_calls():
    """(id, call(model, image), regex): each raised a bare TypeError/ValueError/KeyError/AttributeError before."""
    from cellseg import prediction as P
    from cellseg import segment as SG
    from cellseg import streaming as S
    from cellseg import tiling as T
    from cellseg import training as TR

    mask = np.zeros((64, 64), np.uint16)
    mask[10:20, 10:20] = 1
    tiny_mc = dict(n_rays=8, grid=(1, 1), unet_n_depth=1, unet_n_filter_base=4, patch_size=(32, 32))
    return [
        ("ModelConfig-n_rays-str", lambda m, im: ModelConfig(n_rays="32"), r"n_rays='32' must be an integer"),
        ("ModelConfig-grid-str", lambda m, im: ModelConfig(grid="2"), r"grid='2' must be an integer or a pair"),
        ("ModelConfig-grid-None", lambda m, im: ModelConfig(grid=None), r"grid=None"),
        ("ModelConfig-patch-str", lambda m, im: ModelConfig(patch_size="128"), r"patch_size='128'"),
        ("ModelConfig-backbone-None", lambda m, im: ModelConfig(backbone=None), r"backbone=None must be a string"),
        ("ModelConfig-lr-str", lambda m, im: ModelConfig(learning_rate="0.1"), r"learning_rate='0.1' must be a number"),
        ("ModelConfig-batch-str", lambda m, im: ModelConfig(batch_size="4"), r"batch_size='4' must be an integer"),
        ("ModelConfig-depth-str", lambda m, im: ModelConfig(unet_n_depth="3"), r"unet_n_depth='3'"),
        ("ModelConfig-n_channel_in-None", lambda m, im: ModelConfig(n_channel_in=None), r"n_channel_in=None"),
        ("ModelConfig-n_rays-float", lambda m, im: ModelConfig(n_rays=32.5), r"n_rays=32.5 must be an integer"),
        ("ModelConfig-unknown-key", lambda m, im: ModelConfig(foo=1), r"ModelConfig: unknown parameter\(s\) foo"),
        ("ModelConfig-too-many-args", lambda m, im: ModelConfig(*range(11)), r"11 positional arguments"),
        ("ModelConfig-options-unet", lambda m, im: ModelConfig(backbone_options={"imagenet": True}),
         r"backbone 'unet' has no option\(s\) imagenet"),
        ("ModelConfig-resnet50-grid", lambda m, im: ModelConfig(backbone="resnet50", grid=(1, 2)),
         r"resnet50 needs a square grid"),
        ("ModelConfig-from_dict-None", lambda m, im: ModelConfig.from_dict(None), r"model config must be a dict"),
        ("ModelConfig-from_stardist-empty", lambda m, im: ModelConfig.from_stardist({}), r"n_rays, grid, n_channel_in missing"),
        ("create-config-type", lambda m, im: CellsegModel.create("unet"), r"model_config must be a ModelConfig"),
        ("create-seed-neg", lambda m, im: CellsegModel.create(ModelConfig(**tiny_mc), seed=-1), r"seed=-1"),
        ("load_model-None", lambda m, im: load_model(None), r"model source None must be a model folder"),
        ("load_model-int", lambda m, im: load_model(3), r"model source 3"),
        ("load_model-empty", lambda m, im: load_model(""), r"model source is empty"),
        ("from_bytes-str", lambda m, im: models.from_bytes("abc"), r"model zip bytes must be bytes"),
        ("thresholds-str", lambda m, im: setattr(m, "thresholds", {"prob": "a", "nms": 0.3}), r"thresholds\['prob'\]"),
        ("thresholds-missing", lambda m, im: setattr(m, "thresholds", {"prob": 0.5}), r"keys 'prob' and 'nms'"),
        ("save-int-path", lambda m, im: m.save(3), r"model output path 3 must be a path"),
        ("set_seed-str", lambda m, im: models.set_seed("a"), r"seed='a' must be an integer"),
        ("predict-n_tiles-str", lambda m, im: P.predict(m, im, n_tiles="2,2"), r"n_tiles='2,2' must be two integers"),
        ("predict-model-None", lambda m, im: P.predict(None, im), r"model must be a CellsegModel"),
        ("predict-image-None", lambda m, im: P.predict(m, None), r"expected an image array"),
        ("predict-image-path", lambda m, im: P.predict(m, "img.tif"), r"read the file with cellseg\.images\.read_image"),
        ("predict-image-ragged", lambda m, im: P.predict(m, [[1, 2], [3]]), r"cannot be made into an image array"),
        ("predict-prob-str", lambda m, im: P.predict(m, im, prob_thresh="abc"), r"prob_thresh='abc' must be a number"),
        ("predict-prob-list", lambda m, im: P.predict(m, im, prob_thresh=[0.5]), r"prob_thresh=\[0\.5\]"),
        ("predict-normalize-str", lambda m, im: P.predict(m, im, normalize="no"), r"normalize='no' must be True or False"),
        ("predict-name-None", lambda m, im: P.predict(m, im, name=None), r"name=None must be a string"),
        ("predict-z-stack", lambda m, im: P.predict(m, np.stack([im] * 5)), r"Z stack \(or time series\) of 5 slices"),
        ("predict_many-None", lambda m, im: list(P.predict_many(m, None)), r"images must be a list"),
        ("predict_many-one-image", lambda m, im: list(P.predict_many(m, im)), r"images is one 2D image"),
        ("predict_many-batch-str", lambda m, im: list(P.predict_many(m, [im], batch_size="8")), r"batch_size='8'"),
        ("predict_many-names-short", lambda m, im: list(P.predict_many(m, [im, im], names=["a"])), r"1 names for 2 images"),
        ("predict_many-progress-int", lambda m, im: list(P.predict_many(m, [im], progress=3)), r"progress=3 must be a function"),
        ("predict_batch-network_batch-str", lambda m, im: P.predict_batch(m, [im], network_batch="1"), r"network_batch='1'"),
        ("pad_for_network-zero", lambda m, im: SG.pad_for_network(im[..., None], 0), r"divisor=0 must be >= 1"),
        ("objects_table-None", lambda m, im: SG.objects_table(None, {}), r"objects_table: labels must be a 2D integer"),
        ("plan_tiles-None", lambda m, im: T.plan_tiles(None), r"plan_tiles: shape None must be \(H, W\)"),
        ("plan_tiles-tile-str", lambda m, im: T.plan_tiles((100, 100), "64"), r"tile_size='64'"),
        ("plan_tiles-overlap-str", lambda m, im: T.plan_tiles((100, 100), 64, "8"), r"overlap='8' must be an integer"),
        ("plan_tiles-shape-float", lambda m, im: T.plan_tiles((100.5, 100)), r"must be integers \(H, W\)"),
        ("merge_labels-tiles-None", lambda m, im: T.merge_labels((64, 64), None, None), r"tiles must be a list"),
        ("merge_labels-not-tiles", lambda m, im: T.merge_labels((64, 64), [1], [im]), r"tiles must be Tile objects"),
        ("predict_large-source-None", lambda m, im: S.predict_large(m, None), r"source=None must be an image file"),
        ("predict_large-tile-str", lambda m, im: S.predict_large(m, im, tile_size="64"), r"tile_size='64' must be an integer"),
        ("predict_large-overlap-str", lambda m, im: S.predict_large(m, im, overlap="8"), r"overlap='8'"),
        ("predict_large-out-int", lambda m, im: S.predict_large(m, im, 3), r"out_path=3 must be a \.tif path"),
        ("predict_large-model-None", lambda m, im: S.predict_large(None, im), r"model must be a CellsegModel"),
        ("predict_large-z-stack", lambda m, im: S.predict_large(m, np.stack([im] * 5)), r"Z stack \(or time series\) of 5"),
        ("default_overlap-None", lambda m, im: T.default_overlap(None), r"model must be a CellsegModel"),
        ("TrainConfig-epochs-str", lambda m, im: TR.TrainConfig(epochs="3"), r"epochs='3' must be an integer"),
        ("TrainConfig-unknown-key", lambda m, im: TR.TrainConfig(foo=1), r"TrainConfig: unknown parameter\(s\) foo"),
        ("TrainConfig-seed-neg", lambda m, im: TR.TrainConfig(seed=-1).validate(), r"seed=-1 must be between 0 and"),
        ("TrainConfig-val-None", lambda m, im: TR.TrainConfig(validation_fraction=None), r"validation_fraction=None"),
        ("train-images-None", lambda m, im: TR.train(None, None), r"images must be a list of image arrays"),
        ("train-one-image", lambda m, im: TR.train(im, mask), r"images is one 2D image"),
        ("train-config-type", lambda m, im: TR.train([im], [mask], "unet"), r"model_config must be a ModelConfig"),
        ("train-train_config-type", lambda m, im: TR.train([im], [mask], None, 3), r"train_config must be a TrainConfig"),
        ("train-names-short", lambda m, im: TR.train([im, im], [mask, mask], ModelConfig(**tiny_mc), names=["a"]),
         r"1 names for 2 images"),
        ("prepare_data-patch-str", lambda m, im: TR.prepare_data([im], [mask], ModelConfig(**tiny_mc), "64"),
         r"patch_size='64'"),
        ("retrain-model-None", lambda m, im: TR.retrain(None, [im], [mask]), r"model must be a CellsegModel"),
        ("retrain-validation-bad", lambda m, im: TR.retrain(m, [im], [mask], validation=[im]),
         r"validation must be a pair \(images, masks\)"),
        ("retrain-progress-int", lambda m, im: TR.retrain(m, [im], [mask], progress=3), r"progress=3 must be a function"),
        ("fit-callbacks-int", lambda m, im: TR.fit(m, TR.TrainingData([im], [mask]), callbacks=[3]),
         r"callbacks\[0\]=3 must be a cellseg\.callbacks\.TrainingCallback"),
        ("fit-images-list", lambda m, im: TR.fit(m, [im], [mask]), r"data must be a cellseg\.trainingdata\.TrainingData"),
        ("split_validation-str", lambda m, im: TR.split_validation("3", 0.2, 0), r"n='3' must be an integer"),
        ("mix_training_data-zero", lambda m, im: TR.mix_training_data([im], [mask], [im], [mask], 0), r"mix_fraction=0"),
        ("optimize_thresholds-None", lambda m, im: TR.optimize_thresholds(m, None, None), r"X must be a list"),
        ("reinit_heads-None", lambda m, im: TR.reinit_heads(None), r"model must be a CellsegModel"),
    ]


API_CALLS = _api_calls()


@pytest.mark.parametrize(("case", "call", "pattern"), API_CALLS, ids=[c[0] for c in API_CALLS])
def test_api_wrong_argument_is_named(case, call, pattern, tiny_copy):
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    with pytest.raises(CellsegError, match=pattern) as err:
        call(tiny_copy, image)
    assert isinstance(err.value, (InputError, ModelLoadError))
    _one_line(err)


def test_int_grid_and_n_tiles_mean_both_axes(tiny_copy):
    from cellseg.prediction import predict

    assert ModelConfig(grid=2).grid == (2, 2) and ModelConfig(patch_size=64).patch_size == (64, 64)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    assert np.array_equal(predict(tiny_copy, image, n_tiles=2)[0], predict(tiny_copy, image, n_tiles=(2, 2))[0])


# -- Z stacks in (tiled) prediction ----------------------------------------------------------------

@pytest.mark.parametrize("tiled", ["always", "auto", "never"])
def test_z_stack_is_a_clear_error_in_every_prediction_path(tiled, bundle, tmp_path, capsys):
    """Before: AttributeError in tiling.py (streamed) and "96 channels" (untiled)."""
    from cellseg.cli import main

    images = tmp_path / "images"
    images.mkdir()
    stack = np.random.default_rng(0).integers(0, 255, (5, 96, 96), dtype=np.uint8)
    tifffile.imwrite(images / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    assert main(["-q", "predict", "--model", str(bundle), "--images", str(images), "--out", str(tmp_path / "pred"),
                 "--tiled", tiled]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stack.tif: a Z stack of 5 slices" in err[0] and "2D images" in err[0], err
    assert not (tmp_path / "pred").exists()


def test_z_stack_in_predict_large_and_its_header_check(tiny_copy, tmp_path):
    from cellseg import streaming
    from cellseg.tile_source import image_size

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 96, 96), np.uint8), metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match=r"stack\.tif: a Z stack of 5 slices \(axes ZYX, shape 5x96x96\)"):
        streaming.predict_large(tiny_copy, path, tmp_path / "labels.tif")
    with pytest.raises(InputError, match=r"a Z stack of 5 slices"):
        image_size(path)
    unlabelled = tmp_path / "pages.tif"
    tifffile.imwrite(unlabelled, np.zeros((7, 96, 96), np.uint8))
    with pytest.raises(InputError, match=r"pages\.tif: a stack of 7 pages"):
        streaming.predict_large(tiny_copy, unlabelled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages.tif", "stack.tif"]


def test_bool_image_streams(tiny_copy):
    from cellseg import streaming

    image = np.zeros((64, 64), bool)
    image[20:40, 20:40] = True
    labels, _ = streaming.predict_large(tiny_copy, image)
    assert labels.shape == (64, 64)


# -- SIGTERM / Ctrl-C during tiled prediction ---------------------------------------------------------

def _default_sigint() -> None:
    """In the child: Python turns SIGINT into KeyboardInterrupt only if it is not ignored at start (it is
    in background jobs of non-interactive shells)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_during_tiled_prediction_leaves_no_trace(sig, code, bundle, tmp_path):
    """`cellseg predict --tiled always --overwrite` killed while the label TIFF is being written: the earlier
    prediction in --out stays byte for byte, no half-written label file, no temporary file anywhere."""
    from cellseg.simulate import simulate_image

    image, _ = simulate_image(size=256, seed=0)
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "big.tif", np.tile(image, (16, 16)))  # 4096 x 4096: ~30 s with this model
    out = tmp_path / "pred"
    out.mkdir()
    (out / "big.tif").write_bytes(b"earlier labels")
    (out / "objects.csv").write_text("image,label\nbig,1\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    systemp = tmp_path / "systemp"
    systemp.mkdir()
    env = dict(os.environ, TMPDIR=str(systemp), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "cellseg", "-q", "predict", "--model", str(bundle), "--images",
                             str(images), "--out", str(out), "--overwrite", "--tiled", "always", "--tile-size", "256",
                             "--prob-thresh", "0.95"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 240
        partial: list[Path] = []
        while proc.poll() is None and time.monotonic() < deadline:
            partial = [p for p in tmp_path.glob(".pred.*.tmp/.big.tif.*.tmp") if p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.05)
        assert partial, f"the label TIFF was never being written (rc {proc.poll()})"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "pred", "systemp"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert list(systemp.iterdir()) == []

"""The KNIME nodes on tiny data: configure schemas/specs, execute, progress, cancellation and bad input."""

from __future__ import annotations

from pathlib import Path

import knime.extension as knext
import knime.extension.testing as ktest
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellseg.images import write_image
from cellseg_knime import cells
from cellseg_knime.history import HISTORY_COLUMNS
from cellseg_knime.learners import StarDistRetrainer
from cellseg_knime.ports import StarDistModelPortObject, StarDistModelSpec, summary_from_bundle
from cellseg_knime.predictor import StarDistPredictor
from cellseg_knime.scorer import StarDistScorer
from cellseg_knime.sources import ImageReader, ModelReader, NucleiSimulator
from cellseg_knime.writers import ModelWriter
from knime_cells import (
    KINDS,
    array,
    batch_sizes,
    column,
    image_df,
    png,
    same_schema,
    table_of,
    tiny_learner_node,
)

CFG = ktest.TestingConfigurationContext


@pytest.fixture()
def model_port(knime_model_bytes: bytes) -> StarDistModelPortObject:
    return StarDistModelPortObject.deserialize(StarDistModelSpec(summary_from_bundle(knime_model_bytes)),
                                               knime_model_bytes)


# -- Nuclei Simulator ---------------------------------------------------------------------------


def test_simulator(knime_ctx) -> None:
    node = NucleiSimulator()
    node.n_images = 3
    node.image_size = 48
    node.preset = "MIXED"
    schema = node.configure(CFG())
    ctx = knime_ctx.make()
    out = node.execute(ctx, )
    same_schema(schema, out)
    df = out.to_pandas()
    assert list(df.index) == ["Row0", "Row1", "Row2"]
    assert isinstance(df["image"].iloc[0], Image.Image) and df["image"].iloc[0].mode == "I;16"
    img, lbl = array(df["image"].iloc[0]), array(df["labels"].iloc[0])
    assert img.shape == lbl.shape == (48, 48) and img.dtype == np.uint16
    assert df["n_objects"].iloc[0] == len(np.unique(lbl)) - 1
    assert isinstance(df["preview"].iloc[0], Image.Image)
    assert ctx.progress[-1][0] == 1.0 and all(m for _, m in ctx.progress)
    again = node.execute(knime_ctx.make()).to_pandas()
    np.testing.assert_array_equal(array(again["image"].iloc[2]), array(df["image"].iloc[2]))  # deterministic
    with pytest.raises(ValueError):
        node.n_images = 0  # min checked on set
    with pytest.raises(ValueError):
        node.preset = "NOPE"
    with pytest.raises(RuntimeError, match="canceled"):
        node.execute(knime_ctx.make(cancel_after=1))


# -- Image Reader -------------------------------------------------------------------------------


def test_image_reader(tmp_path: Path, tiny_dataset, knime_ctx) -> None:
    images, labels = tiny_dataset
    for i, (img, lbl) in enumerate(zip(images, labels)):
        write_image(tmp_path / "img" / f"a{i}.tif", img)
        write_image(tmp_path / "msk" / f"a{i}.png", lbl)
    node = ImageReader()
    node.path = str(tmp_path / "img")
    node.mask_folder = str(tmp_path / "msk")
    schema = node.configure(CFG())
    out = node.execute(knime_ctx.make())
    same_schema(schema, out)
    df = out.to_pandas()
    assert list(df["image_name"]) == ["a0", "a1", "a2"]
    np.testing.assert_array_equal(array(df["image"].iloc[1]), images[1])
    np.testing.assert_array_equal(array(df["labels"].iloc[1]), labels[1])
    assert Path(df["image_path"].iloc[1].path) == (tmp_path / "img" / "a1.tif").resolve()  # a Path cell
    assert list(df[["height", "width", "channels"]].iloc[0]) == [64, 64, 1]

    node.content = "PATH"
    node.path = str(tmp_path / "img" / "a[01].tif")
    schema = node.configure(CFG())
    df = node.execute(knime_ctx.make()).to_pandas()
    assert schema.column_names == ["image_name", "image_path", "label_path"]
    assert len(df) == 2 and Path(df["label_path"].iloc[0].path).name == "a0.png"
    same_schema(schema, node.execute(knime_ctx.make()))

    write_image(tmp_path / "flt" / "f.tif", images[0].astype(np.float32))  # PNG cannot hold float exactly
    node.path = str(tmp_path / "flt")
    node.mask_folder = ""
    node.content = "IMAGE"
    with pytest.raises(ValueError, match="f.tif.*float32.*File paths"):
        node.execute(knime_ctx.make())
    node.content = "PATH"
    assert node.execute(knime_ctx.make()).to_pandas()["image_path"].iloc[0].fs_category == "LOCAL"
    node.mask_folder = str(tmp_path / "msk")

    (tmp_path / "msk" / "a2.png").unlink()
    node.content = "IMAGE"
    node.path = str(tmp_path / "img")
    with pytest.raises(ValueError, match="no mask for 1 image"):
        node.execute(knime_ctx.make())
    node.mask_folder = ""
    (tmp_path / "img" / "a1.tif").write_bytes(b"II*\x00broken")
    with pytest.raises(ValueError, match="a1.tif"):
        node.execute(knime_ctx.make())
    node.path = str(tmp_path / "nowhere")
    with pytest.raises(knext.InvalidParametersError, match="does not exist"):
        node.configure(CFG())
    node.path = ""
    with pytest.raises(knext.InvalidParametersError):
        node.configure(CFG())


def test_relative_paths_resolve_against_the_workflow_folder(tmp_path: Path, tiny_dataset, knime_ctx) -> None:
    """In KNIME a relative path means: inside the workflow's folder (so example workflows carry their data)."""
    images, labels = tiny_dataset
    for i, (img, lbl) in enumerate(zip(images, labels)):
        write_image(tmp_path / "wf" / "data" / "img" / f"a{i}.tif", img)
        write_image(tmp_path / "wf" / "data" / "msk" / f"a{i}.tif", lbl)
    ctx = knime_ctx.make()
    ctx.get_workflow_data_area_dir = lambda: str(tmp_path / "wf" / "data")  # what KNIME answers
    node = ImageReader()
    node.path = "data/img"
    node.mask_folder = "data/msk"
    node.configure(CFG())  # relative paths are not checked in configure: the folder is not known there
    df = node.execute(ctx).to_pandas()
    assert list(df["image_name"]) == ["a0", "a1", "a2"] and "labels" in df
    node.path = "data/img/a[01].tif"
    assert len(node.execute(ctx).to_pandas()) == 2
    node.path = "data/missing"
    with pytest.raises(knext.InvalidParametersError, match=str(tmp_path / "wf" / "data" / "missing")):
        node.execute(ctx)


# -- Model Reader / Writer ----------------------------------------------------------------------


def test_model_writer_and_reader(tmp_path: Path, model_port, knime_ctx) -> None:
    writer = ModelWriter()
    writer.path = str(tmp_path / "model.zip")
    writer.configure(CFG(), model_port.spec)
    writer.execute(knime_ctx.make(), model_port)
    assert (tmp_path / "model.zip").read_bytes() == model_port.serialize()
    with pytest.raises(knext.InvalidParametersError, match="Overwrite"):
        writer.configure(CFG(), model_port.spec)
    writer.path = str(tmp_path / "folder" / "model")
    writer.execute(knime_ctx.make(), model_port)
    assert (tmp_path / "folder" / "model" / "config.json").is_file()
    assert not [p for p in (tmp_path / "folder").iterdir() if p.name.startswith(".")]  # no temporaries
    writer.path = ""
    with pytest.raises(knext.InvalidParametersError):
        writer.configure(CFG(), model_port.spec)

    reader = ModelReader()
    reader.source = "FILE"
    for path in (tmp_path / "model.zip", tmp_path / "folder" / "model"):
        reader.path = str(path)
        spec = reader.configure(CFG())
        assert spec.summary == model_port.spec.summary
        ctx = knime_ctx.make()
        port = reader.execute(ctx, )
        assert port.spec.n_rays == 16 and port.model.config.unet_n_depth == 2
        assert ctx.progress
    reader.path = str(tmp_path / "missing.zip")
    with pytest.raises(knext.InvalidParametersError, match="does not exist"):
        reader.configure(CFG())
    (tmp_path / "bad.zip").write_bytes(b"nope")
    reader.path = str(tmp_path / "bad.zip")
    with pytest.raises(knext.InvalidParametersError, match="not a model zip"):
        reader.configure(CFG())
    reader.source = "PRETRAINED"
    reader.pretrained_name = "2D_versatile_he"
    assert reader.configure(CFG()).n_channel_in == 3


# -- Learner ------------------------------------------------------------------------------------


def test_learner_configure_and_execute(tiny_learner) -> None:
    node, ctx, (port, history, view), (spec, hist_schema) = tiny_learner
    assert node.image_column == "image" and node.label_column == "labels"  # auto-selected
    assert isinstance(spec, StarDistModelSpec) and spec.n_rays == 16 and spec.divisor == 8
    assert isinstance(port, StarDistModelPortObject)
    for key in ("backbone", "n_rays", "grid", "n_channel_in", "patch_size", "divisor"):
        assert port.spec.summary[key] == spec.summary[key]
    assert port.spec.summary["steps_trained"] == 2
    assert hist_schema.column_names == [n for n, _ in HISTORY_COLUMNS]
    same_schema(hist_schema, history)
    assert list(history.to_pandas().index) == ["Epoch 1", "Epoch 2"]
    assert view.render()[:4] == b"\x89PNG"
    fractions = [p for p, _ in ctx.progress]
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:])) and fractions[-1] == 1.0
    assert any(m and "step 2/2" in m for _, m in ctx.progress)


def test_learner_cancel_mid_training(tiny_dataset, knime_ctx) -> None:
    images, labels = tiny_dataset
    node = tiny_learner_node(epochs=5, steps_per_epoch=20)
    ctx = knime_ctx.make(cancel_after=5)  # 3 reading steps + model + 1 training step
    with pytest.raises(RuntimeError, match="canceled"):
        node.execute(ctx, table_of(image_df(images, labels)))
    assert len([m for _, m in ctx.progress if m and m.startswith("step")]) <= 2


def test_learner_bad_input(tiny_dataset, knime_ctx) -> None:
    images, labels = tiny_dataset
    node = tiny_learner_node()
    good = image_df(images, labels)
    with pytest.raises(knext.InvalidParametersError, match="no PNG image, Path or string"):
        node.configure(CFG(), knext.Schema.from_columns([knext.Column(knext.int64(), "x")]))
    node.image_column = "name"
    node.label_column = "labels"
    schema = table_of(good).schema
    with pytest.raises(ValueError, match="Row 'Row0', column 'name'.*not found"):  # strings that are no paths
        node.execute(knime_ctx.make(), table_of(good))
    node.image_column = "missing"
    with pytest.raises(knext.InvalidParametersError, match="'missing'"):
        node.configure(CFG(), schema)
    ints = good.assign(count=1)
    node.image_column = "count"
    with pytest.raises(knext.InvalidParametersError, match="'count' has type"):
        node.configure(CFG(), table_of(ints).schema)
    node.image_column = "image"
    node.training.patch_size = 60
    with pytest.raises(knext.InvalidParametersError, match="multiple of 8"):
        node.configure(CFG(), schema)
    node.training.patch_size = 64
    with pytest.raises(ValueError, match="empty"):
        node.execute(knime_ctx.make(), table_of(good.iloc[:0]))
    missing = good.copy()
    missing.loc[1, "labels"] = None
    with pytest.raises(ValueError, match="Row 'Row1', column 'labels': the cell is missing"):
        node.execute(knime_ctx.make(), table_of(missing))
    mismatch = good.copy()
    mismatch.loc[0, "labels"] = png(labels[0][:32])
    with pytest.raises(ValueError, match="Row 'Row0'.*does not match"):
        node.execute(knime_ctx.make(), table_of(mismatch))
    two = good.copy()  # grey and RGB convert into each other; other channel counts are refused
    two.loc[0, "image"] = png(np.stack([(images[0] >> 8).astype(np.uint8)] * 2, -1))
    with pytest.raises(ValueError, match="Row 'Row0'.*2 channel"):
        node.execute(knime_ctx.make(), table_of(two))
    colour_labels = good.copy()
    colour_labels.loc[2, "labels"] = png(np.stack([labels[2].astype(np.uint8)] * 3, -1))
    with pytest.raises(ValueError, match="Row 'Row2', column 'labels'.*not a colour image"):
        node.execute(knime_ctx.make(), table_of(colour_labels))
    palette = good.copy()
    pal = Image.fromarray((images[0] >> 8).astype(np.uint8)).convert("P")
    pal.info["transparency"] = 0
    palette.loc[0, "image"] = pal
    with pytest.raises(ValueError, match="Row 'Row0', column 'image': a palette image with transparency"):
        node.execute(knime_ctx.make(), table_of(palette))


# -- Retrainer ----------------------------------------------------------------------------------


def test_retrainer(tiny_dataset, model_port, knime_ctx) -> None:
    images, labels = tiny_dataset
    node = StarDistRetrainer()
    node.training.epochs = 1
    node.training.steps_per_epoch = 2
    node.training.patch_size = 64
    node.training.batch_size = 2
    node.advanced.optimize_thresholds = False
    node.strategy.strategy = "FREEZE_ENCODER"
    table = table_of(image_df(images, labels), batch_rows=2)
    spec, hist_schema = node.configure(CFG(), model_port.spec, table.schema)
    assert spec.summary["steps_trained"] == model_port.spec.summary["steps_trained"] + 2
    ctx = knime_ctx.make()
    port, history, view = node.execute(ctx, model_port, table)
    same_schema(hist_schema, history)
    assert port.spec.summary["steps_trained"] == spec.summary["steps_trained"]
    assert port.model.provenance["retrained_from"][-1]["steps_trained"] == 2
    assert ctx.progress[-1][0] == 1.0 and view.render()[:4] == b"\x89PNG"
    assert ctx.progress[-1][1].startswith("trained 2 steps in ") and "all steps done" in ctx.progress[-1][1]

    node.training.patch_size = 12
    with pytest.raises(knext.InvalidParametersError, match="multiple of 8"):
        node.configure(CFG(), model_port.spec, table.schema)
    node.training.patch_size = 64
    # RGB images for a grey model: converted (the default), or the model's first layer adapted to them
    rgb = table_of(image_df([np.stack([(i >> 8).astype(np.uint8)] * 3, -1) for i in images], labels))
    for mode, channels in (("auto", 1), ("adapt", 3)):
        node.input_adaptation.channels = mode
        ctx = knime_ctx.make()
        port, _, _ = node.execute(ctx, model_port, rgb)
        assert port.spec.n_channel_in == channels, mode
        assert ("adapted from 1 to 3" in ctx.progress[-1][1]) == (mode == "adapt")
    two = table_of(image_df([np.stack([(i >> 8).astype(np.uint8)] * 2, -1) for i in images], labels))
    with pytest.raises(ValueError, match="Row 'Row0'.*2 channel.*expects 1"):
        node.execute(knime_ctx.make(), model_port, two)


# -- Predictor ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_predictor(kind: str, tmp_path: Path, tiny_dataset, model_port, knime_ctx) -> None:
    """Each input kind; PNG cells in -> PNG label cells out, files in -> label TIFFs (Path cells) out."""
    images, labels = tiny_dataset
    df = image_df(images, labels, kind, tmp_path / "in")
    df.index = pd.Index(["a", "b", "c"], dtype=object)
    table = table_of(df, batch_rows=2)
    node = StarDistPredictor()
    node.advanced.batch_size = 2
    node.thresholds.use_model_thresholds = False
    node.thresholds.prob_thresh = 0.3
    node.image_output.folder = str(tmp_path / "labels")
    schema, obj_schema = node.configure(CFG(), model_port.spec, table.schema)
    assert schema.column_names == ["name", "image", "labels", "labels (#1)", "n_objects", "preview"]
    assert schema["labels (#1)"].ktype == (cells.png_type() if kind == "png" else cells.path_type())
    assert node.image_column == "image"
    ctx = knime_ctx.make()
    out, objects, view = node.execute(ctx, model_port, table)
    same_schema(schema, out)
    same_schema(obj_schema, objects)
    odf = out.to_pandas()
    assert list(odf.index) == ["a", "b", "c"]
    lbl = array(odf["labels (#1)"].iloc[0])
    assert lbl.shape == (64, 64) and lbl.dtype == np.uint16
    if kind != "png":
        assert Path(odf["labels (#1)"].iloc[0].path).parent == tmp_path / "labels"
    assert odf["n_objects"].iloc[0] == len(np.unique(lbl)) - (1 if (lbl == 0).any() else 0)
    assert isinstance(odf["preview"].iloc[0], Image.Image)
    objs = objects.to_pandas()
    assert set(objs["source_row_id"]) <= {"a", "b", "c"}
    assert len(objs) == odf["n_objects"].sum() > 0
    assert objs["polygon"].iloc[0].startswith("POLYGON ((")
    html = view.html
    assert "<img src='data:image/png;base64," in html and "First objects of" in html
    assert ctx.progress[-1][0] == 1.0 and "segmented 3 of 3" in ctx.progress[-1][1]
    assert ctx.cancel_polls >= 2  # polled between batches
    if kind != "png":  # label files exist now: a second run must not replace them silently
        with pytest.raises(ValueError, match="exists; enable Overwrite"):
            node.execute(knime_ctx.make(), model_port, table)
        node.image_output.overwrite = True
        node.execute(knime_ctx.make(), model_port, table)

    with pytest.raises(RuntimeError, match="canceled"):
        node.execute(knime_ctx.make(cancel_after=1), model_port, table)
    grey8 = (images[0] >> 8).astype(np.uint8)
    if kind == "png":  # RGB into a grey model is converted to grey; scale and inversion reach the backend
        grey, rgb = (node.execute(knime_ctx.make(), model_port, table_of(image_df([x])))[0].to_pandas()
                     for x in (grey8, np.stack([grey8] * 3, -1)))
        fg_grey, fg_rgb = (array(t["labels"].iloc[0]) > 0 for t in (grey, rgb))
        assert fg_grey.shape == fg_rgb.shape and (fg_grey == fg_rgb).mean() > 0.95  # up to float rounding
        node.input_adaptation.scale = 2.0
        node.input_adaptation.invert = "no"
        assert node._input().scale == 2.0
        scaled = node.execute(knime_ctx.make(), model_port, table_of(image_df([grey8])))[0].to_pandas()
        assert array(scaled["labels"].iloc[0]).shape == grey8.shape  # labels at the image's own size
        node.input_adaptation.scale = 0.0
        assert node._input().scale is None  # 0 = the model's own
    rgba = image_df([np.stack([grey8] * 3 + [np.full_like(grey8, 255)], -1)])
    with pytest.raises(ValueError, match="Row 'Row0'.*4 channel"):
        node.execute(knime_ctx.make(), model_port, table_of(rgba))


def test_predictor_bad_cells(tmp_path: Path, tiny_dataset, model_port, knime_ctx) -> None:
    images, _ = tiny_dataset
    node = StarDistPredictor()
    paths = pd.DataFrame({"image": column(images, "path", tmp_path)})
    paths.loc[1, "image"] = cells.path_cell(tmp_path / "gone.tif")
    with pytest.raises(ValueError, match="Row 'Row1', column 'image': file '.*gone.tif' not found"):
        node.execute(knime_ctx.make(), model_port, table_of(paths))
    strings = pd.DataFrame({"image": [str(tmp_path / "im0.tif"), None]})
    with pytest.raises(ValueError, match="Row 'Row1', column 'image': the cell is missing"):
        node.execute(knime_ctx.make(), model_port, table_of(strings))
    remote = pd.DataFrame({"image": column(images[:1], "path", tmp_path)})
    remote.loc[0, "image"] = type(remote["image"].iloc[0])("CONNECTED", "amazon-s3:eu", "/bucket/a.tif")
    with pytest.raises(ValueError, match="Row 'Row0', column 'image'.*not a local file"):
        node.execute(knime_ctx.make(), model_port, table_of(remote))
    node.image_output.output = "PNG"
    node.image_output.folder = str(tmp_path / "out")
    large = pd.DataFrame({"image_path": column(images[:1], "path", tmp_path)})
    node.mode = "LARGE_IMAGE"
    node.image_column = None
    schema, _ = node.configure(CFG(), model_port.spec, table_of(large).schema)
    assert schema["labels"].ktype == cells.path_type()  # streamed labels are files whatever the setting
    with pytest.raises(ValueError):
        node.large_image.tile_size = 8  # below min


def test_predictor_many_objects_keep_the_batch_rule(tmp_path: Path, model_port, knime_ctx) -> None:
    """Images with different object counts: every objects batch but the last has the same size."""
    from cellseg.simulate import simulate_dataset

    images, _ = simulate_dataset(5, size=96, seed=4)
    node = StarDistPredictor()
    node.thresholds.use_model_thresholds = False
    node.thresholds.prob_thresh = 0.05
    node.advanced.batch_size = 1
    out, objects, _ = node.execute(knime_ctx.make(), model_port, table_of(image_df(images), batch_rows=2))
    sizes = batch_sizes(objects)
    assert sum(sizes) == out.to_pandas()["n_objects"].sum()
    assert len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
    node.thresholds.prob_thresh = 1.0  # nothing detected: an empty objects table of the configured types
    _, objects, _ = node.execute(knime_ctx.make(), model_port, table_of(image_df(images[:1])))
    _, obj_schema = node.configure(CFG(), model_port.spec, table_of(image_df(images[:1])).schema)
    assert objects.to_pandas().shape[0] == 0
    same_schema(obj_schema, objects)


# -- Scorer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_scorer(kind: str, tmp_path: Path, tiny_dataset, knime_ctx) -> None:
    from cellseg.metrics import score_dataset

    _, labels = tiny_dataset
    preds = [np.where(np.roll(m, 2, axis=1) > 0, np.roll(m, 2, axis=1), 0) for m in labels]
    preds[1] = np.zeros_like(preds[1])  # an image without predictions
    df = pd.DataFrame({"labels": column(labels, kind, tmp_path, "gt"),
                       "prediction": column(preds, kind, tmp_path, "pred")})
    node = StarDistScorer()
    per_schema, sum_schema = node.configure(CFG(), table_of(df).schema)
    assert (node.truth_column, node.prediction_columns) == ("labels", ["prediction"])
    ctx = knime_ctx.make()
    per_image, summary, view = node.execute(ctx, table_of(df, batch_rows=2))
    same_schema(per_schema, per_image)
    same_schema(sum_schema, summary)
    assert len(per_image.to_pandas()) == 30 and batch_sizes(per_image)[0] == 30
    _, expected = score_dataset(labels, preds)
    got = summary.to_pandas().reset_index(drop=True)
    assert set(got.pop("prediction")) == {"prediction"}
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-9)
    assert ctx.flow_variables["cellseg_ap50"] == pytest.approx(expected["accuracy"].iloc[0])
    assert ctx.flow_variables["cellseg_mean_ap"] == pytest.approx(expected["accuracy"].mean())
    assert view.render()[:4] == b"\x89PNG"
    if kind != "png":
        return

    # two prediction columns (before / after): one block of rows each, in column order
    df2 = df.assign(perfect=df["labels"])
    node2 = StarDistScorer()
    node2.configure(CFG(), table_of(df2).schema)
    assert node2.prediction_columns == ["prediction", "perfect"]
    per2, sum2, _ = node2.execute(knime_ctx.make(), table_of(df2))
    s2 = sum2.to_pandas()
    assert list(s2["prediction"]) == ["prediction"] * 10 + ["perfect"] * 10
    assert (s2[s2["prediction"] == "perfect"]["accuracy"] == 1.0).all()
    assert len(per2.to_pandas()) == 60

    node.prediction_columns = ["labels"]
    with pytest.raises(knext.InvalidParametersError, match="also selected"):
        node.configure(CFG(), table_of(df).schema)
    node.prediction_columns = ["prediction"]
    bad = df.copy()
    bad.loc[2, "prediction"] = png(preds[2][:40])
    with pytest.raises(ValueError, match="Row 'Row2'.*does not match"):
        node.execute(knime_ctx.make(), table_of(bad))
    with pytest.raises(ValueError):
        node.iou_thresholds = "0.5, abc"
    with pytest.raises(ValueError, match="empty"):
        node.execute(knime_ctx.make(), table_of(df.iloc[:0]))

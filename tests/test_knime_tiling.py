"""Image Tiler, Tile Merger and the Predictor's large-image mode."""

from __future__ import annotations

import os
from pathlib import Path

import knime.extension as knext
import knime.extension.testing as ktest
import numpy as np
import pandas as pd
import pytest

from cellseg.images import write_image
from cellseg_knime import cells
from cellseg_knime.ports import StarDistModelPortObject, StarDistModelSpec, summary_from_bundle
from cellseg_knime.predictor import StarDistPredictor
from cellseg_knime.tiling import GEOMETRY_COLUMNS, ImageTiler, TileMerger
from knime_cells import KINDS, array, column, same_schema, table_of

pytest.importorskip("cellseg.tiling")
CFG = ktest.TestingConfigurationContext


@pytest.fixture(scope="module")
def big_pair() -> tuple[np.ndarray, np.ndarray]:
    from cellseg.simulate import simulate_image

    return simulate_image((100, 90), seed=3)


@pytest.mark.parametrize("kind", KINDS)
def test_tiler_then_merger_restores_labels(kind: str, tmp_path: Path, big_pair, knime_ctx) -> None:
    from stardist.matching import matching

    img, lbl = big_pair
    df = pd.DataFrame({"image": column([img, img[:40, :40]], kind, tmp_path, "im"),
                       "labels": column([lbl, lbl[:40, :40]], kind, tmp_path, "lbl")},
                      index=pd.Index(["big", "small"], dtype=object))
    tiler = ImageTiler()
    tiler.tile_size = 40
    tiler.overlap = 16
    tiler.image_output.folder = str(tmp_path / "tiles")
    schema = tiler.configure(CFG(), table_of(df).schema)
    assert schema.column_names == ["source_row_id", *GEOMETRY_COLUMNS, "tile"]
    assert schema["tile"].ktype == (cells.png_type() if kind == "png" else cells.path_type())
    ctx = knime_ctx.make()
    tiles_table = tiler.execute(ctx, table_of(df, batch_rows=1))
    same_schema(schema, tiles_table)
    tiles = tiles_table.to_pandas()
    big = tiles[tiles["source_row_id"] == "big"]
    assert len(big) == big["n_tiles"].iloc[0] > 1
    assert tiles.index[0] == "big_tile0"
    assert ctx.progress[-1][0] == 1.0

    # per-tile "processing": crop the ground-truth labels to each tile, shuffled order
    label_img = {"big": lbl, "small": lbl[:40, :40]}
    crops = [label_img[s][y0:y1, x0:x1] for s, y0, y1, x0, x1 in
             zip(tiles["source_row_id"], tiles["y0"], tiles["y1"], tiles["x0"], tiles["x1"])]
    np.testing.assert_array_equal(array(tiles["tile"].iloc[0]), img[:tiles["y1"].iloc[0], :tiles["x1"].iloc[0]])
    tiles["labels"] = column(crops, kind, tmp_path / "crops", "crop")
    tiles = tiles.drop(columns=["tile"]).sample(frac=1.0, random_state=0)
    merger = TileMerger()
    merger.image_output.folder = str(tmp_path / "merged")
    mschema = merger.configure(CFG(), table_of(tiles).schema)
    assert (merger.labels_column, merger.source_column) == ("labels", "source_row_id")
    merged_table = merger.execute(knime_ctx.make(), table_of(tiles, batch_rows=3))
    same_schema(mschema, merged_table)
    merged = merged_table.to_pandas()
    assert sorted(merged.index) == ["big", "small"]
    out = array(merged.loc["big", "labels"])
    assert out.shape == lbl.shape
    assert matching(lbl, out, thresh=0.5).f1 > 0.98
    assert merged.loc["big", "n_objects"] == len(np.unique(out)) - 1

    with pytest.raises(ValueError, match="only .* of its .* tiles"):
        merger.execute(knime_ctx.make(), table_of(tiles.iloc[1:]))
    if kind != "png":
        with pytest.raises(ValueError, match="exists; enable Overwrite"):  # checked before any work
            merger.execute(knime_ctx.make(), table_of(tiles))
        merger.image_output.overwrite = True
    before = {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()} if kind != "png" else {}
    with pytest.raises(knext.InvalidParametersError, match="tile geometry"):
        merger.configure(CFG(), table_of(tiles.drop(columns=["core_y0"])).schema)
    bad = tiles.copy()
    bad.iloc[0, bad.columns.get_loc("labels")] = column([np.zeros((3, 3), np.uint16)], kind, tmp_path / "bad")[0]
    with pytest.raises(ValueError, match=f"Row '{bad.index[0]}'.*does not match"):
        merger.execute(knime_ctx.make(), table_of(bad))
    if kind != "png":  # a failed run leaves the files of the last good run and no staging folder
        assert {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()} == before
    with pytest.raises(RuntimeError, match="canceled"):
        tiler.execute(knime_ctx.make(cancel_after=0), table_of(df))


def test_predictor_large_image_mode(tmp_path: Path, big_pair, knime_model_bytes: bytes, knime_ctx) -> None:
    img, _ = big_pair
    write_image(tmp_path / "scan.tif", img)
    port = StarDistModelPortObject.deserialize(StarDistModelSpec(summary_from_bundle(knime_model_bytes)),
                                               knime_model_bytes)
    df = pd.DataFrame({"image_path": [cells.path_cell(tmp_path / "scan.tif")]})
    node = StarDistPredictor()
    node.mode = "LARGE_IMAGE"
    node.large_image.tile_size = 64
    node.image_output.folder = str(tmp_path / "out")
    schema, obj_schema = node.configure(CFG(), port.spec, table_of(df).schema)
    assert schema.column_names == ["image_path", "labels", "n_objects"]
    ctx = knime_ctx.make()
    out, objects, _ = node.execute(ctx, port, table_of(df))
    same_schema(schema, out)
    odf = out.to_pandas()
    path = Path(odf["labels"].iloc[0].path)
    assert path.is_file() and path.parent == tmp_path / "out"
    from cellseg.images import read_image

    assert read_image(path).shape == img.shape
    assert len(objects.to_pandas()) == odf["n_objects"].iloc[0]
    assert ctx.progress and ctx.progress[-1][0] == 1.0

    missing = pd.DataFrame({"image_path": [str(tmp_path / "nope.tif")]})
    with pytest.raises(ValueError, match="Row 'Row0'.*not found"):
        node.execute(knime_ctx.make(), port, table_of(missing))
    with pytest.raises(ValueError, match="scan_labels.tif' exists; enable Overwrite"):
        node.execute(knime_ctx.make(), port, table_of(df))  # the label file of the first run is not replaced
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    node.image_output.folder = str(tmp_path / "ro")
    if not os.access(tmp_path / "ro", os.W_OK):  # root may write anyway
        with pytest.raises(knext.InvalidParametersError, match="Output folder.*not writable"):
            node.execute(knime_ctx.make(), port, table_of(df))

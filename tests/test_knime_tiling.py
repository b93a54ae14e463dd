"""Image Tiler, Tile Merger and the Predictor's large-image mode."""

from __future__ import annotations

from pathlib import Path

import knime.extension as knext
import knime.extension.testing as ktest
import numpy as np
import pandas as pd
import pytest

from cellseg.io import decode_tiff, encode_tiff, write_image
from cellseg_knime import compat
from cellseg_knime.ports import StarDistModelPortObject, StarDistModelSpec, summary_from_bundle
from cellseg_knime.predictor import StarDistPredictor
from cellseg_knime.tiling import GEOMETRY_COLUMNS, ImageTiler, TileMerger

pytest.importorskip("cellseg.tiling")
CFG = ktest.TestingConfigurationContext


def table_of(df: pd.DataFrame, batch_rows: int | None = None) -> knext.Table:
    table = knext.Table.from_pandas(df)
    if batch_rows and compat.using_standin():
        table._batch_size = batch_rows
    return table


@pytest.fixture(scope="module")
def big_pair() -> tuple[np.ndarray, np.ndarray]:
    from cellseg.simulate import simulate_image

    return simulate_image((100, 90), seed=3)


def test_tiler_then_merger_restores_labels(big_pair, knime_ctx) -> None:
    from stardist.matching import matching

    img, lbl = big_pair
    df = pd.DataFrame({"image": [encode_tiff(img), encode_tiff(img[:40, :40])],
                       "labels": [encode_tiff(lbl), encode_tiff(lbl[:40, :40])]},
                      index=pd.Index(["big", "small"], dtype=object))
    tiler = ImageTiler()
    tiler.tile_size = 40
    tiler.overlap = 16
    schema = tiler.configure(CFG(), table_of(df).schema)
    assert schema.column_names == ["source_row_id", *GEOMETRY_COLUMNS, "tile"]
    ctx = knime_ctx.make()
    tiles = tiler.execute(ctx, table_of(df, batch_rows=1)).to_pandas()
    assert list(tiles.columns) == schema.column_names
    big = tiles[tiles["source_row_id"] == "big"]
    assert len(big) == big["n_tiles"].iloc[0] > 1
    assert tiles.index[0] == "big_tile0"
    assert ctx.progress[-1][0] == 1.0

    # per-tile "processing": crop the ground-truth labels to each tile, shuffled order
    label_img = {"big": lbl, "small": lbl[:40, :40]}
    tiles["labels"] = [encode_tiff(label_img[s][y0:y1, x0:x1]) for s, y0, y1, x0, x1 in
                       zip(tiles["source_row_id"], tiles["y0"], tiles["y1"], tiles["x0"], tiles["x1"])]
    tiles = tiles.drop(columns=["tile"]).sample(frac=1.0, random_state=0)
    merger = TileMerger()
    mschema = merger.configure(CFG(), table_of(tiles).schema)
    assert (merger.labels_column, merger.source_column) == ("labels", "source_row_id")
    merged = merger.execute(knime_ctx.make(), table_of(tiles, batch_rows=3)).to_pandas()
    assert list(merged.columns) == mschema.column_names
    assert sorted(merged.index) == ["big", "small"]
    out = decode_tiff(merged.loc["big", "labels"])
    assert out.shape == lbl.shape
    assert matching(lbl, out, thresh=0.5).f1 > 0.98
    assert merged.loc["big", "n_objects"] == len(np.unique(out)) - 1

    with pytest.raises(ValueError, match="only .* of its .* tiles"):
        merger.execute(knime_ctx.make(), table_of(tiles.iloc[1:]))
    with pytest.raises(knext.InvalidParametersError, match="tile geometry"):
        merger.configure(CFG(), table_of(tiles.drop(columns=["core_y0"])).schema)
    bad = tiles.copy()
    bad.iloc[0, bad.columns.get_loc("labels")] = encode_tiff(np.zeros((3, 3), np.uint16))
    with pytest.raises(ValueError, match=f"Row '{bad.index[0]}'.*does not match"):
        merger.execute(knime_ctx.make(), table_of(bad))
    with pytest.raises(RuntimeError, match="canceled"):
        tiler.execute(knime_ctx.make(cancel_after=0), table_of(df))


def test_predictor_large_image_mode(tmp_path: Path, big_pair, knime_model_bytes: bytes, knime_ctx) -> None:
    img, _ = big_pair
    write_image(tmp_path / "scan.tif", img)
    port = StarDistModelPortObject.deserialize(StarDistModelSpec(summary_from_bundle(knime_model_bytes)),
                                               knime_model_bytes)
    df = pd.DataFrame({"image_path": [str(tmp_path / "scan.tif")]})
    node = StarDistPredictor()
    node.mode = "LARGE_IMAGE"
    node.large_image.tile_size = 64
    node.large_image.output_folder = str(tmp_path / "out")
    schema, obj_schema = node.configure(CFG(), port.spec, table_of(df).schema)
    assert schema.column_names == ["image_path", "label_path", "n_objects"]
    ctx = knime_ctx.make()
    out, objects = node.execute(ctx, port, table_of(df))
    odf = out.to_pandas()
    path = Path(odf["label_path"].iloc[0])
    assert path.is_file() and path.parent == tmp_path / "out"
    from cellseg.io import read_image

    assert read_image(path).shape == img.shape
    assert len(objects.to_pandas()) == odf["n_objects"].iloc[0]
    assert ctx.progress and ctx.progress[-1][0] == 1.0

    missing = pd.DataFrame({"image_path": [str(tmp_path / "nope.tif")]})
    with pytest.raises(ValueError, match="Row 'Row0'.*not found"):
        node.execute(knime_ctx.make(), port, table_of(missing))
    node.large_image.output_folder = ""
    with pytest.raises(knext.InvalidParametersError, match="Output folder"):
        node.configure(CFG(), port.spec, table_of(df).schema)

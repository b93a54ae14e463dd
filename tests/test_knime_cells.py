"""Image cells (PNG image, Path, string) and KNIME's table rules as the nodes implement them."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import knime.extension as knext
import numpy as np
import pytest
from PIL import Image

from cellseg.images import write_image
from cellseg_knime import cells
from cellseg_knime import tables as kt
from cellseg_knime.learners import read_training_table
from knime_cells import batch_sizes, image_df, png, table_of


def _roundtrip(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("shape,dtype,mode", [((40, 30), np.uint8, "L"), ((40, 30), np.uint16, "I;16"),
                                              ((40, 30, 3), np.uint8, "RGB"), ((40, 30, 4), np.uint8, "RGBA"),
                                              ((40, 30, 2), np.uint8, "LA")])
def test_png_cells_are_lossless(shape, dtype, mode) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    cell = cells.png_cell(arr)
    assert cell.mode == mode
    back = cells.read_cell(_roundtrip(cell), "r", "c")
    assert back.dtype == dtype and np.array_equal(back, arr)


def test_16_bit_label_cell_roundtrip_is_exact() -> None:
    lbl = np.arange(200 * 330, dtype=np.uint32).reshape(200, 330) % 65536  # every 16-bit label value
    cell = cells.labels_png_cell(lbl)
    back = cells.read_labels(_roundtrip(cell), "r", "labels")
    assert back.dtype == np.uint16 and np.array_equal(back, lbl)
    assert cells.labels_png_cell(np.full((4, 4), 65536, np.uint32)) is None  # too many objects
    assert cells.labels_tiff_dtype(np.full((4, 4), 65536, np.int64)).dtype == np.uint32


def test_what_png_cannot_hold_is_refused() -> None:
    assert cells.png_cell(np.zeros((8, 8), np.float32)) is None
    assert cells.png_cell(np.zeros((8, 8, 3), np.uint16)) is None  # 16-bit colour
    assert cells.png_cell(np.zeros((8, 8, 5), np.uint8)) is None
    assert cells.png_cell(np.zeros((8, 8), np.int32)) is None
    assert "float32" in cells.why_not_png(np.zeros((8, 8), np.float32))


def test_pil_modes() -> None:
    grey16 = np.array([[0, 300], [65535, 7]], np.uint16)
    as_i = Image.fromarray(grey16.astype(np.int32))  # 16-bit PNGs open as 'I' in older Pillow versions
    assert cells.read_cell(as_i, "r", "c").dtype == np.uint16
    pal = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8)).convert("P")
    assert np.array_equal(cells.read_labels(pal, "r", "labels"), [[0, 1], [2, 3]])  # indices are the labels
    assert cells.read_cell(pal, "r", "image").shape == (2, 2, 3)
    pal.info["transparency"] = 0
    with pytest.raises(ValueError, match="Row 'r', column 'image': a palette image with transparency"):
        cells.read_cell(pal, "r", "image")
    with pytest.raises(ValueError, match="mode 'CMYK' is not supported"):
        cells.read_cell(Image.new("CMYK", (4, 4)), "r", "image")
    with pytest.raises(ValueError, match="Row 'r', column 'labels'.*not a colour image"):
        cells.read_labels(png(np.zeros((4, 4, 3), np.uint8)), "r", "labels")


def test_file_cells(tmp_path: Path) -> None:
    img = np.arange(64, dtype=np.uint16).reshape(8, 8)
    write_image(tmp_path / "wf" / "data" / "a.tif", img)
    ctx = SimpleNamespace(get_workflow_data_area_dir=lambda: str(tmp_path / "wf" / "data"))
    from knime.types.builtin import FSLocationValue

    for cell in (str(tmp_path / "wf" / "data" / "a.tif"), "data/a.tif", cells.path_cell(tmp_path / "wf/data/a.tif"),
                 FSLocationValue("RELATIVE", "knime.workflow", "data/a.tif"),
                 FSLocationValue("RELATIVE", "knime.workflow.data", "a.tif"),
                 FSLocationValue("CUSTOM_URL", None, (tmp_path / "wf/data/a.tif").as_uri())):
        assert np.array_equal(cells.read_cell(cell, "r", "c", ctx), img), cell
    with pytest.raises(ValueError, match="Row 'r', column 'c'.*not a local file"):
        cells.read_cell(FSLocationValue("RELATIVE", "knime.mountpoint", "a.tif"), "r", "c", ctx)
    with pytest.raises(ValueError, match="Row 'r', column 'c': file '.*b.tif' not found"):
        cells.read_cell("data/b.tif", "r", "c", ctx)
    with pytest.raises(ValueError, match="Row 'r', column 'c': the cell is missing"):
        cells.read_cell(None, "r", "c", ctx)
    with pytest.raises(ValueError, match="is a int, not an image or a file path"):
        cells.read_cell(5, "r", "c", ctx)


def test_batch_writer_writes_batches_of_one_size() -> None:
    columns = [knext.Column(knext.string(), "name"), knext.Column(knext.int64(), "n"),
               knext.Column(cells.png_type(), "image")]
    out = kt.BatchWriter(columns, batch_rows=8)
    for i in range(21):
        out.add(f"r{i}", {"name": f"x{i}", "n": i, "image": cells.png_cell(np.full((2, 2), i, np.uint8))})
    table = out.table()
    assert batch_sizes(table) == [8, 8, 5]
    df = table.to_pandas()
    assert list(df.index) == [f"r{i}" for i in range(21)] and df["n"].dtype == np.int64
    with pytest.raises(KeyError, match="not in the output table"):
        out.add("x", {"other": 1})


def test_batch_writer_empty_output_has_the_configured_types() -> None:
    columns = [knext.Column(knext.string(), "name"), knext.Column(knext.double(), "v"),
               knext.Column(cells.png_type(), "image"), knext.Column(cells.path_type(), "path")]
    table = kt.BatchWriter(columns).table()
    assert table.num_rows == 0
    assert [c.ktype for c in table.schema] == [c.ktype for c in columns]


@pytest.mark.parametrize("kind", ("png", "path", "string"))
def test_training_table_reads_every_kind(kind: str, tmp_path: Path, tiny_dataset, knime_ctx) -> None:
    images, labels = tiny_dataset
    from cellseg_knime import compat

    if not compat.using_standin():
        pytest.skip("needs the stand-in's _as_input (a table as execute() receives it)")
    from knime.api.table import _as_input

    table = _as_input(table_of(image_df(images, labels, kind, tmp_path), batch_rows=2))
    got_images, got_labels, names = read_training_table(knime_ctx.make(), table, "image", "labels")
    assert names == ["Row 'Row0'", "Row 'Row1'", "Row 'Row2'"]
    for a, b in zip(got_images + got_labels, list(images) + list(labels)):
        assert np.array_equal(a, b)


def test_binary_masks_are_not_instance_labels() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6] = mask[10:15, 10:15] = 255
    with pytest.raises(ValueError, match="Row 'r', column 'labels': not instance labels: a mask that looks binary"):
        cells.read_labels(png(mask), "r", "labels")
    assert cells.read_labels(png(mask), "r", "labels", binary_ok=True).max() == 255

"""StarDist Predictor: label images, previews and an objects table; large images streamed tile by tile."""

from __future__ import annotations

import warnings
from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg.adapt import InputConfig
from cellseg.errors import CancelledError, InputError
from cellseg_knime import cells, node
from cellseg_knime import tables as kt
from cellseg_knime.outputs import CellSink, ImageOutputSettings, image_name, output_kind, output_ktype
from cellseg_knime.params import SINCE_0_3, config_from, param
from cellseg_knime.ports import StarDistModelPortObject, StarDistModelSpec, model_port_type
from cellseg_knime.views import Gallery

#: Columns of the objects table, with their KNIME types.
OBJECT_COLUMNS: list[tuple[str, str]] = [
    ("source_row_id", "string"),
    ("label", "int64"),
    ("centroid_y", "double"),
    ("centroid_x", "double"),
    ("area", "int64"),
    ("probability", "double"),
    ("polygon", "string"),
]


def objects_columns() -> list[Any]:
    types = {"string": knext.string(), "int64": knext.int64(), "double": knext.double()}
    return [knext.Column(types[t], n) for n, t in OBJECT_COLUMNS]


def objects_schema() -> knext.Schema:
    return knext.Schema.from_columns(objects_columns())


def add_objects(out: kt.BatchWriter, row_id: str, objects: pd.DataFrame) -> None:
    """The backend's objects of one image as rows of the objects table; RowIDs ``<row id>_<label>``."""
    columns = [np.asarray(objects[c]) for c in ("label", "centroid_y", "centroid_x", "area", "probability")]
    for label, cy, cx, area, prob, polygon in zip(*columns, objects["polygon"]):
        out.add(f"{row_id}_{int(label)}", {
            "source_row_id": row_id, "label": int(label), "centroid_y": float(cy), "centroid_x": float(cx),
            "area": int(area), "probability": float(prob), "polygon": str(polygon)})


class Mode(knext.EnumParameterOptions):
    TABLE = ("Images in the table", "Segment each image of the table (PNG image cells, Path cells or string paths) "
             "in memory; label images and previews are added.")
    LARGE_IMAGE = ("Large image files", "Stream huge image files (Path or string column) tile by tile in flat "
                   "memory and write label TIFFs to the output folder; their paths are added.")


@knext.parameter_group(label="Thresholds")
class ThresholdSettings:
    """Object probability and overlap thresholds."""

    use_model_thresholds = knext.BoolParameter(
        "Use the model's thresholds", "Use the thresholds optimised during training.", True)
    prob_thresh = knext.DoubleParameter(
        "Probability threshold", "Objects with a lower probability are dropped (higher: fewer objects).", 0.5,
        min_value=0.0, max_value=1.0).rule(knext.OneOf(use_model_thresholds, [False]), knext.Effect.SHOW)
    nms_thresh = knext.DoubleParameter(
        "Overlap (NMS) threshold", "Polygons overlapping more than this are suppressed (higher: more overlap).",
        0.4, min_value=0.0, max_value=1.0).rule(knext.OneOf(use_model_thresholds, [False]), knext.Effect.SHOW)


@knext.parameter_group(label="Input adaptation", since_version=SINCE_0_3)
class InputSettings:
    """How the images are brought to the model: resizing and intensity inversion."""

    scale = param(InputConfig, "scale", zero="the model's own: estimated when it was retrained, 1 otherwise",
                  since_version=SINCE_0_3)
    invert = param(InputConfig, "invert", since_version=SINCE_0_3)


@knext.parameter_group(label="Preview")
class PreviewSettings:
    """Preview images added to the output table."""

    preview = knext.BoolParameter("Add preview", "Add a PNG preview of each image with the object outlines.", True)
    preview_size = knext.IntParameter("Preview size", "Longest side of the previews in pixels.", 256,
                                      min_value=16, max_value=2048, is_advanced=True)


@knext.parameter_group(label="Large images")
class LargeImageSettings:
    """Streamed prediction of image files of any size."""

    tile_size = knext.IntParameter("Tile size", "Largest side of a tile's own region; the network sees at most "
                                   "this + 2 x overlap pixels per side at a time.", 1024,
                                   min_value=64, max_value=16384)
    overlap = knext.IntParameter("Overlap", "Overlap of neighbouring tiles in pixels, larger than the largest "
                                 "object (0 = chosen from the model).", 0, min_value=0, max_value=4096)


@knext.parameter_group(label="Advanced", is_advanced=True)
class PredictorAdvanced:
    """Batching and memory."""

    batch_size = knext.IntParameter("Images per batch", "Images segmented together: same-size images share network "
                                    "calls; cancel is checked between batches. Lower it for very large images.",
                                    8, min_value=1, max_value=256)
    n_tiles = knext.IntParameter("Tiles per axis", "Split each image into this many tiles per axis inside the "
                                 "network to save memory (1 = off).", 1, min_value=1, max_value=64)


@node("StarDist Predictor", knext.NodeType.PREDICTOR, "predictor")
@knext.input_port("StarDist model", "A trained StarDist model.", model_port_type)
@knext.input_table("Images", "Table with an image column: PNG image cells, Path cells or string file paths "
                   "(large-image mode: Path or string).")
@knext.output_table(
    "Segmented images",
    "The input table plus the label image (0 = background; a 16-bit PNG image cell, or a Path cell of the label "
    "TIFF written, see 'Image output'), the number of objects and optionally a PNG preview with the outlines.",
)
@knext.output_table(
    "Objects",
    "One row per detected object: RowID of the source image, label, centroid (y, x), area in pixels, "
    "probability and the polygon as WKT (x y pixel coordinates).",
)
@knext.output_view("Segmentation", "The first images with the outlines of their objects, and the first objects.")
class StarDistPredictor:
    """Segments the objects (e.g. nuclei) in images with a StarDist model.

    Each image is percentile-normalised like in training and brought to the model: RGB images for a grey
    model (and grey for an RGB model) are converted, images whose background (dark or bright) is not the
    model's are inverted, and images are resized by the model's scale (see *Input adaptation*; labels come
    back at the image's size). The network predicts object probabilities and star-convex polygons, and
    non-maximum suppression keeps the best non-overlapping ones. The output adds a label image per row (one
    integer per object) and a small preview; the second table lists every object, and the view shows the
    first images with their outlines.

    Images may be PNG image cells (e.g. from KNIME's image readers or the cellseg Image Reader), Path cells
    (e.g. from List Files/Folders) or string paths. Label images come out as 16-bit PNG image cells, or as
    TIFF files in a folder (Path cells) for images given as files or too large for a PNG cell.

    *Large image files* mode takes a column of file paths and streams each image tile by tile, so slide
    scans of any size segment in flat memory; objects crossing tile borders come out once and whole.
    """

    image_column = knext.ColumnParameter("Image column", "Column with the images (PNG image cells, Path cells or "
                                         "string paths).", port_index=1, column_filter=cells.is_image_column)
    mode = knext.EnumParameter("Mode", "Images in the table, or large image files streamed tile by tile.",
                               Mode.TABLE.name, Mode, style=knext.EnumParameter.Style.VALUE_SWITCH)
    output_column = knext.StringParameter(
        "Output column", "Name of the label column to add (made unique if the table has it already), e.g. "
        "'before' and 'after' when two models segment the same images. Empty: 'labels'.", "")
    thresholds = ThresholdSettings()
    input_adaptation = InputSettings()
    image_output = ImageOutputSettings()
    output = PreviewSettings().rule(knext.OneOf(mode, [Mode.TABLE.name]), knext.Effect.SHOW)
    large_image = LargeImageSettings().rule(knext.OneOf(mode, [Mode.LARGE_IMAGE.name]), knext.Effect.SHOW)
    advanced = PredictorAdvanced()

    # -- schemas ---------------------------------------------------------------------------------
    def _kind(self, schema: knext.Schema, col: str) -> str:
        if self.mode == Mode.LARGE_IMAGE.name:
            return "files"
        return output_kind(self.image_output, schema, col)

    def _added_columns(self, schema: knext.Schema, col: str) -> list[Any]:
        names = kt.column_names(schema)
        first = knext.Column(output_ktype(self._kind(schema, col)),
                             kt.unique_name(names, self.output_column.strip() or "labels"))
        names.append(first.name)
        cols = [first, knext.Column(knext.int64(), kt.unique_name(names, "n_objects"))]
        names.append(cols[1].name)
        if self.mode == Mode.TABLE.name and self.output.preview:
            cols.append(knext.Column(cells.png_type(), kt.unique_name(names, "preview")))
        return cols

    def _check(self, spec: StarDistModelSpec | None, schema: knext.Schema) -> str:
        if spec is None:
            raise knext.InvalidParametersError("Connect a StarDist model")
        large = self.mode == Mode.LARGE_IMAGE.name
        col = kt.pick_column(schema, self.image_column, "Image column",
                             accept=cells.is_file_column if large else cells.is_image_column,
                             kinds="Path or string (file path)" if large else cells.KINDS,
                             preferred=("image_path",) if large else ("image", "image_path"))
        self.image_column = col
        if large and self.large_image.tile_size % spec.divisor:
            raise knext.InvalidParametersError(
                f"Tile size {self.large_image.tile_size} must be a multiple of {spec.divisor} (the model's "
                "grid x 2^depth)")
        return col

    def _input(self) -> InputConfig:
        """Scale (None: the model's own) and inversion; InvalidParametersError for a bad value."""
        return config_from(InputConfig, self.input_adaptation)

    def _thresholds(self) -> tuple[float | None, float | None]:
        t = self.thresholds
        return (None, None) if t.use_model_thresholds else (t.prob_thresh, t.nms_thresh)

    def configure(self, config_context: knext.ConfigurationContext, model_spec: StarDistModelSpec,
                  table_schema: knext.Schema) -> Any:
        col = self._check(model_spec, table_schema)
        self._input()
        out = knext.Schema.from_columns(list(table_schema) + self._added_columns(table_schema, col))
        return out, objects_schema()

    # -- execution -------------------------------------------------------------------------------
    def execute(self, exec_context: knext.ExecutionContext, model: StarDistModelPortObject,
                table: knext.Table) -> Any:
        total = kt.require_rows(table, "image table")
        col = self._check(model.spec, table.schema)
        added = self._added_columns(table.schema, col)
        large = self.mode == Mode.LARGE_IMAGE.name
        exec_context.set_progress(0.0, "checking the inputs")
        names = self._names(table, col, exec_context)  # every cell checked before any output is written
        with CellSink(self._kind(table.schema, col), self.image_output, added[0].name, exec_context) as sink:
            sink.check_targets(names)
            exec_context.set_progress(0.0, "loading the model")
            cellseg_model = model.model
            out = kt.BatchWriter(list(table.schema) + added)
            objects_out = kt.BatchWriter(objects_columns())
            gallery = Gallery()
            n_objects_total = 0
            for done, df in kt.iter_rows(table, []):
                for start in range(0, len(df), self.advanced.batch_size):
                    kt.check_canceled(exec_context, f"{done + start} of {total} images segmented")
                    chunk = df.iloc[start:start + self.advanced.batch_size]
                    if large:
                        results = self._predict_large(exec_context, cellseg_model, chunk, col, sink,
                                                      done + start, total)
                    else:
                        results = self._predict_table(exec_context, cellseg_model, chunk, col, sink, gallery)
                    columns = [c.name for c in table.schema]
                    for rid, (_, row), r in zip(chunk.index, _rows(chunk, columns), results):
                        row[added[0].name] = r[0]
                        row[added[1].name] = len(r[1])
                        if len(added) > 2:
                            row[added[2].name] = r[2]
                        out.add(str(rid), row)
                        add_objects(objects_out, str(rid), r[1])
                        n_objects_total += len(r[1])
                        gallery.add_objects(str(rid), r[1])
                    finished = done + start + len(chunk)
                    exec_context.set_progress(finished / total, f"segmented {finished} of {total} images "
                                              f"({n_objects_total} objects)")
            return out.table(), objects_out.table(), gallery.view()

    def _names(self, table: knext.Table, col: str, ctx: Any) -> list[tuple[str, str]]:
        """``(output name, row id)`` of each row, after checking its cell (missing, unreadable, wrong mode)."""
        names = []
        for _, df in kt.iter_rows(table, [col]):
            for rid, value in zip(df.index, df[col]):
                cells.check_cell(value, str(rid), col, ctx)
                names.append((image_name(value, str(rid)), str(rid)))
        return names

    def _predict_table(self, ctx: Any, model: Any, chunk: pd.DataFrame, col: str, sink: CellSink,
                       gallery: Gallery) -> list[tuple[Any, ...]]:
        from cellseg import prediction

        prob, nms = self._thresholds()
        adapt = self._input()
        images = []
        for rid, cell in zip(chunk.index, chunk[col]):
            img = cells.read_image(cell, str(rid), col, ctx)
            prediction.check_input(model, img, f"Row '{rid}'")  # an InputError (a ValueError) naming the row
            images.append(img)
        n_tiles = self.advanced.n_tiles if self.advanced.n_tiles > 1 else None
        predicted = prediction.predict_batch(  # an InputError (a ValueError) names the row
            model, images, prob_thresh=prob, nms_thresh=nms, names=[f"Row '{rid}'" for rid in chunk.index],
            network_batch=self.advanced.batch_size, n_tiles=n_tiles, scale=adapt.scale, invert=adapt.invert)
        results = []
        for rid, cell, img, (labels, objects) in zip(chunk.index, chunk[col], images, predicted):
            row: tuple[Any, ...] = (sink.labels(labels, str(rid), image_name(cell, str(rid))), objects)
            if self.output.preview:
                row += (cells.preview_cell(img, labels, self.output.preview_size),)
            gallery.add_image(str(rid), img, labels)
            results.append(row)
        return results

    def _predict_large(self, ctx: Any, model: Any, chunk: pd.DataFrame, col: str, sink: CellSink,
                       done: int, total: int) -> list[tuple[Any, ...]]:
        from cellseg import streaming, tiling

        prob, nms = self._thresholds()
        adapt = self._input()
        overlap = self.large_image.overlap or None
        results = []
        for i, (rid, cell) in enumerate(zip(chunk.index, chunk[col])):
            if cells.missing(cell):
                raise ValueError(f"Row '{rid}', column '{col}': the cell is missing")
            src = cells.cell_path(cell, str(rid), col, ctx)
            if not src.is_file():
                raise ValueError(f"Row '{rid}', column '{col}': image file '{src}' not found")
            target = sink.target(image_name(cell, str(rid)), str(rid))
            k = done + i

            def progress(fraction: float, message: str, k: int = k) -> None:
                ctx.set_progress(min(1.0, (k + min(1.0, max(0.0, fraction))) / total),
                                 f"image {k + 1} of {total}: {message}")

            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", tiling.TilingWarning)
                    _, objects = streaming.predict_large(
                        model, src, sink.stage(target), tile_size=self.large_image.tile_size, overlap=overlap,
                        prob_thresh=prob, nms_thresh=nms, progress=progress, should_cancel=ctx.is_canceled,
                        scale=adapt.scale, invert=adapt.invert)
                for w in caught:
                    if issubclass(w.category, tiling.TilingWarning):
                        ctx.set_warning(f"Row '{rid}': {w.message}")
            except CancelledError as err:
                raise kt.canceled_error(err) from err
            except InputError as err:
                raise ValueError(f"Row '{rid}': {err}") from err
            results.append((cells.path_cell(target), objects))
        return results


def _rows(df: pd.DataFrame, names: list[str]) -> Any:
    """``(row id, {column: value})`` per row, column by column (frames of image cells cannot be iterrows'ed)."""
    values = [list(df[n]) for n in names]
    for i, rid in enumerate(df.index):
        yield rid, {n: v[i] for n, v in zip(names, values)}

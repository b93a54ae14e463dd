"""StarDist Predictor: label images, previews and an objects table; large images streamed tile by tile."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg.errors import CancelledError, InputError
from cellseg_knime import category, icon
from cellseg_knime import tables as kt
from cellseg_knime.ports import StarDistModelPortObject, StarDistModelSpec, model_port_type

#: Columns of the objects table (after ``source_row_id``), with pandas dtypes.
OBJECT_COLUMNS: list[tuple[str, str]] = [
    ("source_row_id", "object"),
    ("label", "int64"),
    ("centroid_y", "float64"),
    ("centroid_x", "float64"),
    ("area", "int64"),
    ("probability", "float64"),
    ("polygon", "object"),
]


def objects_schema() -> knext.Schema:
    types = {"object": knext.string(), "int64": knext.int64(), "float64": knext.double()}
    return knext.Schema.from_columns([knext.Column(types[t], n) for n, t in OBJECT_COLUMNS])


def objects_frame(row_id: str, objects: pd.DataFrame) -> pd.DataFrame:
    """The backend's objects of one image in the output layout; RowIDs ``<row id>_<label>``."""
    df = pd.DataFrame({
        "source_row_id": pd.Series([row_id] * len(objects), dtype=object),
        "label": np.asarray(objects["label"], dtype=np.int64),
        "centroid_y": np.asarray(objects["centroid_y"], dtype=np.float64),
        "centroid_x": np.asarray(objects["centroid_x"], dtype=np.float64),
        "area": np.asarray(objects["area"], dtype=np.int64),
        "probability": np.asarray(objects["probability"], dtype=np.float64),
        "polygon": pd.Series(list(objects["polygon"]), dtype=object),
    })
    df.index = pd.Index([f"{row_id}_{int(label)}" for label in df["label"]], dtype=object)
    return df


class Mode(knext.EnumParameterOptions):
    TABLE = ("Images in the table", "Segment each image of the table; label images and previews are added.")
    LARGE_IMAGE = ("Large image files", "Stream huge image files (path column) tile by tile in flat memory and "
                   "write label TIFFs to a folder; their paths are added.")


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


@knext.parameter_group(label="Output")
class OutputSettings:
    """Preview images added to the output table."""

    preview = knext.BoolParameter("Add preview", "Add a PNG preview of each image with the object outlines.", True)
    preview_size = knext.IntParameter("Preview size", "Longest side of the previews in pixels.", 256,
                                      min_value=16, max_value=2048, is_advanced=True)


@knext.parameter_group(label="Large images")
class LargeImageSettings:
    """Streamed prediction of image files of any size."""

    output_folder = knext.StringParameter("Output folder", "Folder for the label TIFFs (created if missing).", "")
    tile_size = knext.IntParameter("Tile size", "Largest side of a tile's own region; the network sees at most "
                                   "this + 2 x overlap pixels per side at a time.", 1024,
                                   min_value=64, max_value=16384)
    overlap = knext.IntParameter("Overlap", "Overlap of neighbouring tiles in pixels, larger than the largest "
                                 "object (0 = chosen from the model).", 0, min_value=0, max_value=4096)
    overwrite = knext.BoolParameter("Overwrite", "Overwrite existing label files.", True)


@knext.parameter_group(label="Advanced", is_advanced=True)
class PredictorAdvanced:
    """Batching and memory."""

    batch_size = knext.IntParameter("Images per batch", "Images segmented together: same-size images share network calls; "
                                    "cancel is checked between batches. Lower it for very large images.",
                                    8, min_value=1, max_value=256)
    n_tiles = knext.IntParameter("Tiles per axis", "Split each image into this many tiles per axis inside the "
                                 "network to save memory (1 = off).", 1, min_value=1, max_value=64)


@knext.node(
    name="StarDist Predictor",
    node_type=knext.NodeType.PREDICTOR,
    icon_path=icon("predictor"),
    category=category,
    id="predictor",
)
@knext.input_port("StarDist model", "A trained StarDist model.", model_port_type)
@knext.input_table("Images", "Table with an image column: TIFF bytes, or file paths (large-image mode: paths).")
@knext.output_table(
    "Segmented images",
    "The input table plus the label image (TIFF bytes, 0 = background) or, in large-image mode, the path of the "
    "label TIFF written; the number of objects; and optionally a PNG preview with the object outlines.",
)
@knext.output_table(
    "Objects",
    "One row per detected object: RowID of the source image, label, centroid (y, x), area in pixels, "
    "probability and the polygon as WKT (x y pixel coordinates).",
)
class StarDistPredictor:
    """Segments the objects (e.g. nuclei) in images with a StarDist model.

    Each image is percentile-normalised like in training, the network predicts object probabilities and
    star-convex polygons, and non-maximum suppression keeps the best non-overlapping ones. The output adds a
    label image per row (one integer per object) and a small preview; the second table lists every object.

    *Large image files* mode takes a column of file paths (e.g. from the Image Reader in file-paths mode) and
    streams each image tile by tile, so slide scans of any size segment in flat memory; objects crossing tile
    borders come out once and whole. Label images are written as TIFFs into the output folder.
    """

    image_column = knext.ColumnParameter("Image column", "Column with the images (TIFF bytes or paths).",
                                         port_index=1, column_filter=kt.is_image_column)
    mode = knext.EnumParameter("Mode", "Images in the table, or large image files streamed tile by tile.",
                               Mode.TABLE.name, Mode, style=knext.EnumParameter.Style.VALUE_SWITCH)
    output_column = knext.StringParameter(
        "Output column", "Name of the label column to add (made unique if the table has it already), e.g. "
        "'before' and 'after' when two models segment the same images. Empty: 'labels' ('label_path' for large "
        "image files).", "")
    thresholds = ThresholdSettings()
    output = OutputSettings().rule(knext.OneOf(mode, [Mode.TABLE.name]), knext.Effect.SHOW)
    large_image = LargeImageSettings().rule(knext.OneOf(mode, [Mode.LARGE_IMAGE.name]), knext.Effect.SHOW)
    advanced = PredictorAdvanced()

    # -- schemas ---------------------------------------------------------------------------------
    def _added_columns(self, schema: knext.Schema) -> list[Any]:
        names = kt.column_names(schema)
        large = self.mode == Mode.LARGE_IMAGE.name
        base = self.output_column.strip() or ("label_path" if large else "labels")
        first = knext.Column(knext.string() if large else knext.blob(), kt.unique_name(names, base))
        names.append(first.name)
        cols = [first, knext.Column(knext.int64(), kt.unique_name(names, "n_objects"))]
        names.append(cols[1].name)
        if self.mode == Mode.TABLE.name and self.output.preview:
            cols.append(knext.Column(kt.png_type(), kt.unique_name(names, "preview")))
        return cols

    def _check(self, spec: StarDistModelSpec | None, schema: knext.Schema) -> str:
        if spec is None:
            raise knext.InvalidParametersError("Connect a StarDist model")
        large = self.mode == Mode.LARGE_IMAGE.name
        col = kt.pick_column(schema, self.image_column, "Image column",
                             accept=kt.is_string if large else kt.is_image_column,
                             kinds="string (file path)" if large else "binary (TIFF bytes) or string (file path)",
                             preferred=("image_path",) if large else ("image", "image_path"))
        self.image_column = col
        if large:
            kt.check_path(self.large_image.output_folder, "Output folder", must_exist=False)
            if self.large_image.tile_size % spec.divisor:
                raise knext.InvalidParametersError(
                    f"Tile size {self.large_image.tile_size} must be a multiple of {spec.divisor} (the model's "
                    "grid x 2^depth)")
        return col

    def _thresholds(self) -> tuple[float | None, float | None]:
        t = self.thresholds
        return (None, None) if t.use_model_thresholds else (t.prob_thresh, t.nms_thresh)

    def configure(self, config_context: knext.ConfigurationContext, model_spec: StarDistModelSpec,
                  table_schema: knext.Schema) -> Any:
        self._check(model_spec, table_schema)
        out = knext.Schema.from_columns(list(table_schema) + self._added_columns(table_schema))
        return out, objects_schema()

    # -- execution -------------------------------------------------------------------------------
    def execute(self, exec_context: knext.ExecutionContext, model: StarDistModelPortObject,
                table: knext.Table) -> Any:
        total = kt.require_rows(table, "image table")
        col = self._check(model.spec, table.schema)
        added = [c.name for c in self._added_columns(table.schema)]
        exec_context.set_progress(0.0, "loading the model")
        cellseg_model = model.model
        out = knext.BatchOutputTable.create(row_ids="keep")
        objects_out = knext.BatchOutputTable.create(row_ids="keep")
        large = self.mode == Mode.LARGE_IMAGE.name
        folder = (kt.check_path(self.large_image.output_folder, "Output folder", must_exist=False, ctx=exec_context)
                  if large else None)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ValueError(f"Output folder '{folder}' cannot be created: {err.strerror or err}") from err
        seen: set[str] = set()
        n_objects_total = 0
        any_objects = False
        for done, df in kt.iter_rows(table, []):
            for start in range(0, len(df), self.advanced.batch_size):
                kt.check_canceled(exec_context, f"{done + start} of {total} images segmented")
                chunk = df.iloc[start:start + self.advanced.batch_size]
                if large:
                    results = self._predict_large(exec_context, cellseg_model, chunk, col, folder, seen,
                                                  done + start, total)
                else:
                    results = self._predict_table(exec_context, cellseg_model, chunk, col)
                chunk = chunk.copy()
                chunk[added[0]] = pd.Series([r[0] for r in results], index=chunk.index, dtype=object)
                chunk[added[1]] = pd.Series([len(r[1]) for r in results], index=chunk.index, dtype="int64")
                if len(added) > 2:
                    chunk[added[2]] = pd.Series([r[2] for r in results], index=chunk.index, dtype=object)
                out.append(chunk)
                for rid, r in zip(chunk.index, results):
                    if len(r[1]):
                        objects_out.append(objects_frame(str(rid), r[1]))
                        any_objects = True
                    n_objects_total += len(r[1])
                finished = done + start + len(chunk)
                exec_context.set_progress(finished / total, f"segmented {finished} of {total} images "
                                          f"({n_objects_total} objects)")
        if not any_objects:
            objects_out.append(kt.empty_frame(OBJECT_COLUMNS))
        return out, objects_out

    def _predict_table(self, ctx: Any, model: Any, chunk: pd.DataFrame, col: str) -> list[tuple[Any, ...]]:
        from cellseg import prediction

        prob, nms = self._thresholds()
        images = []
        for rid, cell in zip(chunk.index, chunk[col]):
            img = kt.read_image(cell, str(rid), col)
            try:
                prediction.check_input(model, img, f"Row '{rid}'")
            except InputError as err:
                raise ValueError(str(err)) from err
            images.append(img)
        n_tiles = (self.advanced.n_tiles,) * 2 if self.advanced.n_tiles > 1 else None
        try:
            batch_fn = getattr(prediction, "predict_batch", None)
            if batch_fn is not None and n_tiles is None and len(images) > 1:
                kwargs: dict[str, Any] = {"prob_thresh": prob, "nms_thresh": nms}
                params = inspect.signature(batch_fn).parameters
                if "names" in params:
                    kwargs["names"] = [f"Row '{rid}'" for rid in chunk.index]
                if "network_batch" in params:
                    kwargs["network_batch"] = self.advanced.batch_size
                predicted = list(batch_fn(model, images, **kwargs))
            else:
                predicted = [prediction.predict(model, img, prob_thresh=prob, nms_thresh=nms, n_tiles=n_tiles,
                                                name=f"Row '{rid}'") for rid, img in zip(chunk.index, images)]
        except InputError as err:
            raise ValueError(str(err)) from err
        results = []
        for img, (labels, objects) in zip(images, predicted):
            row: tuple[Any, ...] = (kt.labels_cell(labels), objects)
            if self.output.preview:
                row += (kt.preview_cell(img, labels, self.output.preview_size),)
            results.append(row)
        return results

    def _predict_large(self, ctx: Any, model: Any, chunk: pd.DataFrame, col: str, folder: Path | None,
                       seen: set[str], done: int, total: int) -> list[tuple[Any, ...]]:
        from cellseg import tiling

        assert folder is not None
        prob, nms = self._thresholds()
        overlap = self.large_image.overlap or None
        results = []
        for i, (rid, cell) in enumerate(zip(chunk.index, chunk[col])):
            if kt._missing(cell):
                raise ValueError(f"Row '{rid}': the cell of column '{col}' is missing")
            src = Path(str(cell)).expanduser()
            if not src.is_file():
                raise ValueError(f"Row '{rid}': image file '{src}' not found")
            name = f"{src.stem}_labels.tif"
            if name in seen:
                name = f"{src.stem}_{re.sub(r'[^A-Za-z0-9_.-]', '_', str(rid))}_labels.tif"
            seen.add(name)
            target = folder / name
            if target.exists() and not self.large_image.overwrite:
                raise ValueError(f"Row '{rid}': '{target}' exists (enable Overwrite)")
            k = done + i

            def progress(fraction: float, message: str, k: int = k) -> None:
                ctx.set_progress(min(1.0, (k + min(1.0, max(0.0, fraction))) / total),
                                 f"image {k + 1} of {total}: {message}")

            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", tiling.TilingWarning)
                    path, objects = tiling.predict_large(
                        model, src, target, tile_size=self.large_image.tile_size, overlap=overlap,
                        prob_thresh=prob, nms_thresh=nms, progress=progress, should_cancel=ctx.is_canceled)
                for w in caught:
                    if issubclass(w.category, tiling.TilingWarning):
                        ctx.set_warning(f"Row '{rid}': {w.message}")
            except CancelledError as err:
                raise kt.canceled_error(err) from err
            except InputError as err:
                raise ValueError(f"Row '{rid}': {err}") from err
            results.append((str(path), objects))
        return results

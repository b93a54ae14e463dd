"""Image Tiler and Tile Merger: split images into overlapping tiles and merge per-tile label images.

Any per-tile processing (e.g. the StarDist Predictor, or other nodes) can sit between them; the merger
resolves objects crossing tile borders with :func:`cellseg.tiling.merge_labels`, so each object comes out
once and whole and labels are unique over the image.
"""

from __future__ import annotations

from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

from cellseg.errors import InputError
from cellseg_knime import category, icon
from cellseg_knime import tables as kt

#: Tile geometry columns written by the Image Tiler and read by the Tile Merger.
GEOMETRY_COLUMNS: tuple[str, ...] = ("tile_index", "n_tiles", "y0", "x0", "y1", "x1", "core_y0", "core_x0",
                                     "core_y1", "core_x1", "image_height", "image_width")
_TILE_FIELDS = ("index", "y0", "x0", "y1", "x1", "core_y0", "core_x0", "core_y1", "core_x1")


def tiler_schema() -> knext.Schema:
    return knext.Schema.from_columns([knext.Column(knext.string(), "source_row_id")]
                                     + [knext.Column(knext.int64(), c) for c in GEOMETRY_COLUMNS]
                                     + [knext.Column(knext.blob(), "tile")])


def merger_schema() -> knext.Schema:
    return knext.Schema.from_columns([
        knext.Column(knext.string(), "source_row_id"),
        knext.Column(knext.blob(), "labels"),
        knext.Column(knext.int64(), "n_objects"),
        knext.Column(knext.int64(), "image_height"),
        knext.Column(knext.int64(), "image_width"),
    ])


@knext.node(
    name="Image Tiler",
    node_type=knext.NodeType.MANIPULATOR,
    icon_path=icon("image_tiler"),
    category=category,
    id="image_tiler",
)
@knext.input_table("Images", "Table with an image column (TIFF bytes or file paths).")
@knext.output_table(
    "Tiles",
    "One row per tile: RowID of the source image, tile index and count, the tile's box (y0, x0, y1, x1) and "
    "the core region it is responsible for (core_*), the image size, and the tile as TIFF bytes.",
)
class ImageTiler:
    """Splits images into overlapping tiles, one row per tile.

    Neighbouring tiles overlap so that an object cut at one tile's border is whole in another; each tile
    carries the core region it is responsible for. Process the tiles with any nodes (e.g. the StarDist
    Predictor) and put them back together with the Tile Merger, which resolves objects on tile borders.
    Choose an overlap larger than the largest object. For a single huge image file, the StarDist Predictor's
    large-image mode does the same streamed, in flat memory.
    """

    image_column = knext.ColumnParameter("Image column", "Column with the images.", port_index=0,
                                         column_filter=kt.is_image_column)
    tile_size = knext.IntParameter("Tile size", "Largest side of a tile's own region (core) in pixels; a tile "
                                   "with its overlap is at most this + 2 x overlap, and an image side up to that is "
                                   "one tile.", 1024, min_value=16, max_value=16384)
    overlap = knext.IntParameter("Overlap", "Overlap of neighbouring tiles in pixels; larger than the largest "
                                 "object.", 64, min_value=0, max_value=4096)
    divisor = knext.IntParameter("Size divisor", "Tile sizes and offsets are multiples of this (e.g. the model's "
                                 "grid x 2^depth), where the image allows.", 1, min_value=1, max_value=256,
                                 is_advanced=True)

    def _check(self, schema: knext.Schema) -> str:
        col = kt.pick_column(schema, self.image_column, "Image column", preferred=("image", "image_path"))
        self.image_column = col
        return col

    def configure(self, config_context: knext.ConfigurationContext, schema: knext.Schema) -> knext.Schema:
        self._check(schema)
        return tiler_schema()

    def execute(self, exec_context: knext.ExecutionContext, table: knext.Table) -> Any:
        from cellseg.tiling import split_image

        total = kt.require_rows(table, "image table")
        col = self._check(table.schema)
        out = knext.BatchOutputTable.create(row_ids="keep")
        for done, df in kt.iter_rows(table, [col]):
            for i, (rid, cell) in enumerate(zip(df.index, df[col])):
                kt.check_canceled(exec_context, f"{done + i} of {total} images tiled")
                img = kt.read_image(cell, str(rid), col)
                try:
                    tiles = split_image(img, tile_size=self.tile_size, overlap=self.overlap, divisor=self.divisor)
                except InputError as err:
                    raise ValueError(f"Row '{rid}': {err}") from err
                rows = []
                for tile, data in tiles:
                    row: dict[str, Any] = {"source_row_id": str(rid), "tile_index": int(tile.index),
                                           "n_tiles": len(tiles)}
                    row.update({k: int(getattr(tile, k)) for k in _TILE_FIELDS[1:]})
                    row.update(image_height=int(img.shape[0]), image_width=int(img.shape[1]),
                               tile=kt.image_cell(data))
                    rows.append(row)
                frame = pd.DataFrame(rows, columns=tiler_schema().column_names,
                                     index=pd.Index([f"{rid}_tile{r['tile_index']}" for r in rows], dtype=object))
                for c in GEOMETRY_COLUMNS:
                    frame[c] = frame[c].astype("int64")
                out.append(frame)
                exec_context.set_progress((done + i + 1) / total, f"tiled image {done + i + 1} of {total} "
                                          f"into {len(tiles)} tiles")
        return out


@knext.node(
    name="Tile Merger",
    node_type=knext.NodeType.MANIPULATOR,
    icon_path=icon("tile_merger"),
    category=category,
    id="tile_merger",
)
@knext.input_table(
    "Tiles", "Per-tile label images with the Image Tiler's geometry columns (source_row_id, tile_index, n_tiles, "
    "y0, x0, y1, x1, core_*, image_height, image_width), in any order.")
@knext.output_table("Merged labels", "One row per source image: its RowID, the merged label image (TIFF bytes), "
                    "the number of objects and the image size. RowIDs are the source RowIDs.")
class TileMerger:
    """Merges per-tile label images back into one label image per source image.

    Objects in the overlap of neighbouring tiles are resolved once: each object is kept whole from the tile
    whose core contains it and dropped from the others, and labels are renumbered uniquely over the image.
    Tiles of an image are merged as soon as all of them (``n_tiles``) have arrived, so large tables stream.
    """

    labels_column = knext.ColumnParameter("Label column", "Column with the per-tile label images.", port_index=0,
                                          column_filter=kt.is_image_column)
    source_column = knext.ColumnParameter("Source column", "Column with the source image's RowID (groups tiles).",
                                          port_index=0, column_filter=kt.is_string)

    def _check(self, schema: knext.Schema) -> tuple[str, str]:
        columns = {c.name: c for c in schema}
        missing = [c for c in GEOMETRY_COLUMNS if c not in columns]
        if missing:
            raise knext.InvalidParametersError(
                f"The input table lacks the tile geometry column(s) {', '.join(missing)} (use the Image Tiler)")
        wrong = [c for c in GEOMETRY_COLUMNS if not kt.is_int_column(columns[c])]
        if wrong:
            raise knext.InvalidParametersError(f"Tile geometry column(s) {', '.join(wrong)} must be integer")
        source = kt.pick_column(schema, self.source_column, "Source column", accept=kt.is_string,
                                kinds="string", preferred=("source_row_id",))
        labels = kt.pick_column(schema, self.labels_column, "Label column", accept=kt.is_blob,
                                kinds="binary (TIFF bytes)", preferred=("labels",),
                                exclude=("tile",) if "labels" not in columns else ())
        self.source_column, self.labels_column = source, labels
        return source, labels

    def configure(self, config_context: knext.ConfigurationContext, schema: knext.Schema) -> knext.Schema:
        self._check(schema)
        return merger_schema()

    def execute(self, exec_context: knext.ExecutionContext, table: knext.Table) -> Any:
        from cellseg.tiling import Tile, merge_labels

        total = kt.require_rows(table, "tile table")
        source, labels_col = self._check(table.schema)
        out = knext.BatchOutputTable.create(row_ids="keep")
        pending: dict[str, dict[str, Any]] = {}
        finished: set[str] = set()
        merged = 0
        for done, df in kt.iter_rows(table, [source, labels_col, *GEOMETRY_COLUMNS]):
            for i, (rid, row) in enumerate(df.iterrows()):
                kt.check_canceled(exec_context, f"{done + i} of {total} tiles read")
                key = row[source]
                if kt._missing(key):
                    raise ValueError(f"Row '{rid}': the cell of column '{source}' is missing")
                key = str(key)
                if key in finished:
                    raise ValueError(f"Row '{rid}': image '{key}' has more tiles than its n_tiles")
                geo = {c: row[c] for c in GEOMETRY_COLUMNS}
                if any(kt._missing(v) for v in geo.values()):
                    raise ValueError(f"Row '{rid}': a tile geometry cell is missing")
                geo = {c: int(v) for c, v in geo.items()}
                tile = Tile(geo["tile_index"], *(geo[k] for k in _TILE_FIELDS[1:]))
                lbl = kt.read_labels(row[labels_col], str(rid), labels_col,
                                     (tile.y1 - tile.y0, tile.x1 - tile.x0))
                group = pending.setdefault(key, {"shape": (geo["image_height"], geo["image_width"]),
                                                 "n": geo["n_tiles"], "tiles": {}})
                if tile.index in group["tiles"]:
                    raise ValueError(f"Row '{rid}': tile {tile.index} of image '{key}' appears twice")
                group["tiles"][tile.index] = (tile, lbl)
                if len(group["tiles"]) == group["n"]:
                    out.append(self._merge(key, pending.pop(key), merge_labels))
                    finished.add(key)
                    merged += 1
                exec_context.set_progress((done + i + 1) / total, f"read {done + i + 1} of {total} tiles, "
                                          f"merged {merged} images")
        if pending:
            key, group = next(iter(pending.items()))
            raise ValueError(f"Image '{key}': only {len(group['tiles'])} of its {group['n']} tiles are in the table")
        if merged == 0:
            out.append(kt.empty_frame([("source_row_id", "object"), ("labels", "object"), ("n_objects", "int64"),
                                       ("image_height", "int64"), ("image_width", "int64")]))
        return out

    @staticmethod
    def _merge(key: str, group: dict[str, Any], merge_labels: Any) -> pd.DataFrame:
        items = [group["tiles"][k] for k in sorted(group["tiles"])]
        try:
            labels = merge_labels(group["shape"], [t for t, _ in items], [lbl for _, lbl in items])
        except InputError as err:
            raise ValueError(f"Image '{key}': {err}") from err
        n_objects = int(len(np.unique(labels[labels > 0])))
        return pd.DataFrame({"source_row_id": [key], "labels": [kt.labels_cell(labels)],
                             "n_objects": np.array([n_objects], dtype=np.int64),
                             "image_height": np.array([group["shape"][0]], dtype=np.int64),
                             "image_width": np.array([group["shape"][1]], dtype=np.int64)},
                            index=pd.Index([key], dtype=object))

"""Image Tiler and Tile Merger: split images into overlapping tiles and merge per-tile label images.

Any per-tile processing (e.g. the StarDist Predictor, or other nodes) can sit between them; the merger
resolves objects crossing tile borders with :func:`cellseg.tiling.merge_labels`, so each object comes out
once and whole and labels are unique over the image.
"""

from __future__ import annotations

from typing import Any

import knime.extension as knext
import numpy as np

from cellseg.errors import InputError
from cellseg_knime import cells, node
from cellseg_knime import tables as kt
from cellseg_knime.outputs import CellSink, ImageOutputSettings, image_name, output_kind, output_ktype

#: Tile geometry columns written by the Image Tiler and read by the Tile Merger.
GEOMETRY_COLUMNS: tuple[str, ...] = ("tile_index", "n_tiles", "y0", "x0", "y1", "x1", "core_y0", "core_x0",
                                     "core_y1", "core_x1", "image_height", "image_width")
_TILE_FIELDS = ("index", "y0", "x0", "y1", "x1", "core_y0", "core_x0", "core_y1", "core_x1")


def tiler_columns(kind: str) -> list[Any]:
    return ([knext.Column(knext.string(), "source_row_id")]
            + [knext.Column(knext.int64(), c) for c in GEOMETRY_COLUMNS]
            + [knext.Column(output_ktype(kind), "tile")])


def merger_columns(kind: str) -> list[Any]:
    return [
        knext.Column(knext.string(), "source_row_id"),
        knext.Column(output_ktype(kind), "labels"),
        knext.Column(knext.int64(), "n_objects"),
        knext.Column(knext.int64(), "image_height"),
        knext.Column(knext.int64(), "image_width"),
    ]


@node("Image Tiler", knext.NodeType.MANIPULATOR, "image_tiler")
@knext.input_table("Images", "Table with an image column (PNG image cells, Path cells or string file paths).")
@knext.output_table(
    "Tiles",
    "One row per tile: RowID of the source image, tile index and count, the tile's box (y0, x0, y1, x1) and "
    "the core region it is responsible for (core_*), the image size, and the tile (a PNG image cell, or a Path "
    "cell of a TIFF file, see 'Image output').",
)
class ImageTiler:
    """Splits images into overlapping tiles, one row per tile.

    Neighbouring tiles overlap so that an object cut at one tile's border is whole in another; each tile
    carries the core region it is responsible for. Process the tiles with any nodes (e.g. the StarDist
    Predictor) and put them back together with the Tile Merger, which resolves objects on tile borders.
    Choose an overlap larger than the largest object. For a single huge image file, the StarDist Predictor's
    large-image mode does the same streamed, in flat memory.
    """

    image_column = knext.ColumnParameter("Image column", "Column with the images (PNG image cells, Path cells or "
                                         "string paths).", port_index=0, column_filter=cells.is_image_column)
    tile_size = knext.IntParameter("Tile size", "Largest side of a tile's own region (core) in pixels; a tile "
                                   "with its overlap is at most this + 2 x overlap, and an image side up to that is "
                                   "one tile.", 1024, min_value=16, max_value=16384)
    overlap = knext.IntParameter("Overlap", "Overlap of neighbouring tiles in pixels; larger than the largest "
                                 "object.", 64, min_value=0, max_value=4096)
    divisor = knext.IntParameter("Size divisor", "Tile sizes and offsets are multiples of this (e.g. the model's "
                                 "grid x 2^depth), where the image allows.", 1, min_value=1, max_value=256,
                                 is_advanced=True)
    image_output = ImageOutputSettings()

    def _check(self, schema: knext.Schema) -> tuple[str, str]:
        col = kt.pick_column(schema, self.image_column, "Image column", preferred=("image", "image_path"))
        self.image_column = col
        return col, output_kind(self.image_output, schema, col)

    def configure(self, config_context: knext.ConfigurationContext, schema: knext.Schema) -> knext.Schema:
        _, kind = self._check(schema)
        return knext.Schema.from_columns(tiler_columns(kind))

    def execute(self, exec_context: knext.ExecutionContext, table: knext.Table) -> Any:
        from cellseg.tiling import split_image

        total = kt.require_rows(table, "image table")
        col, kind = self._check(table.schema)
        with CellSink(kind, self.image_output, "tile", exec_context) as sink:
            out = kt.BatchWriter(tiler_columns(kind))
            for done, df in kt.iter_rows(table, [col]):
                for i, (rid, cell) in enumerate(zip(df.index, df[col])):
                    kt.check_canceled(exec_context, f"{done + i} of {total} images tiled")
                    img = cells.read_image(cell, str(rid), col, exec_context)
                    try:
                        tiles = split_image(img, tile_size=self.tile_size, overlap=self.overlap, divisor=self.divisor)
                    except InputError as err:
                        raise ValueError(f"Row '{rid}': {err}") from err
                    name = image_name(cell, str(rid))
                    for tile, data in tiles:
                        row: dict[str, Any] = {"source_row_id": str(rid), "tile_index": int(tile.index),
                                               "n_tiles": len(tiles)}
                        row.update({k: int(getattr(tile, k)) for k in _TILE_FIELDS[1:]})
                        row.update(image_height=int(img.shape[0]), image_width=int(img.shape[1]),
                                   tile=sink.image(data, f"{rid}_tile{tile.index}", f"{name}_tile{tile.index}"))
                        out.add(f"{rid}_tile{tile.index}", row)
                    exec_context.set_progress((done + i + 1) / total, f"tiled image {done + i + 1} of {total} "
                                              f"into {len(tiles)} tiles")
            return out.table()


@node("Tile Merger", knext.NodeType.MANIPULATOR, "tile_merger")
@knext.input_table(
    "Tiles", "Per-tile label images with the Image Tiler's geometry columns (source_row_id, tile_index, n_tiles, "
    "y0, x0, y1, x1, core_*, image_height, image_width), in any order.")
@knext.output_table("Merged labels", "One row per source image: its RowID, the merged label image (a 16-bit PNG "
                    "image cell, or a Path cell of a TIFF file, see 'Image output'), the number of objects and the "
                    "image size. RowIDs are the source RowIDs.")
class TileMerger:
    """Merges per-tile label images back into one label image per source image.

    Objects in the overlap of neighbouring tiles are resolved once: each object is kept whole from the tile
    whose core contains it and dropped from the others, and labels are renumbered uniquely over the image.
    Tiles of an image are merged as soon as all of them (``n_tiles``) have arrived, so large tables stream.
    """

    labels_column = knext.ColumnParameter("Label column", "Column with the per-tile label images.", port_index=0,
                                          column_filter=cells.is_image_column)
    source_column = knext.ColumnParameter("Source column", "Column with the source image's RowID (groups tiles).",
                                          port_index=0, column_filter=cells.is_string)
    image_output = ImageOutputSettings()

    def _check(self, schema: knext.Schema) -> tuple[str, str]:
        columns = {c.name: c for c in schema}
        missing = [c for c in GEOMETRY_COLUMNS if c not in columns]
        if missing:
            raise knext.InvalidParametersError(
                f"The input table lacks the tile geometry column(s) {', '.join(missing)} (use the Image Tiler)")
        wrong = [c for c in GEOMETRY_COLUMNS if not kt.is_int_column(columns[c])]
        if wrong:
            raise knext.InvalidParametersError(f"Tile geometry column(s) {', '.join(wrong)} must be integer")
        source = kt.pick_column(schema, self.source_column, "Source column", accept=cells.is_string,
                                kinds="string", preferred=("source_row_id",))
        labels = kt.pick_column(schema, self.labels_column, "Label column", preferred=("labels",),
                                exclude=("tile",) if "labels" not in columns else ())
        self.source_column, self.labels_column = source, labels
        return source, labels

    def configure(self, config_context: knext.ConfigurationContext, schema: knext.Schema) -> knext.Schema:
        _, labels = self._check(schema)
        return knext.Schema.from_columns(merger_columns(output_kind(self.image_output, schema, labels)))

    def execute(self, exec_context: knext.ExecutionContext, table: knext.Table) -> Any:
        from cellseg.tiling import Tile, merge_labels

        total = kt.require_rows(table, "tile table")
        source, labels_col = self._check(table.schema)
        kind = output_kind(self.image_output, table.schema, labels_col)
        self._precheck(table, source, labels_col, exec_context)
        with CellSink(kind, self.image_output, "labels", exec_context) as sink:
            sink.check_targets([(key, key) for key in self._sources(table, source)])
            out = kt.BatchWriter(merger_columns(kind))
            pending: dict[str, dict[str, Any]] = {}
            finished: set[str] = set()
            merged = 0
            names = [source, labels_col, *GEOMETRY_COLUMNS]
            for done, df in kt.iter_rows(table, names):
                values = {n: list(df[n]) for n in names}  # column by column: image cells cannot be iterrows'ed
                for i, rid in enumerate(df.index):
                    row = {n: values[n][i] for n in names}
                    kt.check_canceled(exec_context, f"{done + i} of {total} tiles read")
                    key = row[source]
                    if cells.missing(key):
                        raise ValueError(f"Row '{rid}': the cell of column '{source}' is missing")
                    key = str(key)
                    if key in finished:
                        raise ValueError(f"Row '{rid}': image '{key}' has more tiles than its n_tiles")
                    geo = {c: row[c] for c in GEOMETRY_COLUMNS}
                    if any(cells.missing(v) for v in geo.values()):
                        raise ValueError(f"Row '{rid}': a tile geometry cell is missing")
                    geo = {c: int(v) for c, v in geo.items()}
                    tile = Tile(geo["tile_index"], *(geo[k] for k in _TILE_FIELDS[1:]))
                    lbl = cells.read_labels(row[labels_col], str(rid), labels_col,
                                            (tile.y1 - tile.y0, tile.x1 - tile.x0), exec_context)
                    group = pending.setdefault(key, {"shape": (geo["image_height"], geo["image_width"]),
                                                     "n": geo["n_tiles"], "tiles": {}})
                    if tile.index in group["tiles"]:
                        raise ValueError(f"Row '{rid}': tile {tile.index} of image '{key}' appears twice")
                    group["tiles"][tile.index] = (tile, lbl)
                    if len(group["tiles"]) == group["n"]:
                        self._merge(out, sink, key, pending.pop(key), merge_labels)
                        finished.add(key)
                        merged += 1
                    exec_context.set_progress((done + i + 1) / total, f"read {done + i + 1} of {total} tiles, "
                                              f"merged {merged} images")
            if pending:
                key, group = next(iter(pending.items()))
                raise ValueError(f"Image '{key}': only {len(group['tiles'])} of its {group['n']} tiles are in the table")
            return out.table()

    @staticmethod
    def _sources(table: knext.Table, source: str) -> list[str]:
        keys: dict[str, None] = {}
        for _, df in kt.iter_rows(table, [source]):
            keys.update(dict.fromkeys(str(k) for k in df[source] if not cells.missing(k)))
        return list(keys)

    @staticmethod
    def _precheck(table: knext.Table, source: str, labels_col: str, ctx: Any) -> None:
        """Every image's tiles complete and unique, every cell present, before any output is written."""
        groups: dict[str, tuple[int, set[int]]] = {}
        names = [source, labels_col, "tile_index", "n_tiles"]
        for _, df in kt.iter_rows(table, names):
            values = {n: list(df[n]) for n in names}
            for i, rid in enumerate(df.index):
                for n in names:
                    if n != labels_col and cells.missing(values[n][i]):
                        raise ValueError(f"Row '{rid}', column '{n}': the cell is missing")
                cells.check_cell(values[labels_col][i], str(rid), labels_col, ctx)
                key, index = str(values[source][i]), int(values["tile_index"][i])
                n_tiles, seen = groups.setdefault(key, (int(values["n_tiles"][i]), set()))
                if index in seen:
                    raise ValueError(f"Row '{rid}': tile {index} of image '{key}' appears twice")
                seen.add(index)
        for key, (n_tiles, seen) in groups.items():
            if len(seen) != n_tiles:
                raise ValueError(f"Image '{key}': only {len(seen)} of its {n_tiles} tiles are in the table")

    @staticmethod
    def _merge(out: kt.BatchWriter, sink: CellSink, key: str, group: dict[str, Any], merge_labels: Any) -> None:
        items = [group["tiles"][k] for k in sorted(group["tiles"])]
        try:
            labels = merge_labels(group["shape"], [t for t, _ in items], [lbl for _, lbl in items])
        except InputError as err:
            raise ValueError(f"Image '{key}': {err}") from err
        n_objects = int(len(np.unique(labels[labels > 0])))
        out.add(key, {"source_row_id": key, "labels": sink.labels(labels, key, key), "n_objects": n_objects,
                      "image_height": int(group["shape"][0]), "image_width": int(group["shape"][1])})

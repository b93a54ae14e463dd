"""Where the nodes put the images they make: PNG image cells in the table, or TIFF files in a folder.

One setting group (:class:`ImageOutputSettings`) and one writer (:class:`CellSink`) serve every node that
outputs label images or tiles. *Like the input* keeps images in the table when they came as PNG cells and
as files when they came as files; files are written atomically into the output folder (default: a folder in
the workflow's data area, so that it travels with the workflow) and the table holds their Path cells.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import knime.extension as knext
import numpy as np

from cellseg.errors import InputError
from cellseg.images import write_image
from cellseg_knime import cells


class ImageOutput(knext.EnumParameterOptions):
    AUTO = ("Like the input", "PNG image cells when the input images are PNG cells, TIFF files when they are "
            "files (Path or string column).")
    PNG = ("PNG image cells", "16-bit PNG image cells in the table, shown by KNIME's table view (at most 65,535 "
           "objects and 8192 x 8192 pixels per image).")
    FILES = ("TIFF files", "TIFF files written to the output folder; the table holds their paths (Path cells). "
             "For images of any size or object count.")


@knext.parameter_group(label="Image output", since_version="0.2.0")
class ImageOutputSettings:
    """Images in the table (PNG cells) or TIFF files in a folder."""

    output = knext.EnumParameter("Images as", "PNG image cells in the table, or TIFF files whose paths go into "
                                 "the table.", ImageOutput.AUTO.name, ImageOutput)
    folder = knext.StringParameter(
        "Output folder", "Folder for the TIFF files (created if missing; relative paths are relative to the "
        "workflow folder). Empty: a folder named after the output column in the workflow's data area.", "")
    overwrite = knext.BoolParameter("Overwrite", "Replace files of the same name in the output folder. Off: a "
                                    "name that exists is an error before any work.", False)


def output_kind(settings: Any, schema: Any, input_column: str) -> str:
    """``"png"`` or ``"files"`` for the chosen setting and the kind of the input column (for *Like the input*)."""
    if settings.output == ImageOutput.PNG.name:
        return "png"
    if settings.output == ImageOutput.FILES.name:
        return "files"
    return "png" if cells.is_png(next(c for c in schema if c.name == input_column)) else "files"


def output_ktype(kind: str) -> Any:
    return cells.png_type() if kind == "png" else cells.path_type()


class CellSink:
    """Makes the output cells of one column: PNG image cells, or TIFF files in ``folder`` and Path cells.

    Use it as a context manager: files are written into a hidden staging folder inside the output folder
    and moved into place only when the node's work succeeded, so a failing or canceled node leaves no
    half set of files and no temporary files.
    """

    def __init__(self, kind: str, settings: Any, column: str, ctx: Any = None) -> None:
        self.kind = kind
        self.column = column
        self.overwrite = bool(settings.overwrite)
        self.folder: Path | None = None
        self._names: set[str] = set()
        self._staging: Path | None = None
        self._staged: list[tuple[Path, Path]] = []
        if kind == "files":
            self.folder = self._folder(settings.folder, ctx)

    def __enter__(self) -> CellSink:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        try:
            if error is None:
                for staged, final in self._staged:
                    os.replace(staged, final)
        finally:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            self._staging, self._staged = None, []

    def stage(self, final: Path) -> Path:
        """Where to write the file that becomes ``final`` once the node succeeded."""
        assert self.folder is not None
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=".cellseg-staging-", dir=self.folder))
        staged = self._staging / final.name
        self._staged.append((staged, final))
        return staged

    def _folder(self, value: str, ctx: Any) -> Path:
        if value.strip():
            folder = Path(value.strip()).expanduser()
            base = cells.workflow_dir(ctx)
            if not folder.is_absolute() and base is not None:
                folder = base / folder
        else:
            base = cells.workflow_dir(ctx)
            if base is None:
                raise knext.InvalidParametersError("Output folder: no folder given")
            folder = base / "data" / cells.safe_name(self.column)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise knext.InvalidParametersError(f"Output folder '{folder}' cannot be created: "
                                               f"{err.strerror or err}") from err
        if not os.access(folder, os.W_OK):
            raise knext.InvalidParametersError(f"Output folder '{folder}' is not writable")
        return folder

    def target(self, name: str, row_id: str) -> Path:
        """The file for ``name``, unique within this run; an existing file is an error unless overwriting."""
        assert self.folder is not None
        stem = cells.safe_name(name)
        if stem in self._names:
            stem = f"{stem}_{cells.safe_name(row_id)}"
        self._names.add(stem)
        path = self.folder / f"{stem}_{cells.safe_name(self.column)}.tif"
        if path.exists() and not self.overwrite:
            raise ValueError(f"Row '{row_id}': '{path}' exists; enable Overwrite in the image output settings or "
                             "choose another output folder")
        return path

    def check_targets(self, names: list[tuple[str, str]]) -> None:
        """Check every file name of ``(name, row_id)`` pairs before any work (no existing file replaced)."""
        if self.kind != "files":
            return
        saved = set(self._names)
        try:
            for name, row_id in names:
                self.target(name, row_id)
        finally:
            self._names = saved

    def labels(self, labels: np.ndarray, row_id: str, name: str) -> Any:
        """The cell of a label image."""
        if self.kind == "png":
            cell = cells.labels_png_cell(labels)
            if cell is None:
                raise ValueError(f"Row '{row_id}': {int(np.max(labels, initial=0))} objects in a {labels.shape[0]}x"
                                 f"{labels.shape[1]} label image do not fit a 16-bit PNG cell; set 'Images as' to "
                                 "TIFF files")
            return cell
        return self._write(cells.labels_tiff_dtype(labels), row_id, name)

    def image(self, image: np.ndarray, row_id: str, name: str) -> Any:
        """The cell of an image (e.g. a tile)."""
        if self.kind == "png":
            cell = cells.png_cell(image)
            if cell is None:
                raise ValueError(f"Row '{row_id}': {cells.why_not_png(image)}; set 'Images as' to TIFF files")
            return cell
        return self._write(np.asarray(image), row_id, name)

    def _write(self, array: np.ndarray, row_id: str, name: str) -> Any:
        path = self.target(name, row_id)
        try:
            write_image(self.stage(path), array)
        except InputError as err:
            raise ValueError(f"Row '{row_id}': {err}") from err
        return cells.path_cell(path)


def image_name(value: Any, row_id: str) -> str:
    """A name for the outputs of a row: the image file's stem for file cells, else the row id."""
    path = getattr(value, "path", value)
    if isinstance(path, str) and path.strip():
        return Path(path.strip()).stem
    return row_id

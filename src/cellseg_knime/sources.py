"""Source nodes: Nuclei Simulator, Image Reader and StarDist Model Reader."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import knime.extension as knext
import numpy as np

from cellseg.bundle import pretrained_names
from cellseg.errors import InputError, ModelLoadError
from cellseg.folders import list_images
from cellseg.images import SUPPORTED_SUFFIXES, check_image, read_image
from cellseg.masks import check_mask, read_mask
from cellseg_knime import cells, node
from cellseg_knime import tables as kt
from cellseg_knime.ports import (
    StarDistModelPortObject,
    StarDistModelSpec,
    model_port_type,
    summary_for_pretrained,
    summary_from_bundle,
)

# -- Nuclei Simulator ----------------------------------------------------------------------------


class SimPreset(knext.EnumParameterOptions):
    LOW_NOISE = ("HL60 low noise", "Round HL60-like nuclei, bright and clean (the simulator's reference).")
    HIGH_NOISE = ("HL60 high noise", "Round HL60-like nuclei with few photons, blur and read noise.")
    GRANULOCYTE_LOW_NOISE = ("Granulocyte low noise", "Lobed granulocyte-like nuclei, clean.")
    GRANULOCYTE_HIGH_NOISE = ("Granulocyte high noise", "Lobed granulocyte-like nuclei, noisy.")
    MIXED = ("Mixed", "Each image draws one of the four presets.")


@node("Nuclei Simulator", knext.NodeType.SOURCE, "nuclei_simulator")
@knext.output_table(
    "Simulated images",
    "One row per image: name, image (16-bit PNG image cell), ground-truth instance labels (16-bit PNG image "
    "cell), number of objects and, optionally, a PNG preview with the label outlines.",
)
class NucleiSimulator:
    """Simulates fluorescence microscopy images of nuclei with ground-truth instance labels.

    Images mimic HL60 cell lines and granulocytes (round or lobed nuclei, touching and clustered) under a
    camera model with Poisson and read noise. Use the table to train or test StarDist models without any
    annotated data, e.g. Nuclei Simulator -> StarDist Learner -> StarDist Predictor -> StarDist Scorer.
    The same seed always gives the same images; image *i* does not depend on the number of images.
    """

    n_images = knext.IntParameter("Number of images", "How many images to simulate.", 8, min_value=1,
                                  max_value=100000)
    image_size = knext.IntParameter("Image size", "Width and height of the square images in pixels.", 256,
                                    min_value=32, max_value=8192)
    preset = knext.EnumParameter("Preset", "Nuclei type and noise level.", SimPreset.LOW_NOISE.name, SimPreset)
    seed = knext.IntParameter("Seed", "Random seed; the same seed gives the same images.", 0, min_value=0)
    preview = knext.BoolParameter("Add preview", "Add a PNG column showing each image with its label outlines.",
                                  True)
    preview_size = knext.IntParameter("Preview size", "Longest side of the previews in pixels.", 256,
                                      min_value=16, max_value=2048, is_advanced=True)

    def _columns(self) -> list[Any]:
        cols = [
            knext.Column(knext.string(), "image_name"),
            knext.Column(cells.png_type(), "image"),
            knext.Column(cells.png_type(), "labels"),
            knext.Column(knext.int64(), "n_objects"),
        ]
        if self.preview:
            cols.append(knext.Column(cells.png_type(), "preview"))
        return cols

    def configure(self, config_context: knext.ConfigurationContext) -> knext.Schema:
        return knext.Schema.from_columns(self._columns())

    def execute(self, exec_context: knext.ExecutionContext) -> Any:
        from cellseg.simulate import simulate_image

        preset = self.preset.lower()
        n = self.n_images
        out = kt.BatchWriter(self._columns())
        for i, child in enumerate(np.random.SeedSequence(self.seed).spawn(n)):
            kt.check_canceled(exec_context, f"{i} of {n} images simulated")
            try:
                img, lbl = simulate_image(self.image_size, preset, np.random.default_rng(child))
            except InputError as err:
                raise knext.InvalidParametersError(str(err)) from err
            image, labels = cells.png_cell(img), cells.labels_png_cell(lbl)
            if image is None or labels is None:
                raise knext.InvalidParametersError(f"Image size {self.image_size}: {cells.why_not_png(img)}")
            row = {"image_name": f"sim_{i:04d}", "image": image, "labels": labels,
                   "n_objects": int(len(np.unique(lbl[lbl > 0])))}
            if self.preview:
                row["preview"] = cells.preview_cell(img, lbl, self.preview_size)
            out.add(f"Row{i}", row)
            exec_context.set_progress((i + 1) / n, f"simulated image {i + 1} of {n}")
        return out.table()


# -- Image Reader --------------------------------------------------------------------------------


class CellContent(knext.EnumParameterOptions):
    IMAGE = ("Image data", "Read the files and put the images into the table as lossless PNG image cells (8- or "
             "16-bit grey, RGB or RGBA images up to 8192 x 8192 pixels).")
    PATH = ("File paths", "Only list the files as Path cells: for large images (the Predictor's large-image mode) "
            "and images PNG cannot hold exactly (float, 16-bit colour, more than 4 channels); every node reads them.")


def _glob_images(pattern: str) -> list[Path]:
    files = [Path(p) for p in glob.glob(pattern, recursive=True)]
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                  and not p.name.startswith("."))


@node("Image Reader", knext.NodeType.SOURCE, "image_reader")
@knext.output_table(
    "Images",
    "One row per image file (sorted by name): name, path (Path cell), the image as a PNG image cell (or only "
    "the path) and, with a mask folder, the matching label image (16-bit PNG image cell, or its path).",
)
class ImageReader:
    """Reads microscopy images (TIFF, PNG, JPEG) from a folder or a glob pattern into a table.

    Images are stored losslessly as PNG image cells, which KNIME shows in its table view (8- and 16-bit grey,
    RGB and RGBA). Images PNG cannot hold exactly (float, 16-bit colour, more than four channels) are read in
    *file paths* mode: every cellseg node reads images from Path or string columns too. Optionally a mask folder is matched by file name (``a.tif`` in the image
    folder and ``a.tif`` or ``a.png`` in the mask folder) and its instance label images are added, ready for
    the StarDist Learner or Retrainer. In *file paths* mode only the paths are listed, e.g. for the
    Predictor's large-image mode, which streams huge images tile by tile.
    """

    path = knext.StringParameter(
        "Images", "A folder of images, or a glob pattern such as /data/*.tif or /data/**/*.png.", "")
    mask_folder = knext.StringParameter(
        "Mask folder", "Optional folder of instance label images matched to the images by file name (stem).", "")
    content = knext.EnumParameter("Cell content", "Put the image data or only the file paths into the table.",
                                  CellContent.IMAGE.name, CellContent)
    label_components = knext.BoolParameter(
        "Label connected components of masks",
        "Masks that are binary (0 and one value) are labelled by connected components instead of rejected.",
        False, is_advanced=True)

    def _columns(self) -> list[Any]:
        cols = [knext.Column(knext.string(), "image_name"), knext.Column(cells.path_type(), "image_path")]
        masks = bool(self.mask_folder.strip())
        if self.content == CellContent.IMAGE.name:
            cols.append(knext.Column(cells.png_type(), "image"))
            if masks:
                cols.append(knext.Column(cells.png_type(), "labels"))
            cols += [knext.Column(knext.int64(), n) for n in ("height", "width", "channels")]
        elif masks:
            cols.append(knext.Column(cells.path_type(), "label_path"))
        return cols

    def _files(self, ctx: Any = None) -> list[Path]:
        pattern = self.path.strip()
        if any(ch in pattern for ch in "*?["):
            base = kt.workflow_dir(ctx)
            path = Path(pattern).expanduser()
            files = _glob_images(str(base / path if base is not None and not path.is_absolute() else path))
            if not files:
                raise knext.InvalidParametersError(f"Images: no image files match '{pattern}'")
            return files
        folder = kt.check_path(pattern, "Images", ctx=ctx)
        if folder.is_file():
            return [folder]
        try:
            return list_images(folder)
        except InputError as err:
            raise knext.InvalidParametersError(str(err)) from err

    def _masks(self, ctx: Any = None) -> dict[str, Path] | None:
        if not self.mask_folder.strip():
            return None
        folder = kt.check_path(self.mask_folder, "Mask folder", ctx=ctx)
        if not folder.is_dir():
            raise knext.InvalidParametersError(f"Mask folder: '{folder}' is not a folder")
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith("."):
                out.setdefault(p.stem, p)
        return out

    def configure(self, config_context: knext.ConfigurationContext) -> knext.Schema:
        kt.check_path(self.path, "Images", must_exist=False, ctx=config_context)
        if not any(ch in self.path for ch in "*?["):
            kt.check_path(self.path, "Images", ctx=config_context)
        if self.mask_folder.strip():
            kt.check_path(self.mask_folder, "Mask folder", ctx=config_context)
        return knext.Schema.from_columns(self._columns())

    def execute(self, exec_context: knext.ExecutionContext) -> Any:
        with kt.warnings_to(exec_context):
            return self._read(exec_context)

    def _read(self, exec_context: knext.ExecutionContext) -> Any:
        files = self._files(exec_context)
        masks = self._masks(exec_context)
        if masks is not None:
            missing = [f.name for f in files if f.stem not in masks]
            if missing:
                raise ValueError(f"Mask folder: no mask for {len(missing)} image(s), e.g. {', '.join(missing[:5])}")
        read = self.content == CellContent.IMAGE.name
        out = kt.BatchWriter(self._columns())
        n = len(files)
        for i, f in enumerate(files):
            kt.check_canceled(exec_context, f"{i} of {n} files read")
            row: dict[str, Any] = {"image_name": f.stem, "image_path": cells.path_cell(f)}
            if read:
                try:
                    img = check_image(read_image(f), str(f))
                    row["image"] = cells.png_cell(img)
                    if row["image"] is None:
                        raise InputError(f"{cells.why_not_png(img)}; set 'Cell content' to File paths (every "
                                         "cellseg node reads images from files)")
                    if masks is not None:
                        mpath = masks[f.stem]
                        msk = read_mask(mpath)
                        if msk.ndim == 3 and msk.shape[-1] == 1:
                            msk = msk[..., 0]
                        if msk.shape != img.shape[:2]:
                            raise InputError(f"{mpath}: mask shape {msk.shape} does not match image shape "
                                             f"{img.shape[:2]} ({f.name})")
                        lbl = check_mask(msk, str(mpath), label_components=self.label_components)
                        row["labels"] = cells.labels_png_cell(lbl)
                        if row["labels"] is None:
                            raise InputError(f"{mpath}: {int(lbl.max())} objects do not fit a 16-bit PNG cell; set "
                                             "'Cell content' to File paths")
                except InputError as err:
                    raise ValueError(f"File {i + 1} of {n} ({f.name}): {err}") from err
                row.update(height=int(img.shape[0]), width=int(img.shape[1]), channels=cells.channels_of(img))
            elif masks is not None:
                row["label_path"] = cells.path_cell(masks[f.stem])
            out.add(f"Row{i}", row)
            exec_context.set_progress((i + 1) / n, f"read {f.name} ({i + 1} of {n})")
        return out.table()


# -- StarDist Model Reader -----------------------------------------------------------------------


class ModelSource(knext.EnumParameterOptions):
    PRETRAINED = ("Pretrained model", "A model shipped with cellseg, or one of stardist's (needs internet).")
    FILE = ("Folder or zip", "A stardist/cellseg model folder (config.json + weights) or a .zip of one.")


_PRETRAINED = pretrained_names()


@node("StarDist Model Reader", knext.NodeType.SOURCE, "model_reader")
@knext.output_port("StarDist model", "The loaded StarDist model.", model_port_type)
class ModelReader:
    """Reads a StarDist model: a model folder or zip, or a pretrained model by name.

    Folders may be any stardist 2D model folder (``config.json`` and ``weights_best.h5``), e.g. one trained
    in Python or written by the StarDist Model Writer; a ``.zip`` of such a folder works too. Pretrained
    names are the models shipped with cellseg (e.g. ``dsb2018_simmix``, trained on DSB 2018 fluorescence
    nuclei plus simulated images) and stardist's own (``2D_versatile_fluo``...; those are downloaded and
    need internet access). Feed the model to the StarDist Predictor, or retrain it on a few annotated
    images of your own with the StarDist Retrainer.
    """

    source = knext.EnumParameter("Model source", "Where the model comes from.", ModelSource.PRETRAINED.name,
                                 ModelSource, style=knext.EnumParameter.Style.VALUE_SWITCH)
    pretrained_name = knext.StringParameter(
        "Pretrained model", "Name of a pretrained model.", _PRETRAINED[0] if _PRETRAINED else "",
        enum=_PRETRAINED or None,
    ).rule(knext.OneOf(source, [ModelSource.PRETRAINED.name]), knext.Effect.SHOW)
    path = knext.StringParameter(
        "Model folder or zip", "Path of a model folder or a .zip file.", "",
    ).rule(knext.OneOf(source, [ModelSource.FILE.name]), knext.Effect.SHOW)

    def _summary(self) -> dict[str, Any]:
        try:
            if self.source == ModelSource.FILE.name:
                return summary_from_bundle(kt.check_path(self.path, "Model folder or zip"))
            if not self.pretrained_name:
                raise knext.InvalidParametersError("Pretrained model: no name given")
            return summary_for_pretrained(self.pretrained_name)
        except ModelLoadError as err:
            raise knext.InvalidParametersError(str(err)) from err

    def configure(self, config_context: knext.ConfigurationContext) -> StarDistModelSpec:
        return StarDistModelSpec(self._summary())

    def execute(self, exec_context: knext.ExecutionContext) -> StarDistModelPortObject:
        from cellseg.models import load_model

        self._summary()
        source = (str(kt.check_path(self.path, "Model folder or zip", ctx=exec_context))
                  if self.source == ModelSource.FILE.name
                  else self.pretrained_name)
        exec_context.set_progress(0.1, f"loading model {source}")
        try:
            model = load_model(source)
        except (ModelLoadError, InputError) as err:
            raise ValueError(str(err)) from err
        exec_context.set_progress(1.0, f"loaded {model.name}")
        return StarDistModelPortObject.from_model(model)

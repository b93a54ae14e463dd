"""StarDist Model Writer: a model port to a stardist model folder or a .zip, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import knime.extension as knext

from cellseg.bundle import check_model_target
from cellseg.errors import InputError
from cellseg.files import write_bytes_atomic
from cellseg_knime import node
from cellseg_knime import tables as kt
from cellseg_knime.ports import StarDistModelPortObject, StarDistModelSpec, model_port_type


@node("StarDist Model Writer", knext.NodeType.SINK, "model_writer")
@knext.input_port("StarDist model", "The model to write.", model_port_type)
class ModelWriter:
    """Writes a StarDist model to a folder or a .zip file.

    A folder gets stardist's own layout (``config.json``, ``thresholds.json``, ``weights_best.h5``) plus
    ``cellseg.json`` with the architecture and provenance, so plain stardist in Python
    (``StarDist2D(None, name=..., basedir=...)``), the cellseg command line and the StarDist Model Reader can
    load it. A path ending in ``.zip`` writes the same files zipped. Files are written to a temporary sibling
    first and then renamed, so an interrupted write never leaves a half-written model.
    """

    path = knext.StringParameter("Model folder or zip",
                                 "Where to write the model; a path ending in .zip writes a zip file.", "")
    overwrite = knext.BoolParameter("Overwrite", "Replace an existing model at the path. Only a model (a model "
                                    "folder or zip, recognised by its files) is ever replaced; any other file or "
                                    "folder is an error.", False)

    def _target(self, ctx: Any = None) -> Path:
        path = kt.check_path(self.path, "Model folder or zip", must_exist=False, ctx=ctx)
        if not path.is_absolute():
            return path  # configure: relative paths are resolved against the workflow folder at execution
        try:
            return check_model_target(path, self.overwrite)
        except InputError as err:
            message = str(err) + ("" if self.overwrite or not path.exists() else "; enable Overwrite to replace a model")
            raise knext.InvalidParametersError(message) from err

    def configure(self, config_context: knext.ConfigurationContext, model_spec: StarDistModelSpec) -> None:
        if model_spec is None:
            raise knext.InvalidParametersError("Connect a StarDist model")
        self._target(config_context)

    def execute(self, exec_context: knext.ExecutionContext, model: StarDistModelPortObject) -> None:
        path = self._target(exec_context)
        exec_context.set_progress(0.1, f"writing {path}")
        try:
            if path.suffix.lower() == ".zip":
                check_model_target(path, self.overwrite)
                write_bytes_atomic(path, model.data)  # the port's bundle bytes, unchanged
            else:
                model.model.save(path, overwrite=self.overwrite)
        except OSError as err:
            raise ValueError(f"cannot write the model to '{path}': {err.strerror or err}") from err
        exec_context.set_progress(1.0, f"wrote {path}")

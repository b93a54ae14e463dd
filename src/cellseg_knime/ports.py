"""The StarDist model port: a JSON-able spec (readable without TensorFlow) and the model bundle bytes.

The spec is :meth:`cellseg.models.CellsegModel.summary` (backbone, rays, grid, input channels, patch size,
thresholds, steps trained, provenance). It can also be computed from a bundle folder or zip without
building the network (:func:`summary_from_bundle`), which the Model Reader uses in ``configure``.
The port object serializes to :meth:`CellsegModel.to_bytes` and loads the network only when asked.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import knime.extension as knext

from cellseg.errors import ModelLoadError

# Architectures of stardist's registered pretrained models (they are downloaded only when executed).
_STARDIST_PRETRAINED: dict[str, dict[str, Any]] = {
    "2D_versatile_fluo": {"n_channel_in": 1},
    "2D_paper_dsb2018": {"n_channel_in": 1},
    "2D_versatile_he": {"n_channel_in": 3},
    "2D_demo": {"n_channel_in": 1},
}


class StarDistModelSpec(knext.PortObjectSpec):
    """Spec of the model port: the model summary (a JSON-able dict)."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self._summary = json.loads(json.dumps(summary))  # a JSON-able copy

    @property
    def summary(self) -> dict[str, Any]:
        return self._summary

    @property
    def n_channel_in(self) -> int:
        return int(self._summary.get("n_channel_in", 1))

    @property
    def backbone(self) -> str:
        return str(self._summary.get("backbone", "unet"))

    @property
    def n_rays(self) -> int:
        return int(self._summary.get("n_rays", 32))

    @property
    def divisor(self) -> int:
        """Image sides the network accepts are multiples of this (grid x 2**depth)."""
        if "divisor" in self._summary:
            return int(self._summary["divisor"])
        grid = self._summary.get("grid", [2, 2])
        return int(max(grid) * 2 ** int(self._summary.get("unet_n_depth", 3)))

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self._summary.get("thresholds", {"prob": 0.5, "nms": 0.4}))

    def serialize(self) -> dict:
        return {"summary": self._summary}

    @classmethod
    def deserialize(cls, data: dict, java_callback: Any = None) -> StarDistModelSpec:
        return cls(data.get("summary", data))

    def __repr__(self) -> str:
        return f"StarDistModelSpec(backbone={self.backbone!r}, n_rays={self.n_rays}, channels={self.n_channel_in})"


class StarDistModelPortObject(knext.PortObject):
    """A StarDist model: bundle zip bytes, loaded into a :class:`CellsegModel` on first use."""

    def __init__(self, spec: StarDistModelSpec, data: bytes | None = None, model: Any = None) -> None:
        super().__init__(spec)
        if data is None and model is None:
            raise ValueError("a model port object needs bundle bytes or a model")
        self._data = data
        self._model = model

    @classmethod
    def from_model(cls, model: Any) -> StarDistModelPortObject:
        """Wrap a :class:`cellseg.models.CellsegModel` (its spec is its summary)."""
        return cls(StarDistModelSpec(model.summary()), model=model)

    @property
    def data(self) -> bytes:
        """The bundle as zip bytes."""
        if self._data is None:
            self._data = self._model.to_bytes()
        return self._data

    @property
    def model(self) -> Any:
        """The :class:`cellseg.models.CellsegModel` (loaded from the bytes on first access; imports TensorFlow)."""
        if self._model is None:
            from cellseg.models import load_model

            self._model = load_model(self._data)  # type: ignore[arg-type]
        return self._model

    def serialize(self) -> bytes:
        return self.data

    @classmethod
    def deserialize(cls, spec: StarDistModelSpec, storage: bytes) -> StarDistModelPortObject:
        return cls(spec, data=bytes(storage))


model_port_type = knext.port_type(
    "StarDist Model", StarDistModelPortObject, StarDistModelSpec, id="org.cellseg.stardist.model"
)


# -- summaries without TensorFlow ----------------------------------------------------------------


def summary_from_meta(model_config: dict[str, Any], thresholds: dict[str, float] | None,
                      provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The same dict as ``CellsegModel.summary()``, from a bundle's JSON files."""
    grid = [int(g) for g in model_config.get("grid", [2, 2])]
    depth = int(model_config.get("unet_n_depth", 3))
    prov_all = dict(provenance or {})
    trainings = prov_all.get("trainings", []) or []
    prov = {k: v for k, v in prov_all.items() if k != "trainings"}
    prov["n_trainings"] = len(trainings)
    if trainings:
        last = trainings[-1]
        prov["last_training"] = {k: last.get(k) for k in ("kind", "n_images", "steps", "seconds", "data")}
    t = thresholds or {"prob": 0.5, "nms": 0.4}
    return {
        "backbone": str(model_config.get("backbone", "unet")),
        "n_rays": int(model_config.get("n_rays", 32)),
        "grid": grid,
        "n_channel_in": int(model_config.get("n_channel_in", 1)),
        "patch_size": [int(p) for p in model_config.get("patch_size", [256, 256])],
        "unet_n_depth": depth,
        "unet_n_filter_base": int(model_config.get("unet_n_filter_base", 32)),
        "divisor": max(grid) * 2**depth,
        "thresholds": {"prob": float(t.get("prob", 0.5)), "nms": float(t.get("nms", 0.4))},
        "steps_trained": int(prov_all.get("steps_trained", 0)),
        "provenance": prov,
    }


def _from_files(read: Any, origin: str) -> dict[str, Any]:
    """Summary from a reader ``read(name) -> bytes | None`` over a bundle's files."""
    raw = read("config.json")
    if raw is None:
        raise ModelLoadError(f"model {origin} has no config.json")
    try:
        sd = json.loads(raw)
        meta = json.loads(read("cellseg.json") or b"{}")
        thr = json.loads(read("thresholds.json") or b"null")
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"model {origin}: invalid JSON ({err})") from err
    if "model_config" in meta:
        mc = dict(meta["model_config"])
    else:
        mc = {
            "backbone": "unet",
            "n_rays": sd.get("n_rays", 32),
            "grid": sd.get("grid", [2, 2]),
            "n_channel_in": sd.get("n_channel_in", 1),
            "unet_n_depth": sd.get("unet_n_depth", 3),
            "unet_n_filter_base": sd.get("unet_n_filter_base", 32),
            "patch_size": sd.get("train_patch_size", [256, 256]),
        }
    prov = meta.get("provenance") or {"name": Path(origin).stem, "imported_from": origin, "steps_trained": 0}
    return summary_from_meta(mc, thr, prov)


def summary_from_bundle(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """Model summary of a bundle folder, zip file or zip bytes, read from its JSON files (no TensorFlow)."""
    if isinstance(source, bytes | bytearray):
        return _summary_from_zip(io.BytesIO(bytes(source)), "bytes")
    path = Path(source)
    if path.is_dir():
        def read(name: str) -> bytes | None:
            f = path / name
            return f.read_bytes() if f.is_file() else None

        return _from_files(read, str(path))
    if path.is_file():
        return _summary_from_zip(path, str(path))
    raise ModelLoadError(f"model {path}: no such folder or file")


def _summary_from_zip(file: Any, origin: str) -> dict[str, Any]:
    try:
        zf = zipfile.ZipFile(file)
    except zipfile.BadZipFile as err:
        raise ModelLoadError(f"model {origin}: not a model zip ({err})") from err
    with zf:
        names = zf.namelist()
        configs = [n for n in names if n == "config.json" or n.endswith("/config.json")]
        if len(configs) != 1:
            raise ModelLoadError(f"model {origin}: expected one config.json in the zip, found {len(configs)}")
        prefix = configs[0][: -len("config.json")]

        def read(name: str) -> bytes | None:
            return zf.read(prefix + name) if prefix + name in names else None

        return _from_files(read, origin)


def summary_for_pretrained(name: str) -> dict[str, Any]:
    """Summary of a pretrained model by name: shipped zips are read; stardist's from known architectures."""
    from cellseg.models import PRETRAINED_DIR

    shipped = PRETRAINED_DIR / f"{name}.zip"
    if shipped.is_file():
        return summary_from_bundle(shipped)
    if name in _STARDIST_PRETRAINED:
        mc = {"backbone": "unet", "n_rays": 32, "grid": [2, 2], "unet_n_depth": 3, "unet_n_filter_base": 32,
              "patch_size": [256, 256], **_STARDIST_PRETRAINED[name]}
        return summary_from_meta(mc, None, {"name": name, "imported_from": f"stardist pretrained {name}"})
    raise ModelLoadError(f"unknown pretrained model {name!r}")


def check_channels(spec: StarDistModelSpec, channels: int | None, what: str) -> None:
    """Raise InvalidParametersError if ``channels`` (when known) does not fit the model."""
    if channels is not None and channels != spec.n_channel_in:
        raise knext.InvalidParametersError(
            f"{what} has {channels} channel(s) but the model expects {spec.n_channel_in}"
        )

"""The model bundle without TensorFlow: its metadata (:class:`BundleMeta`), read and checked from a
folder, zip file or zip bytes, and the pretrained models.

:mod:`cellseg.models` builds networks from what is read here; the KNIME nodes use it to describe a model
in ``configure`` without importing TensorFlow. The files and the zip format are in
:mod:`cellseg.bundle_files`, whose public names are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellseg.adapt import InputSpec
from cellseg.bundle_files import (
    BUNDLE_FILES,
    BUNDLE_META,
    CONFIG_FILE,
    MAX_COMPRESSION_RATIO,
    MAX_JSON_BYTES,
    MAX_UNPACKED_BYTES,
    MAX_ZIP_ENTRIES,
    MODEL_FOLDER_FILES,
    RATIO_FREE_BYTES,
    THRESHOLDS_FILE,
    WEIGHTS_FILE,
    ZIP_DATE,
    BundleFiles,
    FolderFiles,
    ZipFiles,
    check_model_target,
    json_bytes,
    json_kind,
    json_object,
    model_bundle_problem,
    open_bundle,
    pack_zip,
)
from cellseg.config import ModelConfig
from cellseg.errors import InputError, ModelLoadError, require_number

__all__ = [
    "BUNDLE_FILES", "BUNDLE_META", "CONFIG_FILE", "DEFAULT_THRESHOLDS", "MAX_COMPRESSION_RATIO", "MAX_JSON_BYTES",
    "MAX_UNPACKED_BYTES", "MAX_ZIP_ENTRIES", "MODEL_FOLDER_FILES", "PRETRAINED_DIR", "RATIO_FREE_BYTES",
    "STARDIST_PRETRAINED", "THRESHOLDS_FILE", "WEIGHTS_FILE", "ZIP_DATE", "BundleFiles", "BundleMeta",
    "FolderFiles", "ZipFiles", "check_model_target", "check_thresholds", "json_bytes", "model_bundle_problem",
    "open_bundle", "pack_zip", "pretrained_files", "pretrained_meta", "pretrained_names", "read_meta",
    "stardist_pretrained_provenance", "weights_name",
]

DEFAULT_THRESHOLDS = {"prob": 0.5, "nms": 0.4}
#: Format of cellseg.json this version writes and reads.
FORMAT, FORMAT_VERSION = "cellseg-bundle", 2  # 2: the ``input`` key (written only when not the default)


@dataclass
class BundleMeta:
    """What a bundle says about its model, apart from the weights.

    ``provenance`` is the JSON-able record of how the model came about (name, steps trained, trainings,
    what it was retrained from); ``geometry`` measured network properties kept with the weights they were
    measured for (``receptive_field``, ``fingerprint``); ``input`` what the network expects of an image
    (:class:`~cellseg.adapt.InputSpec`: background, object size, scale). A
    :class:`~cellseg.models.CellsegModel` shares its dicts with the BundleMeta it describes itself by.
    """

    model_config: ModelConfig
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    provenance: dict[str, Any] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)
    input: InputSpec = field(default_factory=InputSpec)

    @property
    def name(self) -> str:
        return str(self.provenance.get("name", "cellseg"))

    @property
    def steps_trained(self) -> int:
        return int(self.provenance.get("steps_trained", 0))

    def summary(self) -> dict[str, Any]:
        """A small JSON-able description (the KNIME port spec): architecture, thresholds, provenance."""
        config = self.model_config
        prov = {k: v for k, v in self.provenance.items() if k != "trainings"}
        trainings = self.provenance.get("trainings", [])
        prov["n_trainings"] = len(trainings)
        if trainings:
            last = trainings[-1]
            prov["last_training"] = {k: last.get(k) for k in ("kind", "n_images", "steps", "seconds", "data")}
        return {
            "backbone": config.backbone,
            "n_rays": config.n_rays,
            "grid": list(config.grid),
            "n_channel_in": config.n_channel_in,
            "patch_size": list(config.patch_size),
            "unet_n_depth": config.unet_n_depth,
            "unet_n_filter_base": config.unet_n_filter_base,
            "divisor": config.divisor,
            "thresholds": {"prob": float(self.thresholds["prob"]), "nms": float(self.thresholds["nms"])},
            "steps_trained": self.steps_trained,
            "input": self.input.to_json(),
            "provenance": prov,
        }

    def to_json(self) -> dict[str, Any]:
        """The content of ``cellseg.json``."""
        version = 1 if self.input.is_default() else FORMAT_VERSION  # readable by older cellseg when it can be
        meta = {"format": FORMAT, "format_version": version, "model_config": self.model_config.to_dict(),
                "provenance": self.provenance}
        if not self.input.is_default():
            meta["input"] = self.input.to_json()
        if self.geometry:
            meta["geometry"] = self.geometry
        return meta

    @classmethod
    def read(cls, source: str | os.PathLike | bytes) -> BundleMeta:
        """The checked metadata of a model folder, ``.zip`` file or zip bytes (see :func:`read_meta`)."""
        files = open_bundle(source)
        if files is None:
            raise ModelLoadError(f"model {source}: no such folder or file")
        with files:
            return read_meta(files)


def check_thresholds(value: Any, name: str = "thresholds") -> tuple[float, float]:
    """``(prob, nms)`` from a ``{"prob": p, "nms": n}`` mapping of numbers in [0, 1]; InputError naming the key."""
    if not isinstance(value, dict) or any(k not in value for k in ("prob", "nms")):
        raise InputError(f"{name} must be a dict with keys 'prob' and 'nms' (numbers in [0, 1]), got {value!r}"[:300])
    prob = require_number(value["prob"], f"{name}['prob']", 0, 1)
    nms = require_number(value["nms"], f"{name}['nms']", 0, 1)
    return prob, nms


def weights_name(files: BundleFiles) -> str:
    """The weights file a bundle's network is loaded from (``weights_best.h5``, else another ``*.h5``)."""
    names = files.names()
    found = [n for n in (WEIGHTS_FILE, "weights_last.h5", *sorted(n for n in names if n.endswith(".h5")))
             if n in names]
    if not found:
        raise ModelLoadError(f"{files.where} has no weights file (weights_best.h5 or *.h5)")
    return found[0]


#: Fields that cellseg.json's model_config and stardist's config.json both hold: they must agree.
_SHARED_FIELDS = ("n_rays", "grid", "n_channel_in", "unet_n_depth", "unet_n_filter_base")


def read_meta(files: BundleFiles) -> BundleMeta:
    """Check a bundle's files and JSON and return its metadata; :class:`ModelLoadError` naming the file
    and key otherwise. A stardist folder without ``cellseg.json`` is described by its ``config.json``."""
    where = files.where
    names = files.names()
    if CONFIG_FILE not in names:
        raise ModelLoadError(f"{where} has no config.json")
    weights_name(files)
    sd_config = json_object(files, CONFIG_FILE)
    try:
        stardist_config = ModelConfig.from_stardist(sd_config)
    except InputError as err:
        raise ModelLoadError(f"{where}: config.json: {err}") from err
    meta: dict[str, Any] = {}
    if BUNDLE_META in names:
        meta = json_object(files, BUNDLE_META)
        _check_meta(meta, where)
        try:
            config = ModelConfig.from_dict(meta["model_config"])
        except InputError as err:
            raise ModelLoadError(f"{where}: {BUNDLE_META}: model_config: {err}") from err
        for key in _SHARED_FIELDS:
            ours, theirs = getattr(config, key), getattr(stardist_config, key)
            if ours != theirs:
                show = (lambda v: list(v) if isinstance(v, tuple) else v)  # noqa: E731  (as in the JSON)
                raise ModelLoadError(
                    f"{where}: {BUNDLE_META} and config.json disagree on {key} ({BUNDLE_META}: {show(ours)}, "
                    f"config.json: {show(theirs)}); the bundle was edited or mixed from two models: restore "
                    "the original files")
    else:
        config = stardist_config
    thresholds = dict(DEFAULT_THRESHOLDS)
    if THRESHOLDS_FILE in names:
        try:
            prob, nms = check_thresholds(json_object(files, THRESHOLDS_FILE), THRESHOLDS_FILE)
        except InputError as err:
            raise ModelLoadError(f"{where}: {err}") from err
        thresholds = {"prob": prob, "nms": nms}
    provenance = meta.get("provenance") or {"name": files.label, "imported_from": files.origin,
                                            "steps_trained": 0, "trainings": []}
    try:
        spec = InputSpec.from_json(meta.get("input"), f"{BUNDLE_META}: input")
    except InputError as err:
        raise ModelLoadError(f"{where}: {err}") from err
    return BundleMeta(config, thresholds, provenance, dict(meta.get("geometry") or {}), spec)


def _check_meta(meta: dict[str, Any], where: str) -> None:
    """The parts of cellseg.json cellseg relies on: format, model_config, provenance, geometry."""
    fmt = meta.get("format", FORMAT)
    if fmt != FORMAT:
        raise ModelLoadError(f"{where}: {BUNDLE_META}: format={fmt!r}, expected {FORMAT!r}")
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelLoadError(f"{where}: {BUNDLE_META}: format_version={version!r} must be a positive integer")
    if version > FORMAT_VERSION:
        raise ModelLoadError(f"{where}: {BUNDLE_META}: format_version {version} was written by a newer cellseg "
                             f"(this is cellseg {_version()}, format {FORMAT_VERSION}); update cellseg")
    if "model_config" not in meta:
        raise ModelLoadError(f"{where}: {BUNDLE_META} has no model_config (the model's architecture); restore "
                             f"the file or remove it to load the model from config.json alone")
    for key in ("provenance", "geometry"):
        if key in meta and not isinstance(meta[key], dict):
            raise ModelLoadError(f"{where}: {BUNDLE_META}: {key} must be a JSON object, not a {json_kind(meta[key])}")
    prov = meta.get("provenance", {})
    checks = {"name": str, "steps_trained": int, "trainings": list, "retrained_from": list}
    for key, kind in checks.items():
        v = prov.get(key)
        if key in prov and (not isinstance(v, kind) or isinstance(v, bool) or (kind is int and v < 0)):
            raise ModelLoadError(f"{where}: {BUNDLE_META}: provenance.{key}={v!r} must be a "
                                 f"{'non-negative integer' if kind is int else json_kind(kind())}")
    if not all(isinstance(t, dict) for t in prov.get("trainings", [])):
        raise ModelLoadError(f"{where}: {BUNDLE_META}: provenance.trainings must be a list of JSON objects")
    geometry = meta.get("geometry", {})
    rf = geometry.get("receptive_field", 0)
    if isinstance(rf, bool) or not isinstance(rf, int) or rf < 0:
        raise ModelLoadError(f"{where}: {BUNDLE_META}: geometry.receptive_field={rf!r} must be a non-negative integer")
    if not isinstance(geometry.get("fingerprint", ""), str):
        raise ModelLoadError(f"{where}: {BUNDLE_META}: geometry.fingerprint must be a string")


# -- pretrained models ----------------------------------------------------------------------------

#: Models shipped with cellseg: ``<name>.zip`` bundles.
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
#: stardist's registered pretrained 2D models (downloaded by stardist when loaded).
STARDIST_PRETRAINED = ("2D_versatile_fluo", "2D_paper_dsb2018", "2D_versatile_he", "2D_demo")
#: Their architecture, known without downloading them: stardist's 2D defaults, and the input channels.
_STARDIST_CONFIG = {"n_rays": 32, "grid": [2, 2], "unet_n_depth": 3, "unet_n_filter_base": 32,
                    "patch_size": [256, 256]}
_STARDIST_CHANNELS = {"2D_versatile_he": 3}


def pretrained_names() -> list[str]:
    """Names :func:`cellseg.models.load_model` accepts: models shipped with cellseg, then stardist's."""
    shipped = sorted(p.stem for p in PRETRAINED_DIR.glob("*.zip")) if PRETRAINED_DIR.is_dir() else []
    return shipped + list(STARDIST_PRETRAINED)


def pretrained_files(name: str) -> ZipFiles | None:
    """The files of the model shipped with cellseg as ``name`` (None if there is none)."""
    shipped = PRETRAINED_DIR / f"{name}.zip"
    if not shipped.is_file():
        return None
    return ZipFiles(shipped.read_bytes(), origin=f"pretrained:{name}")


def stardist_pretrained_provenance(name: str) -> dict[str, Any]:
    """Provenance of stardist's pretrained model ``name``."""
    return {"name": name, "imported_from": f"stardist pretrained {name}", "steps_trained": 0, "trainings": []}


def pretrained_meta(name: str) -> BundleMeta:
    """The metadata of a pretrained model, without downloading it: shipped zips are read; stardist's models
    are described by their known architecture. :class:`ModelLoadError` for an unknown name."""
    files = pretrained_files(name)
    if files is not None:
        with files:
            return read_meta(files)
    if name in STARDIST_PRETRAINED:
        config = ModelConfig.from_dict({**_STARDIST_CONFIG, "n_channel_in": _STARDIST_CHANNELS.get(name, 1)})
        return BundleMeta(config, provenance=stardist_pretrained_provenance(name))
    raise ModelLoadError(f"unknown pretrained model {name!r}; known: {pretrained_names()}")


def _version() -> str:
    from cellseg import __version__

    return __version__

"""StarDist models: the network side of the model bundle.

A :class:`CellsegModel` wraps a :class:`stardist.models.StarDist2D` and adds what a user needs to trust
and reuse a model: a provenance record (training data, steps, time, history, what it was retrained from)
and the bundle format of :mod:`cellseg.bundle` (stardist's own folder layout plus ``cellseg.json``, so
that plain ``StarDist2D(None, name=..., basedir=...)`` loads a U-Net model trained here).
:meth:`CellsegModel.to_bytes` packs the same files into a zip (the KNIME model port's payload).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.adapt import InputSpec
from cellseg.backbones import model_class
from cellseg.bundle import (
    BUNDLE_META,
    CONFIG_FILE,
    DEFAULT_THRESHOLDS,
    STARDIST_PRETRAINED,
    THRESHOLDS_FILE,
    WEIGHTS_FILE,
    BundleFiles,
    BundleMeta,
    FolderFiles,
    ZipFiles,
    check_model_target,
    check_thresholds,
    json_bytes,
    open_bundle,
    pack_zip,
    pretrained_files,
    pretrained_names,
    read_meta,
    stardist_pretrained_provenance,
    weights_name,
)
from cellseg.config import ModelConfig
from cellseg.errors import InputError, ModelLoadError, require_bool, require_int, require_str


class CellsegModel:
    """A StarDist 2D model with provenance, saved and loaded as a bundle.

    Create one with :meth:`create` (untrained) or :func:`load_model`; train it with
    :func:`cellseg.training.train` / :func:`cellseg.training.retrain`; predict with
    :func:`cellseg.prediction.predict`.

    Attributes
    ----------
    stardist : stardist.models.StarDist2D
        The wrapped stardist model (its ``keras_model`` holds the network).
    config : ModelConfig
        The architecture.
    provenance : dict
        JSON-able record of how the model came about.
    geometry : dict
        Measured properties of the network kept with the bundle so that they need not be measured again:
        ``receptive_field`` (pixels) and the :meth:`fingerprint` of the weights it was measured for.
    input_spec : cellseg.adapt.InputSpec
        What the network expects of an image (background, object size, scale), kept with the bundle.
    """

    def __init__(self, stardist_model: Any, config: ModelConfig, provenance: dict | None = None,
                 workdir: Path | None = None) -> None:
        self.stardist = stardist_model
        self.config = config
        self.provenance: dict[str, Any] = provenance if provenance is not None else {}
        self.geometry: dict[str, Any] = {}
        self.input_spec = InputSpec()  # what the network expects: background, object size, scale
        self._workdir = workdir
        # (state key, bundle bytes): the bytes last written or loaded, valid while the model's state (weights
        # and JSON files, see _state_key) is the same; loaded bytes are kept as they were (bit-exact round trip)
        self._bytes_cache: tuple[str, bytes] | None = None
        if workdir is not None:
            # removed when the model is garbage collected, and at interpreter exit at the latest (also
            # after Ctrl-C or SIGTERM), so that no cellseg-model-* folder is left in the temp folder
            weakref.finalize(self, shutil.rmtree, str(workdir), ignore_errors=True)

    # -- creation ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: ModelConfig | None = None, seed: int | None = 0, name: str = "cellseg") -> CellsegModel:
        """A new, untrained model (weights initialised from ``seed``).

        ``config`` is a :class:`ModelConfig` or a dict of its parameters (default: ``ModelConfig()``);
        ``seed`` an integer in [0, 2**32 - 1] or ``None`` (not seeded).
        """
        config = as_model_config(config)
        if seed is not None:
            seed = require_int(seed, "seed", 0, 2**32 - 1)
        require_str(name, "name")
        klass = model_class(config.backbone)
        if seed is not None:
            set_seed(seed)
        workdir = Path(tempfile.mkdtemp(prefix="cellseg-model-"))
        try:
            sd_config = config.to_stardist()
            sd_model = _quiet(lambda: klass(sd_config, name="model", basedir=str(workdir)))
            _apply_backbone_options(sd_model, config)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        prov = {"name": name, "created_with": f"cellseg {_version()}", "steps_trained": 0, "trainings": []}
        model = cls(sd_model, config, prov, workdir)
        model.thresholds = DEFAULT_THRESHOLDS
        return model

    # -- properties -------------------------------------------------------------------------------
    @property
    def keras_model(self):
        return self.stardist.keras_model

    @property
    def name(self) -> str:
        return self.meta().name

    @property
    def thresholds(self) -> dict[str, float]:
        t = self.stardist.thresholds
        return {"prob": float(t.prob), "nms": float(t.nms)}

    @thresholds.setter
    def thresholds(self, value: dict[str, float]) -> None:
        prob, nms = check_thresholds(value, "thresholds")
        self.stardist.thresholds = {"prob": prob, "nms": nms}

    @property
    def steps_trained(self) -> int:
        return self.meta().steps_trained

    @property
    def workdir(self) -> Path:
        """Folder stardist writes checkpoints into while this model trains."""
        assert self._workdir is not None
        return self._workdir

    def meta(self) -> BundleMeta:
        """The bundle metadata of this model now (sharing its ``provenance`` and ``geometry`` dicts)."""
        return BundleMeta(self.config, self.thresholds, self.provenance, self.geometry, self.input_spec)

    def summary(self) -> dict[str, Any]:
        """A small JSON-able description (the KNIME port spec): architecture, thresholds, provenance."""
        return self.meta().summary()

    # -- weights ----------------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.keras_model.get_weights()]

    def copy(self) -> CellsegModel:
        """An independent copy (own workdir, same weights, thresholds and provenance)."""
        return from_bytes(self.to_bytes())

    def encoder_layers(self) -> list[Any]:
        """Layers of the encoder (contracting path), for freezing during retraining."""
        hook = getattr(self.stardist, "encoder_layers", None)
        if hook is not None:
            return list(hook())
        return [
            layer
            for layer in self.keras_model.layers
            if layer.name.startswith(("down_level", "middle", "conv2d")) or layer.name == "input"
        ]

    # -- bundle -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the bundle folder (or, for a ``.zip`` path, the zip) and return its path.

        `path` must not exist (an empty folder is fine too), or must hold a model (see
        :func:`~cellseg.bundle.check_model_target`) and `overwrite` be True; anything else raises
        :class:`InputError` and nothing is written. The bundle is written to a temporary sibling and then
        renamed into place (a replaced model is swapped for the new one in one step), so that readers see
        the old model or the new one, never a mixture or nothing; on failure the old model stays and no
        temporary file is left behind.
        """
        from cellseg.files import atomic_folder, write_bytes_atomic

        overwrite = require_bool(overwrite, "overwrite")
        path = check_model_target(path, overwrite)
        if path.suffix.lower() == ".zip":
            return write_bytes_atomic(path, self.to_bytes())
        with atomic_folder(path, "model", replace=overwrite) as tmp:
            self._write_files(tmp)
        return path

    def _json_files(self) -> dict[str, bytes]:
        """The bundle's JSON files as written: stardist's config and thresholds, and cellseg.json."""
        return {CONFIG_FILE: json_bytes(vars(self.stardist.config)), THRESHOLDS_FILE: json_bytes(self.thresholds),
                BUNDLE_META: json_bytes(self.meta().to_json())}

    def _write_files(self, folder: Path) -> None:
        for name, data in self._json_files().items():
            (folder / name).write_bytes(data)
        self.keras_model.save_weights(str(folder / WEIGHTS_FILE))

    def to_bytes(self) -> bytes:
        """The bundle as zip bytes; loading them back and calling this again gives the same bytes.

        The bytes are made again only when the weights or the JSON files changed since they were last made
        or loaded.
        """
        files = self._json_files()
        key = self._state_key(files)
        if self._bytes_cache is not None and self._bytes_cache[0] == key:
            return self._bytes_cache[1]
        with tempfile.TemporaryDirectory(prefix="cellseg-bundle-") as tmp:
            weights = Path(tmp) / WEIGHTS_FILE
            self.keras_model.save_weights(str(weights))
            files[WEIGHTS_FILE] = weights.read_bytes()
        data = pack_zip(files)
        self._bytes_cache = (key, data)
        return data

    def _state_key(self, json_files: dict[str, bytes] | None = None) -> str:
        """A hash of everything the bundle is made of: the weights and the JSON files."""
        h = hashlib.sha256()
        for w in self.keras_model.get_weights():
            h.update(f"{w.dtype}{w.shape}".encode())
            h.update(np.ascontiguousarray(w).tobytes())
        for name, data in sorted((json_files or self._json_files()).items()):
            h.update(f"{name}:{len(data)}:".encode())
            h.update(data)
        return h.hexdigest()

    def fingerprint(self) -> str:
        """A short hash of the weights and thresholds (changes whenever the model does)."""
        h = hashlib.sha256()
        for w in self.keras_model.get_weights():
            h.update(np.ascontiguousarray(w).tobytes())
        h.update(json.dumps(self.thresholds, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"CellsegModel(name={self.name!r}, backbone={self.config.backbone!r}, "
                f"n_rays={self.config.n_rays}, steps_trained={self.steps_trained})")


# -- loading --------------------------------------------------------------------------------------

def load_model(source: str | os.PathLike | bytes) -> CellsegModel:
    """Load a model from a bundle folder, a ``.zip`` file, zip bytes or a pretrained name.

    Folders may be any stardist model folder (``config.json`` + ``weights_*.h5``); names are the models
    shipped in ``cellseg/pretrained`` or stardist's registered pretrained models (those need internet).

    Everything is checked before a network is built: the JSON files (valid JSON objects with the keys and
    value types cellseg and stardist need), ``cellseg.json`` against ``config.json`` (the architecture
    must agree), the weights against the network, and zips against :data:`MAX_ZIP_ENTRIES`,
    :data:`MAX_UNPACKED_BYTES`, :data:`MAX_COMPRESSION_RATIO` and unsafe member paths. Problems raise
    :class:`ModelLoadError` naming the file and key (a wrong ``source`` type: :class:`InputError`); no
    temporary folder is left behind.
    """
    files = open_bundle(source)
    if files is None:  # neither a folder nor a file: a pretrained model's name
        name = str(source)
        files = pretrained_files(name)
        if files is None:
            if name in STARDIST_PRETRAINED:
                return _load_stardist_pretrained(name)
            raise ModelLoadError(
                f"model {name!r} not found: give a model folder (with config.json and weights), a .zip, "
                f"or one of the names {pretrained_names()}"
            )
    with files:
        return _load_bundle(files)


def from_bytes(data: bytes, origin: str = "bytes") -> CellsegModel:
    """Load a model from bundle zip bytes (as written by :meth:`CellsegModel.to_bytes`).

    The zip is checked (see :func:`load_model`) and only the files a model needs are unpacked, straight
    into the model's own folder.
    """
    with ZipFiles(data, origin) as files:
        return _load_bundle(files)


as_model_config = ModelConfig.of


def _load_bundle(files: BundleFiles) -> CellsegModel:
    """Check a model folder's or zip's files and build the model (see :func:`load_model`).

    The files stardist needs are copied once, into the model's own folder, from which stardist builds
    the network and loads the weights.
    """
    where = files.where
    meta = read_meta(files)
    weights = weights_name(files)
    klass = model_class(meta.model_config.backbone)
    workdir = Path(tempfile.mkdtemp(prefix="cellseg-model-"))
    try:
        folder = workdir / "model"
        folder.mkdir()
        files.copy(CONFIG_FILE, folder / CONFIG_FILE)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Couldn't find any network weights": loaded below
                sd_model = _quiet(lambda: klass(None, name="model", basedir=str(workdir)))
        except (ModelLoadError, InputError) as err:
            raise ModelLoadError(f"{where}: {err}") from err
        except Exception as err:  # stardist and keras raise many kinds on a config they cannot build
            raise ModelLoadError(f"{where}: config.json does not describe a network stardist can build "
                                 f"({_one_line(err)})") from err
        files.copy(weights, folder / WEIGHTS_FILE)
        _load_weights(sd_model, folder / WEIGHTS_FILE, weights, where, with_meta=BUNDLE_META in files.names())
        sd_model.thresholds = meta.thresholds
        model = CellsegModel(sd_model, meta.model_config, meta.provenance, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    model.geometry = meta.geometry
    model.input_spec = meta.input
    if isinstance(files, ZipFiles) and files.exact:
        model._bytes_cache = (model._state_key(), files.data)  # to_bytes() gives these bytes while unchanged
    return model


def _load_weights(sd_model: Any, path: Path, name: str, where: str, with_meta: bool) -> None:
    import h5py

    if not h5py.is_hdf5(str(path)):
        raise ModelLoadError(f"{where}: {name} is not an HDF5 weights file (damaged, empty or another kind of file)")
    try:
        _quiet(lambda: sd_model.load_weights(path.name))  # stardist's: from its folder, as it saves them
    except Exception as err:  # keras and h5py raise many kinds on weights of another network
        described = f"config.json{' and ' + BUNDLE_META if with_meta else ''}"
        raise ModelLoadError(f"{where}: the weights in {name} do not fit the network described by {described} "
                             f"({_one_line(err)})") from err


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line (first line of its message, with its type)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_stardist_pretrained(name: str) -> CellsegModel:
    from stardist.models import StarDist2D

    try:
        sd_model = _quiet(lambda: StarDist2D.from_pretrained(name))
    except Exception as err:
        raise ModelLoadError(
            f"could not download stardist's pretrained model {name!r} ({type(err).__name__}: {err}). "
            "This machine is probably offline: download the model elsewhere (e.g. "
            f"StarDist2D.from_pretrained({name!r}) and copy its folder from ~/.keras/models/StarDist2D), "
            "then give that folder or a .zip of it instead of the name"
        ) from err
    if sd_model is None:
        raise ModelLoadError(f"stardist does not know a pretrained model {name!r}")
    model = _load_bundle(FolderFiles(Path(sd_model.logdir), where=f"stardist's pretrained model {name}"))
    model.provenance.update(name=name, imported_from=stardist_pretrained_provenance(name)["imported_from"])
    return model


# -- helpers --------------------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    seed = require_int(seed, "seed", 0, 2**32 - 1)
    keras.utils.set_random_seed(seed)
    with contextlib.suppress(Exception):
        tf.config.experimental.enable_op_determinism()


def _apply_backbone_options(sd_model: Any, config: ModelConfig) -> None:
    hook = getattr(sd_model, "apply_backbone_options", None)
    if hook is not None:
        hook(config.backbone_options)


def _quiet(fn):
    """Run ``fn`` with stdout silenced (stardist prints on load and save)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _version() -> str:
    from cellseg import __version__

    return __version__

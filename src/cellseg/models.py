"""StarDist models: configuration, creation and the model bundle.

A :class:`CellsegModel` wraps a :class:`stardist.models.StarDist2D` and adds what a user needs to trust
and reuse a model: a provenance record (training data, steps, time, history, what it was retrained from)
and a bundle format. The bundle is stardist's own folder layout (``config.json``, ``thresholds.json``,
``weights_best.h5``) plus ``cellseg.json``, so that plain ``StarDist2D(None, name=..., basedir=...)`` loads
a U-Net model trained here; :meth:`CellsegModel.to_bytes` packs the same files into a zip (the KNIME
model port's payload).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.errors import InputError, ModelLoadError

BUNDLE_META = "cellseg.json"
WEIGHTS_FILE = "weights_best.h5"
BUNDLE_FILES = ("config.json", "thresholds.json", WEIGHTS_FILE, BUNDLE_META)
STARDIST_PRETRAINED = ("2D_versatile_fluo", "2D_paper_dsb2018", "2D_versatile_he", "2D_demo")
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_THRESHOLDS = {"prob": 0.5, "nms": 0.4}

# A fixed timestamp makes zip bytes depend on the content only.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class ModelConfig:
    """Architecture and training-shape settings of a StarDist 2D model.

    Parameters
    ----------
    backbone
        Network architecture: ``"unet"`` (stardist's U-Net), or a backbone registered in
        :data:`BACKBONES` (e.g. ``"resunet"``, ``"resnet50"``).
    n_rays
        Number of radial distances that describe each star-convex polygon.
    grid
        Subsampling of the output relative to the input (stardist's ``grid``).
    n_channel_in
        Channels of the input images (1 for grey fluorescence, 3 for RGB).
    unet_n_depth, unet_n_filter_base
        Depth (number of poolings) and filters of the first level of the U-Net.
    patch_size
        Size (Y, X) of the training patches; must divide by ``grid * 2**unet_n_depth``.
    batch_size
        Patches per training step.
    learning_rate
        Adam learning rate for training from scratch.
    """

    backbone: str = "unet"
    n_rays: int = 32
    grid: tuple[int, int] = (2, 2)
    n_channel_in: int = 1
    unet_n_depth: int = 3
    unet_n_filter_base: int = 32
    patch_size: tuple[int, int] = (128, 128)
    batch_size: int = 4
    learning_rate: float = 3e-4
    backbone_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "+" in self.backbone:  # "resnet50+imagenet" = backbone "resnet50" with option imagenet=True
            name, *flags = self.backbone.split("+")
            self.backbone = name
            self.backbone_options = {**self.backbone_options, **{f: True for f in flags if f}}
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
        self.patch_size = tuple(int(p) for p in self.patch_size)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid parameter."""
        if self.backbone not in BACKBONES:
            _register_optional_backbones()
        if self.backbone not in BACKBONES:
            raise InputError(f"backbone={self.backbone!r} is unknown; choose one of {sorted(BACKBONES)}")
        checks = [
            ("n_rays", self.n_rays >= 3, "must be >= 3"),
            ("n_channel_in", self.n_channel_in >= 1, "must be >= 1"),
            ("unet_n_depth", 1 <= self.unet_n_depth <= 6, "must be between 1 and 6"),
            ("unet_n_filter_base", self.unet_n_filter_base >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("learning_rate", 0 < self.learning_rate < 1, "must be in (0, 1)"),
            ("grid", len(self.grid) == 2 and all(g in (1, 2, 4, 8) for g in self.grid), "must be 1, 2, 4 or 8 per axis"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r} {what}")
        div = self.divisor
        if len(self.patch_size) != 2 or any(p < div or p % div for p in self.patch_size):
            raise InputError(
                f"patch_size={self.patch_size} must be two multiples of {div} (grid x 2**unet_n_depth)"
            )

    @property
    def divisor(self) -> int:
        """Image sides the network accepts are multiples of this."""
        return max(self.grid) * 2**self.unet_n_depth

    def to_stardist(self, **overrides: Any):
        """The equivalent :class:`stardist.models.Config2D`."""
        from stardist.models import Config2D

        kwargs: dict[str, Any] = dict(
            n_rays=self.n_rays,
            grid=self.grid,
            n_channel_in=self.n_channel_in,
            unet_n_depth=self.unet_n_depth,
            unet_n_filter_base=self.unet_n_filter_base,
            train_patch_size=self.patch_size,
            train_batch_size=self.batch_size,
            train_learning_rate=self.learning_rate,
            train_tensorboard=False,
            use_gpu=False,
        )
        kwargs.update(overrides)
        return Config2D(**kwargs)

    @classmethod
    def from_stardist(cls, config: Any, backbone: str = "unet", backbone_options: dict | None = None) -> ModelConfig:
        """Read the fields we use from a stardist ``Config2D`` (or its ``vars``)."""
        c = config if isinstance(config, dict) else vars(config)
        return cls(
            backbone=backbone,
            n_rays=int(c["n_rays"]),
            grid=tuple(c["grid"]),
            n_channel_in=int(c["n_channel_in"]),
            unet_n_depth=int(c.get("unet_n_depth", 3)),
            unet_n_filter_base=int(c.get("unet_n_filter_base", 32)),
            patch_size=tuple(c.get("train_patch_size", (256, 256))),
            batch_size=int(c.get("train_batch_size", 4)),
            learning_rate=float(c.get("train_learning_rate", 3e-4)),
            backbone_options=dict(backbone_options or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown model parameter(s): {sorted(unknown)}")
        return cls(**d)


def _stardist_class():
    from stardist.models import StarDist2D

    return StarDist2D


# Backbone name -> callable returning the StarDist2D (sub)class that builds it. Other modules register
# their backbones here (see cellseg.backbones).
BACKBONES: dict[str, Any] = {"unet": _stardist_class}


def _register_optional_backbones() -> None:
    with contextlib.suppress(ImportError):
        import cellseg.backbones  # noqa: F401  (registers its classes in BACKBONES)


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
    """

    def __init__(self, stardist_model: Any, config: ModelConfig, provenance: dict | None = None,
                 workdir: Path | None = None) -> None:
        self.stardist = stardist_model
        self.config = config
        self.provenance: dict[str, Any] = provenance if provenance is not None else {}
        self.geometry: dict[str, Any] = {}
        self._workdir = workdir
        self._bundle_bytes: bytes | None = None  # bytes this model was loaded from, while unchanged

    # -- creation ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, config: ModelConfig | None = None, seed: int | None = 0, name: str = "cellseg") -> CellsegModel:
        """A new, untrained model (weights initialised from ``seed``)."""
        config = config or ModelConfig()
        config.validate()
        if seed is not None:
            set_seed(seed)
        workdir = Path(tempfile.mkdtemp(prefix="cellseg-model-"))
        klass = model_class(config.backbone)
        sd_config = config.to_stardist()
        sd_model = _quiet(lambda: klass(sd_config, name="model", basedir=str(workdir)))
        _apply_backbone_options(sd_model, config)
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
        return str(self.provenance.get("name", "cellseg"))

    @property
    def thresholds(self) -> dict[str, float]:
        t = self.stardist.thresholds
        return {"prob": float(t.prob), "nms": float(t.nms)}

    @thresholds.setter
    def thresholds(self, value: dict[str, float]) -> None:
        prob, nms = float(value["prob"]), float(value["nms"])
        for key, v in (("prob_thresh", prob), ("nms_thresh", nms)):
            if not 0 <= v <= 1:
                raise InputError(f"{key}={v} must be in [0, 1]")
        self.stardist.thresholds = {"prob": prob, "nms": nms}
        self.mark_changed()

    @property
    def steps_trained(self) -> int:
        return int(self.provenance.get("steps_trained", 0))

    @property
    def workdir(self) -> Path:
        """Folder stardist writes checkpoints into while this model trains."""
        assert self._workdir is not None
        return self._workdir

    def mark_changed(self) -> None:
        """Forget the bytes this model was loaded from (its weights or settings changed)."""
        self._bundle_bytes = None

    def summary(self) -> dict[str, Any]:
        """A small JSON-able description (the KNIME port spec): architecture, thresholds, provenance."""
        prov = {k: v for k, v in self.provenance.items() if k not in ("trainings",)}
        trainings = self.provenance.get("trainings", [])
        prov["n_trainings"] = len(trainings)
        if trainings:
            last = trainings[-1]
            prov["last_training"] = {k: last.get(k) for k in ("kind", "n_images", "steps", "seconds", "data")}
        return {
            "backbone": self.config.backbone,
            "n_rays": self.config.n_rays,
            "grid": list(self.config.grid),
            "n_channel_in": self.config.n_channel_in,
            "patch_size": list(self.config.patch_size),
            "unet_n_depth": self.config.unet_n_depth,
            "unet_n_filter_base": self.config.unet_n_filter_base,
            "divisor": self.config.divisor,
            "thresholds": self.thresholds,
            "steps_trained": self.steps_trained,
            "provenance": prov,
        }

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
        :func:`check_model_target`) and `overwrite` be True; anything else raises :class:`InputError`
        and nothing is written. The bundle is written to a temporary sibling and then renamed into place
        (a replaced model is swapped for the new one in one step), so that readers see the old model or
        the new one, never a mixture or nothing; on failure the old model stays and no temporary file is
        left behind.
        """
        from cellseg.io import atomic_folder, write_bytes_atomic

        path = check_model_target(path, overwrite)
        if path.suffix.lower() == ".zip":
            return write_bytes_atomic(path, self.to_bytes())
        with atomic_folder(path, "model", replace=overwrite) as tmp:
            self._write_files(tmp)
        return path

    def _write_files(self, folder: Path) -> None:
        sd = self.stardist
        config = {k: _jsonable(v) for k, v in vars(sd.config).items()}
        _write_json(folder / "config.json", config)
        _write_json(folder / "thresholds.json", self.thresholds)
        self.keras_model.save_weights(str(folder / WEIGHTS_FILE))
        meta = {"format": "cellseg-bundle", "format_version": 1, "model_config": self.config.to_dict(),
                "provenance": self.provenance}
        if self.geometry:
            meta["geometry"] = self.geometry
        _write_json(folder / BUNDLE_META, meta)

    def to_bytes(self) -> bytes:
        """The bundle as zip bytes; loading them back and calling this again gives the same bytes."""
        if self._bundle_bytes is not None:
            return self._bundle_bytes
        with tempfile.TemporaryDirectory(prefix="cellseg-bundle-") as tmp:
            self._write_files(Path(tmp))
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name in BUNDLE_FILES:
                    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, (Path(tmp) / name).read_bytes())
        self._bundle_bytes = buf.getvalue()
        return self._bundle_bytes

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

    def __del__(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


# -- where a model may be written ----------------------------------------------------------------

#: Files a model folder may hold (cellseg's bundle and what stardist writes); a folder with anything
#: else is not replaced, because those other files would be lost.
MODEL_FOLDER_FILES = frozenset({*BUNDLE_FILES, "weights_last.h5", "weights_now.h5"})


def model_bundle_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a model folder or model zip that may be replaced (None if it is one).

    A model is recognised by its files: ``config.json`` plus weights (``*.h5``) or ``cellseg.json``, and
    nothing but :data:`MODEL_FOLDER_FILES` (in a zip: under at most one top folder).
    """
    path = Path(path)
    if path.is_dir():
        try:
            entries = list(path.iterdir())
        except OSError as err:
            return f"cannot be read ({err.strerror or err})"
        names = {e.name for e in entries}
        other = sorted(e.name for e in entries if e.name not in MODEL_FOLDER_FILES or not e.is_file())
    elif path.is_file():
        try:
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if not m.endswith("/")]
        except (OSError, zipfile.BadZipFile):
            return "it is not a zip file"
        roots = {m.split("/")[0] for m in members if "/" in m}
        if len(roots) > 1 or (roots and any("/" not in m for m in members)):
            return "the zip holds more than one folder"
        names = {m.rsplit("/", 1)[-1] for m in members}
        other = sorted(m for m in members if m.rsplit("/", 1)[-1] not in MODEL_FOLDER_FILES or m.count("/") > 1)
    else:
        return "it is neither a folder nor a file"
    if "config.json" not in names or not (BUNDLE_META in names or any(n.endswith(".h5") for n in names)):
        return "it has no config.json with weights or cellseg.json"
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        return f"it also holds {shown}"
    return None


def check_model_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check where a model is to be written, before any work is done; return it as a Path.

    Accepted: a path that does not exist (a ``.zip`` suffix means a zip, anything else a folder) in a
    writable place, an empty folder, and, only when `overwrite` is True, an existing model folder or
    model zip (recognised by its files, see :func:`model_bundle_problem`). Everything else raises
    :class:`InputError` with a one-line message, so a model can never replace a user's data. The CLI
    (``train``/``retrain --out``, ``--overwrite``), :meth:`CellsegModel.save` and the KNIME Model
    Writer use this one check.
    """
    from cellseg.io import check_writable_location

    if path is None or not str(path).strip():
        raise InputError("model output path is empty")
    path = Path(path)
    as_zip = path.suffix.lower() == ".zip"
    if os.path.lexists(path):
        if path.is_symlink():
            raise InputError(f"model output {path} is a symbolic link; give the path it points to or a new path")
        try:
            empty = path.is_dir() and not any(path.iterdir())
        except OSError as err:
            raise InputError(f"model output {path} cannot be read ({err.strerror or err})") from err
        if empty and not as_zip:
            return check_writable_location(path, "model")
        if as_zip and not path.is_file():
            raise InputError(f"model output {path} exists and is not a file; a .zip path writes a model zip: "
                             "choose a new path")
        if not as_zip and not path.is_dir():
            raise InputError(f"model output {path} is a file, not a model folder; choose a new path "
                             "(a .zip path writes a model zip)")
        problem = model_bundle_problem(path)
        if problem is not None:
            kind = "model zip" if as_zip else "model folder"
            raise InputError(f"model output {path} exists and is not a {kind} ({problem}); refusing to replace "
                             "it: choose a new path")
        if not overwrite:
            raise InputError(f"model output {path} already holds a model; pass --overwrite (overwrite=True) "
                             "to replace it")
    return check_writable_location(path, "model")


# -- loading --------------------------------------------------------------------------------------

def model_class(backbone: str):
    """The StarDist2D (sub)class that builds ``backbone``."""
    _register_optional_backbones()
    if backbone not in BACKBONES:
        raise ModelLoadError(f"backbone {backbone!r} is unknown; known: {sorted(BACKBONES)}")
    return BACKBONES[backbone]()


def pretrained_names() -> list[str]:
    """Names accepted by :func:`load_model`: models shipped with cellseg, then stardist's."""
    shipped = sorted(p.stem for p in PRETRAINED_DIR.glob("*.zip")) if PRETRAINED_DIR.is_dir() else []
    return shipped + list(STARDIST_PRETRAINED)


def load_model(source: str | os.PathLike | bytes) -> CellsegModel:
    """Load a model from a bundle folder, a ``.zip`` file, zip bytes or a pretrained name.

    Folders may be any stardist model folder (``config.json`` + ``weights_*.h5``); names are the models
    shipped in ``cellseg/pretrained`` or stardist's registered pretrained models (those need internet).
    """
    if isinstance(source, (bytes, bytearray)):
        return from_bytes(bytes(source))
    path = Path(source)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path} is not a model zip (expected a zip of a model folder)")
        return from_bytes(path.read_bytes(), origin=str(path))
    name = str(source)
    shipped = PRETRAINED_DIR / f"{name}.zip"
    if shipped.is_file():
        return from_bytes(shipped.read_bytes(), origin=f"pretrained:{name}")
    if name in STARDIST_PRETRAINED:
        return _load_stardist_pretrained(name)
    raise ModelLoadError(
        f"model {name!r} not found: give a model folder (with config.json and weights), a .zip, "
        f"or one of the names {pretrained_names()}"
    )


def from_bytes(data: bytes, origin: str = "bytes") -> CellsegModel:
    """Load a model from bundle zip bytes (as written by :meth:`CellsegModel.to_bytes`)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ModelLoadError(f"model from {origin}: not a valid model zip ({err})") from err
    tmp = Path(tempfile.mkdtemp(prefix="cellseg-unzip-"))
    try:
        with zf:
            for member in zf.namelist():
                target = (tmp / member).resolve()
                if tmp.resolve() not in target.parents:
                    raise ModelLoadError(f"model from {origin}: unsafe path {member!r} in zip")
            zf.extractall(tmp)
        root = _find_model_root(tmp, origin)
        model = _load_folder(root, origin=origin)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if list(zipfile.ZipFile(io.BytesIO(data)).namelist()) == list(BUNDLE_FILES):
        model._bundle_bytes = data
    return model


def _find_model_root(folder: Path, origin: str) -> Path:
    if (folder / "config.json").is_file():
        return folder
    candidates = [p.parent for p in folder.rglob("config.json")]
    if len(candidates) == 1:
        return candidates[0]
    raise ModelLoadError(f"model from {origin}: no config.json found in the zip")


def _load_folder(folder: Path, origin: str | None = None) -> CellsegModel:
    origin = origin or str(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model folder {origin} has no config.json")
    weights = [folder / WEIGHTS_FILE, folder / "weights_last.h5", *sorted(folder.glob("*.h5"))]
    weights = [w for w in weights if w.is_file()]
    if not weights:
        raise ModelLoadError(f"model folder {origin} has no weights file (weights_best.h5 or *.h5)")
    try:
        sd_config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"model folder {origin}: config.json is not valid JSON ({err})") from err
    meta: dict[str, Any] = {}
    if (folder / BUNDLE_META).is_file():
        meta = json.loads((folder / BUNDLE_META).read_text())
    if "model_config" in meta:
        config = ModelConfig.from_dict(meta["model_config"])
    else:
        config = ModelConfig.from_stardist(sd_config)
    workdir = Path(tempfile.mkdtemp(prefix="cellseg-model-"))
    (workdir / "model").mkdir()
    shutil.copy2(folder / "config.json", workdir / "model" / "config.json")
    shutil.copy2(weights[0], workdir / "model" / WEIGHTS_FILE)
    if (folder / "thresholds.json").is_file():
        shutil.copy2(folder / "thresholds.json", workdir / "model" / "thresholds.json")
    klass = model_class(config.backbone)
    try:
        sd_model = _quiet(lambda: klass(None, name="model", basedir=str(workdir)))
    except Exception as err:  # stardist raises many kinds on a bad folder
        shutil.rmtree(workdir, ignore_errors=True)
        raise ModelLoadError(f"model folder {origin} could not be loaded: {err}") from err
    if not (folder / "thresholds.json").is_file():
        sd_model.thresholds = DEFAULT_THRESHOLDS
    provenance = meta.get("provenance") or {"name": folder.name, "imported_from": origin, "steps_trained": 0,
                                            "trainings": []}
    model = CellsegModel(sd_model, config, provenance, workdir)
    if isinstance(meta.get("geometry"), dict):
        model.geometry = dict(meta["geometry"])
    return model


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
    model = _load_folder(Path(sd_model.logdir), origin=f"stardist:{name}")
    model.provenance.update({"name": name, "imported_from": f"stardist pretrained {name}"})
    return model


# -- helpers --------------------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True))


def _version() -> str:
    from cellseg import __version__

    return __version__



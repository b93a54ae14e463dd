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
import warnings
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.backbones import model_class
from cellseg.config import ModelConfig, strict_init  # noqa: F401  (re-exported for now)
from cellseg.errors import (
    InputError,
    ModelLoadError,
    require_bool,
    require_int,
    require_number,
    require_str,
)

BUNDLE_META = "cellseg.json"
WEIGHTS_FILE = "weights_best.h5"
BUNDLE_FILES = ("config.json", "thresholds.json", WEIGHTS_FILE, BUNDLE_META)
STARDIST_PRETRAINED = ("2D_versatile_fluo", "2D_paper_dsb2018", "2D_versatile_he", "2D_demo")
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_THRESHOLDS = {"prob": 0.5, "nms": 0.4}

# A fixed timestamp makes zip bytes depend on the content only.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


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
        return str(self.provenance.get("name", "cellseg"))

    @property
    def thresholds(self) -> dict[str, float]:
        t = self.stardist.thresholds
        return {"prob": float(t.prob), "nms": float(t.nms)}

    @thresholds.setter
    def thresholds(self, value: dict[str, float]) -> None:
        prob, nms = check_thresholds(value, "thresholds")
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

        overwrite = require_bool(overwrite, "overwrite")
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


# -- where a model may be written ----------------------------------------------------------------

#: Files a model folder may hold (cellseg's bundle and what stardist writes); a folder with anything
#: else is not replaced, because those other files would be lost.
MODEL_FOLDER_FILES = frozenset({*BUNDLE_FILES, "weights_last.h5", "weights_now.h5"})


def model_bundle_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a model folder or model zip that may be replaced (None if it is one).

    A model is recognised by its files: ``config.json`` plus weights (``*.h5``) or ``cellseg.json``, and
    nothing but :data:`MODEL_FOLDER_FILES` (in a zip: under at most one top folder).
    """
    if not isinstance(path, (str, os.PathLike)):
        return f"{path!r} is not a path"
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
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"model output path {path!r} must be a path (str or os.PathLike), not {type(path).__name__}")
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

def pretrained_names() -> list[str]:
    """Names accepted by :func:`load_model`: models shipped with cellseg, then stardist's."""
    shipped = sorted(p.stem for p in PRETRAINED_DIR.glob("*.zip")) if PRETRAINED_DIR.is_dir() else []
    return shipped + list(STARDIST_PRETRAINED)


# Limits on model zips, checked before anything is unpacked. Real bundles are 0.2 MB (the tests' tiny
# U-Net) to about 8 MB (stardist's default U-Net, 32 rays) and 120 MB (the resnet50 backbone); weights
# (random-looking floats) compress by less than 2x and the JSON files are a few kB.
#: Most entries a model zip may hold (a bundle has 4; a zipped stardist folder with logs a few dozen).
MAX_ZIP_ENTRIES = 1000
#: Most bytes a model zip may unpack to (all entries together), and the largest model zip file read.
MAX_UNPACKED_BYTES = 1 << 30
#: Most a model zip may unpack to relative to its own size, once it unpacks to more than
#: :data:`RATIO_FREE_BYTES` (a zip bomb packs gigabytes of zeros into kilobytes).
MAX_COMPRESSION_RATIO = 50
#: Unpacked size below which the compression ratio is not checked (small zips of JSON compress well).
RATIO_FREE_BYTES = 16 << 20
#: Largest config.json / cellseg.json / thresholds.json read.
MAX_JSON_BYTES = 16 << 20


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
    if isinstance(source, (bytes, bytearray, memoryview)):
        return from_bytes(bytes(source))
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"model source {source!r} must be a model folder, a .zip file, zip bytes or a pretrained "
                         f"name, not {type(source).__name__}")
    if not str(source).strip():
        raise InputError("model source is empty: give a model folder, a .zip file or a pretrained name")
    path = Path(source)
    if path.is_dir():
        return _load_bundle(_FolderFiles(path))
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path} is not a model zip (expected a zip of a model folder)")
        size = path.stat().st_size
        if size > MAX_UNPACKED_BYTES:
            raise ModelLoadError(f"model zip {path} is {size / 2**20:.0f} MB, more than the "
                                 f"{MAX_UNPACKED_BYTES >> 20} MB a model may have")
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
    """Load a model from bundle zip bytes (as written by :meth:`CellsegModel.to_bytes`).

    The zip is checked (see :func:`load_model`) and only the files a model needs are unpacked, straight
    into the model's own folder.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InputError(f"model zip bytes must be bytes, not {type(data).__name__}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise ModelLoadError(f"model from {origin}: not a valid model zip ({err})") from err
    with zf:
        files = _ZipFiles(zf, origin, len(data))
        model = _load_bundle(files)
        if zf.namelist() == list(BUNDLE_FILES):
            model._bundle_bytes = data
    return model


as_model_config = ModelConfig.of


def check_thresholds(value: Any, name: str = "thresholds") -> tuple[float, float]:
    """``(prob, nms)`` from a ``{"prob": p, "nms": n}`` mapping of numbers in [0, 1]; InputError naming the key."""
    if not isinstance(value, dict) or any(k not in value for k in ("prob", "nms")):
        raise InputError(f"{name} must be a dict with keys 'prob' and 'nms' (numbers in [0, 1]), got {value!r}"[:300])
    prob = require_number(value["prob"], f"{name}['prob']", 0, 1)
    nms = require_number(value["nms"], f"{name}['nms']", 0, 1)
    return prob, nms


# -- reading bundles ------------------------------------------------------------------------------

class _BundleFiles:
    """The files at the top of a model folder or model zip: names, sizes, contents."""

    where: str  # "model folder X" / "model zip X", the start of every message
    origin: str  # the folder or zip (recorded as "imported_from" of a model without cellseg.json)
    label: str  # name of a model without cellseg.json

    def names(self) -> set[str]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> Any:
        raise NotImplementedError

    def read(self, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
        if self.size(name) > limit:
            raise ModelLoadError(f"{self.where}: {name} is {self.size(name) >> 20} MB, more than the {limit >> 20} MB "
                                 "such a file may have")
        with self._reading(name), self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ModelLoadError(f"{self.where}: {name} is larger than {limit >> 20} MB")
        return data

    def copy(self, name: str, dest: Path) -> None:
        """Copy ``name`` to ``dest``, never writing more than its size says (nor the unpacked-size limit)."""
        expected = self.size(name)
        written = 0
        with self._reading(name), self.open(name) as f, open(dest, "wb") as out:
            while chunk := f.read(1 << 20):
                written += len(chunk)
                if written > expected or written > MAX_UNPACKED_BYTES:
                    raise ModelLoadError(f"{self.where}: {name} holds more data than the zip says ({expected} "
                                         "bytes): the zip is corrupt or crafted")
                out.write(chunk)

    @contextlib.contextmanager
    def _reading(self, name: str):
        try:
            yield
        except ModelLoadError:
            raise
        except (OSError, EOFError, RuntimeError, NotImplementedError, ValueError, zipfile.BadZipFile,
                zlib.error) as err:
            raise ModelLoadError(f"{self.where}: cannot read {name} ({type(err).__name__}: {err})") from err


class _FolderFiles(_BundleFiles):
    def __init__(self, folder: Path, where: str | None = None) -> None:
        self.folder = folder
        self.where = where or f"model folder {folder}"
        self.origin, self.label = str(folder), folder.name
        try:
            self._names = {p.name for p in folder.iterdir() if p.is_file()}
        except OSError as err:
            raise ModelLoadError(f"{self.where} cannot be read ({err.strerror or err})") from err

    def names(self) -> set[str]:
        return self._names

    def size(self, name: str) -> int:
        return (self.folder / name).stat().st_size

    def open(self, name: str) -> Any:
        return open(self.folder / name, "rb")


class _ZipFiles(_BundleFiles):
    """The model inside a zip: its files at the top or in one folder; the zip's limits checked first."""

    def __init__(self, zf: zipfile.ZipFile, origin: str, zip_size: int) -> None:
        self.zf = zf
        self.where = f"model zip {origin}" if origin != "bytes" else "model zip (bytes)"
        self.origin, self.label = origin, Path(origin).stem if origin != "bytes" else "model"
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise ModelLoadError(f"{self.where} has {len(infos)} entries, more than the {MAX_ZIP_ENTRIES} a model "
                                 "zip may have")
        total = 0
        for info in infos:
            parts = info.filename.replace("\\", "/").split("/")
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts[0][1:2] == ":"):
                raise ModelLoadError(f"{self.where}: unsafe path {info.filename!r} in zip (outside the model folder)")
            total += info.file_size
        limit = min(MAX_UNPACKED_BYTES, max(RATIO_FREE_BYTES, MAX_COMPRESSION_RATIO * zip_size))
        if total > limit:
            why = (f"more than {MAX_UNPACKED_BYTES >> 20} MB" if limit == MAX_UNPACKED_BYTES else
                   f"more than {MAX_COMPRESSION_RATIO} times its own size of {zip_size} bytes")
            raise ModelLoadError(f"{self.where} would unpack to {total} bytes, {why}; refusing to unpack it "
                                 "(a damaged or malicious zip)")
        files = [i for i in infos if not i.is_dir()]
        configs = sorted(i.filename for i in files if i.filename.rsplit("/", 1)[-1] == "config.json")
        if "config.json" in configs:
            prefix = ""
        elif len(configs) == 1:
            prefix = configs[0][: -len("config.json")]
        elif not configs:
            raise ModelLoadError(f"{self.where}: no config.json found in the zip")
        else:
            raise ModelLoadError(f"{self.where} holds {len(configs)} config.json files ({', '.join(configs[:3])}); "
                                 "zip one model folder")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in files:
            rest = info.filename[len(prefix):]
            if info.filename.startswith(prefix) and rest and "/" not in rest:
                if rest in self.members:
                    raise ModelLoadError(f"{self.where} holds {info.filename} twice")
                self.members[rest] = info

    def names(self) -> set[str]:
        return set(self.members)

    def size(self, name: str) -> int:
        return self.members[name].file_size

    def open(self, name: str) -> Any:
        return self.zf.open(self.members[name])


def _json_object(files: _BundleFiles, name: str) -> dict[str, Any]:
    """A JSON file of the bundle, which must hold a JSON object."""
    text = files.read(name)
    try:
        obj = json.loads(text.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{files.where}: {name} is not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{files.where}: {name} must hold a JSON object ({{...}}), not a "
                             f"{_json_kind(obj)}")
    return obj


def _json_kind(obj: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(obj), type(obj).__name__)


#: Fields that cellseg.json's model_config and stardist's config.json both hold: they must agree.
_SHARED_FIELDS = ("n_rays", "grid", "n_channel_in", "unet_n_depth", "unet_n_filter_base")


def _check_meta(meta: dict[str, Any], where: str) -> None:
    """The parts of cellseg.json cellseg relies on: format, model_config, provenance, geometry."""
    fmt = meta.get("format", "cellseg-bundle")
    if fmt != "cellseg-bundle":
        raise ModelLoadError(f"{where}: {BUNDLE_META}: format={fmt!r}, expected 'cellseg-bundle'")
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelLoadError(f"{where}: {BUNDLE_META}: format_version={version!r} must be a positive integer")
    if version > 1:
        raise ModelLoadError(f"{where}: {BUNDLE_META}: format_version {version} was written by a newer cellseg "
                             f"(this is cellseg {_version()}, format 1); update cellseg")
    if "model_config" not in meta:
        raise ModelLoadError(f"{where}: {BUNDLE_META} has no model_config (the model's architecture); restore "
                             f"the file or remove it to load the model from config.json alone")
    for key in ("provenance", "geometry"):
        if key in meta and not isinstance(meta[key], dict):
            raise ModelLoadError(f"{where}: {BUNDLE_META}: {key} must be a JSON object, not a {_json_kind(meta[key])}")
    prov = meta.get("provenance", {})
    checks = {"name": str, "steps_trained": int, "trainings": list, "retrained_from": list}
    for key, kind in checks.items():
        v = prov.get(key)
        if key in prov and (not isinstance(v, kind) or isinstance(v, bool) or (kind is int and v < 0)):
            raise ModelLoadError(f"{where}: {BUNDLE_META}: provenance.{key}={v!r} must be a "
                                 f"{'non-negative integer' if kind is int else _json_kind(kind())}")
    if not all(isinstance(t, dict) for t in prov.get("trainings", [])):
        raise ModelLoadError(f"{where}: {BUNDLE_META}: provenance.trainings must be a list of JSON objects")
    geometry = meta.get("geometry", {})
    rf = geometry.get("receptive_field", 0)
    if isinstance(rf, bool) or not isinstance(rf, int) or rf < 0:
        raise ModelLoadError(f"{where}: {BUNDLE_META}: geometry.receptive_field={rf!r} must be a non-negative integer")
    if not isinstance(geometry.get("fingerprint", ""), str):
        raise ModelLoadError(f"{where}: {BUNDLE_META}: geometry.fingerprint must be a string")


def _load_bundle(files: _BundleFiles) -> CellsegModel:
    """Check a model folder's or zip's files and build the model (see :func:`load_model`)."""
    where = files.where
    names = files.names()
    if "config.json" not in names:
        raise ModelLoadError(f"{where} has no config.json")
    weights = [n for n in (WEIGHTS_FILE, "weights_last.h5", *sorted(n for n in names if n.endswith(".h5")))
               if n in names]
    if not weights:
        raise ModelLoadError(f"{where} has no weights file (weights_best.h5 or *.h5)")
    weights_name = weights[0]
    sd_config = _json_object(files, "config.json")
    try:
        stardist_config = ModelConfig.from_stardist(sd_config)
    except InputError as err:
        raise ModelLoadError(f"{where}: config.json: {err}") from err
    meta: dict[str, Any] = {}
    if BUNDLE_META in names:
        meta = _json_object(files, BUNDLE_META)
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
    thresholds = DEFAULT_THRESHOLDS
    if "thresholds.json" in names:
        try:
            prob, nms = check_thresholds(_json_object(files, "thresholds.json"), "thresholds.json")
        except InputError as err:
            raise ModelLoadError(f"{where}: {err}") from err
        thresholds = {"prob": prob, "nms": nms}
    klass = model_class(config.backbone)

    workdir = Path(tempfile.mkdtemp(prefix="cellseg-model-"))
    try:
        folder = workdir / "model"
        folder.mkdir()
        files.copy("config.json", folder / "config.json")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Couldn't find any network weights": loaded below
                sd_model = _quiet(lambda: klass(None, name="model", basedir=str(workdir)))
        except (ModelLoadError, InputError) as err:
            raise ModelLoadError(f"{where}: {err}") from err
        except Exception as err:  # stardist and keras raise many kinds on a config they cannot build
            raise ModelLoadError(f"{where}: config.json does not describe a network stardist can build "
                                 f"({_one_line(err)})") from err
        files.copy(weights_name, folder / WEIGHTS_FILE)
        _load_weights(sd_model, folder / WEIGHTS_FILE, weights_name, where, with_meta=bool(meta))
        sd_model.thresholds = thresholds
        provenance = meta.get("provenance") or {"name": files.label, "imported_from": files.origin,
                                                "steps_trained": 0, "trainings": []}
        model = CellsegModel(sd_model, config, provenance, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if meta.get("geometry"):
        model.geometry = dict(meta["geometry"])
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
    model = _load_bundle(_FolderFiles(Path(sd_model.logdir), where=f"stardist's pretrained model {name}"))
    model.provenance.update({"name": name, "imported_from": f"stardist pretrained {name}"})
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



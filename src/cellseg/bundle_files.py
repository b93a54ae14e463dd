"""The model bundle's files: their names, reading a folder or zip within limits, packing a zip, and where
a model may be written.

A bundle is stardist's model folder (``config.json``, ``thresholds.json``, ``weights_best.h5``) plus
``cellseg.json``; its zip holds the same four files with a fixed timestamp, so that its bytes depend on
the content only. Zips are checked (entries, sizes, paths) before anything is unpacked. No TensorFlow
here; :mod:`cellseg.bundle` reads the metadata, :mod:`cellseg.models` builds the network.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.errors import InputError, ModelLoadError

CONFIG_FILE = "config.json"  # stardist's Config2D
THRESHOLDS_FILE = "thresholds.json"  # stardist's {"prob": .., "nms": ..}
WEIGHTS_FILE = "weights_best.h5"
BUNDLE_META = "cellseg.json"  # format, model_config, provenance, geometry
BUNDLE_FILES = (CONFIG_FILE, THRESHOLDS_FILE, WEIGHTS_FILE, BUNDLE_META)  # in the zip's order
#: Files a model folder may hold (cellseg's bundle and what stardist writes); a folder with anything
#: else is not replaced, because those other files would be lost.
MODEL_FOLDER_FILES = frozenset({*BUNDLE_FILES, "weights_last.h5", "weights_now.h5"})
#: Timestamp of every zip member.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

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


# -- reading --------------------------------------------------------------------------------------

class BundleFiles:
    """The files at the top of a model folder or model zip: names, sizes, contents (a context manager)."""

    where: str  # "model folder X" / "model zip X", the start of every message
    origin: str  # the folder or zip (recorded as "imported_from" of a model without cellseg.json)
    label: str  # name of a model without cellseg.json

    def names(self) -> set[str]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def open(self, name: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> BundleFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


class FolderFiles(BundleFiles):
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


class ZipFiles(BundleFiles):
    """The model inside zip bytes: its files at the top or in one folder; the zip's limits checked first.

    ``data`` keeps the bytes; ``exact`` says they are a bundle as :func:`pack_zip` writes it (the four
    files, in order, at the top).
    """

    def __init__(self, data: bytes, origin: str = "bytes") -> None:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise InputError(f"model zip bytes must be bytes, not {type(data).__name__}")
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
            raise ModelLoadError(f"model from {origin}: not a valid model zip ({err})") from err
        try:
            self._index(origin, len(data))
        except BaseException:
            self.zf.close()
            raise
        self.data = data
        self.exact = self.zf.namelist() == list(BUNDLE_FILES)

    def _index(self, origin: str, zip_size: int) -> None:
        self.where = f"model zip {origin}" if origin != "bytes" else "model zip (bytes)"
        self.origin, self.label = origin, Path(origin).stem if origin != "bytes" else "model"
        infos = self.zf.infolist()
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
        configs = sorted(i.filename for i in files if i.filename.rsplit("/", 1)[-1] == CONFIG_FILE)
        if CONFIG_FILE in configs:
            prefix = ""
        elif len(configs) == 1:
            prefix = configs[0][: -len(CONFIG_FILE)]
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

    def close(self) -> None:
        self.zf.close()


def open_bundle(source: str | os.PathLike | bytes) -> BundleFiles | None:
    """The files of a model folder, a ``.zip`` file or zip bytes; None for a path that is neither a folder
    nor a file (perhaps a pretrained model's name). :class:`InputError` for a wrong type or an empty
    path, :class:`ModelLoadError` for a zip that is not one or breaks the limits."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ZipFiles(bytes(source))
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"model source {source!r} must be a model folder, a .zip file, zip bytes or a pretrained "
                         f"name, not {type(source).__name__}")
    if not str(source).strip():
        raise InputError("model source is empty: give a model folder, a .zip file or a pretrained name")
    path = Path(source)
    if path.is_dir():
        return FolderFiles(path)
    if not path.is_file():
        return None
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a model zip (expected a zip of a model folder)")
    size = path.stat().st_size
    if size > MAX_UNPACKED_BYTES:
        raise ModelLoadError(f"model zip {path} is {size / 2**20:.0f} MB, more than the "
                             f"{MAX_UNPACKED_BYTES >> 20} MB a model may have")
    return ZipFiles(path.read_bytes(), origin=str(path))


def json_object(files: BundleFiles, name: str) -> dict[str, Any]:
    """A JSON file of the bundle, which must hold a JSON object."""
    text = files.read(name)
    try:
        obj = json.loads(text.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{files.where}: {name} is not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{files.where}: {name} must hold a JSON object ({{...}}), not a {json_kind(obj)}")
    return obj


def json_kind(obj: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(obj), type(obj).__name__)


# -- writing --------------------------------------------------------------------------------------

def json_bytes(obj: Any) -> bytes:
    """A bundle JSON file's bytes (sorted keys, indented; tuples and NumPy scalars as JSON)."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=True).encode()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def pack_zip(contents: dict[str, bytes]) -> bytes:
    """The bundle zip of the four :data:`BUNDLE_FILES` (deflated, fixed timestamp)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in BUNDLE_FILES:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, contents[name])
    return buf.getvalue()


# -- where a model may be written ----------------------------------------------------------------

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
    if CONFIG_FILE not in names or not (BUNDLE_META in names or any(n.endswith(".h5") for n in names)):
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
    from cellseg.files import check_writable_location

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

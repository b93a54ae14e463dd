"""Image input/output and validation.

Images are numpy arrays ``YX`` or ``YXC`` (channels last); label masks are integer ``YX`` arrays with
0 as background. Every problem with user data raises :class:`cellseg.errors.InputError` with a one-line
message that names the file (or the name given by the caller) and what is wrong, so the command line
and the KNIME nodes can show it as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import io as _io
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cellseg.errors import InputError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "InputWarning",
    "atomic_folder",
    "atomic_path",
    "by_stem",
    "available_memory",
    "check_annotations",
    "check_image",
    "check_distinct_outputs",
    "check_mask",
    "check_output_file",
    "check_output_folder",
    "check_outside_inputs",
    "check_writable_location",
    "decode_tiff",
    "format_bytes",
    "encode_png",
    "encode_tiff",
    "list_images",
    "load_images",
    "load_pairs",
    "normalize",
    "overlay",
    "read_image",
    "read_mask",
    "write_bytes_atomic",
    "write_image",
]

#: Type of an "is this an earlier output of mine?" test for :func:`check_output_folder`.
Recogniser = Callable[[Path], bool]

#: File suffixes (lower case) that :func:`read_image` understands.
SUPPORTED_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

_TIFF_SUFFIXES = (".tif", ".tiff")
_PNG_SUFFIXES = (".png",)
#: Most channels an image may have (more than this is likely a Z stack or a time series).
MAX_CHANNELS = 16
#: Most pages of a TIFF without axes metadata that are read as channels (more: a Z stack or time series).
MAX_UNLABELLED_PAGES = 4


class InputWarning(UserWarning):
    """Data that may be right but looks wrong (a label made of separate pieces, TIFF pages that may be Z
    slices); the message names the file. ``key`` identifies the finding independently of the name, so that a
    caller that sees one file twice (the CLI checks masks when reading and again when training) reports it
    once. The command line prints these as ``cellseg: warning: ...``."""

    def __init__(self, message: str, key: object = None) -> None:
        super().__init__(message)
        self.key = key if key is not None else message


def _warn(message: str, key: object = None) -> None:
    warnings.warn(InputWarning(message, key), stacklevel=3)


# ----------------------------------------------------------------------------------------------
# array layout
# ----------------------------------------------------------------------------------------------
def _to_yxc(arr: np.ndarray, name: str, squeeze: bool = True) -> np.ndarray:
    """Bring an array to ``YX`` or ``YXC`` layout.

    Singleton axes are dropped (when `squeeze`), and a ``CYX`` array with at most 4 leading channels is
    moved to channels last, because tifffile returns planar multi-channel TIFFs that way.
    """
    if squeeze or arr.ndim > 3:
        arr = np.squeeze(arr)
        if arr.ndim < 2:  # e.g. a 1xN image: keep two spatial axes
            arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr.reshape(1, 1)
    if arr.ndim == 3 and arr.shape[0] <= 4 and arr.shape[1] > 4 and arr.shape[2] > 4:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise InputError(f"{name}: image has shape {arr.shape}; expected 2D YX or YXC (Z stacks and time series are not supported)")
    return np.ascontiguousarray(arr)


#: tifffile's axis codes of stacks named by ImageJ/OME/other metadata, and how to call one plane.
_NAMED_STACKS = {"Z": ("Z stack", "slices", "slice"), "T": ("time series", "time points", "time point")}


def _tiff_layout(arr: np.ndarray, axes: str, name: str, squeeze: bool = True) -> np.ndarray:
    """``YX``/``YXC`` from a TIFF series and its tifffile axes (``ZYX``, ``CYX``, ``YXS``, ``IYX``, ...).

    The axes say what the planes of a stack are: ImageJ/OME channels (``C``) and samples (``S``, e.g. RGB)
    become the channel axis; Z slices and time points (``Z``, ``T``) are refused, naming them, because
    cellseg segments 2D images. Pages without such metadata (``I``, ``Q``) are ambiguous: up to
    :data:`MAX_UNLABELLED_PAGES` are read as channels with an :class:`InputWarning`, more are refused.
    """
    if len(axes) != arr.ndim or "Y" not in axes or "X" not in axes or len(set(axes)) != len(axes):
        return _to_yxc(arr, name, squeeze)
    keep = [i for i, (a, n) in enumerate(zip(axes, arr.shape)) if n > 1 or a in "YX"]
    if not squeeze and not any(axes[i] in "CS" for i in keep):  # keep a singleton channel axis (YX1)
        keep = sorted([*keep, *[i for i, a in enumerate(axes) if a in "CS"][:1]])
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    shape = "x".join(str(n) for n in arr.shape)
    stacks = [(a, n) for a, n in zip(axes, arr.shape) if a not in "YXCS" and n > 1]
    channels = [(a, n) for a, n in zip(axes, arr.shape) if a in "CS" and n > 1]
    named = [(a, n) for a, n in stacks if a in _NAMED_STACKS]
    if named:
        a, n = named[0]
        kind, planes, plane = _NAMED_STACKS[a]
        extra = "".join(f", {m} {_NAMED_STACKS[b][1] if b in _NAMED_STACKS else 'planes'} ({b})"
                        for b, m in stacks if b != a)
        chan = f", {channels[0][1]} channels" if channels else ""
        raise InputError(f"{name}: a {kind} of {n} {planes}{extra}{chan} (axes {axes}, shape {shape}), not a 2D "
                         f"image; cellseg segments 2D images: save one {plane} or a projection as its own file")
    if stacks:
        a, n = stacks[0]
        if len(stacks) == 1 and not channels and n <= MAX_UNLABELLED_PAGES:
            _warn(f"{name}: {n} pages without metadata that says whether they are channels or Z slices; read "
                  f"as {n} channels (save with ImageJ or OME channel metadata to be sure)",
                  ("pages", name, arr.shape))
            axes = axes.replace(a, "C")
            channels = [("C", n)]
        else:
            total = int(np.prod([m for _, m in stacks]))
            raise InputError(f"{name}: a stack of {total} pages (axes {axes}, shape {shape}) without metadata "
                             "that says they are channels; cellseg segments 2D images (a Z stack or time series "
                             "needs one plane or a projection saved as its own file)")
    if len(channels) > 1:
        raise InputError(f"{name}: image has {channels[0][1]} channels of {channels[1][1]} samples each (axes "
                         f"{axes}, shape {shape}); expected 2D YX or YXC")
    order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
    return np.ascontiguousarray(arr.transpose(order))


class _TiffLog(logging.Filter):
    """Holds back tifffile's log messages (e.g. "invalid offset to first page") while a file is read, so
    that they end up in the one-line error instead of on stderr; other threads are not affected."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        caught = getattr(self.local, "caught", None)
        if caught is None:
            return True
        caught.append(record.getMessage())
        return False


_tiff_log = _TiffLog()
logging.getLogger("tifffile").addFilter(_tiff_log)


def _log_text(messages: list[str]) -> str:
    """``": msg; msg"`` of tifffile's log messages without their object prefix (``<tifffile.TiffPages @8>``)."""
    text = "; ".join(dict.fromkeys(m.split("> ", 1)[-1] if m.startswith("<") else m for m in messages))
    return f": {text}" if text else ""


def _corrupt(name: str, detail: str) -> InputError:
    return InputError(f"{name}: cannot read image, the file is truncated or corrupt ({detail})")


def _read_tiff(source: str | os.PathLike | _io.BytesIO, name: str, squeeze: bool = True) -> np.ndarray:
    """Read the first series of a TIFF with its axes (see :func:`_tiff_layout`); corrupt files -> InputError."""
    _tiff_log.local.caught = caught = []
    try:
        with tifffile.TiffFile(source) as tif:
            series = tif.series[0] if tif.series else None
            if series is None:
                raise _corrupt(name, "no image in the file" + _log_text(caught))
            axes = series.axes
            arr = np.asarray(series.asarray())
    except InputError:
        raise
    except Exception as exc:  # tifffile/zlib raise many types for broken files
        raise _corrupt(name, f"{type(exc).__name__}: {exc}") from exc
    finally:
        _tiff_log.local.caught = None
    if arr.size == 0:
        raise _corrupt(name, "no image data" + _log_text(caught))
    return _tiff_layout(arr, axes, name, squeeze)


# ----------------------------------------------------------------------------------------------
# reading and writing
# ----------------------------------------------------------------------------------------------
def _read_pillow(path: Path) -> np.ndarray:
    """Read a PNG/JPEG with Pillow, dropping an all-opaque alpha channel.

    Palette ('P') images are returned as palette indices, which is what indexed label masks need.
    """
    with Image.open(path) as im:
        im.load()  # forces decoding: truncated files fail here, not later
        if im.mode == "1":
            arr = np.asarray(im, dtype=np.uint8)
        elif im.mode in ("RGBA", "LA"):
            arr = np.asarray(im)
            maxval = np.iinfo(arr.dtype).max
            if np.all(arr[..., -1] == maxval):
                arr = arr[..., :-1]
        elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV", "PA", "RGBa", "La"):
            arr = np.asarray(im.convert("RGB"))
        else:
            arr = np.asarray(im)
    return np.array(arr)


def _has_partial_alpha(path: Path) -> bool:
    """Is `path` a PNG whose alpha channel is kept as a channel (not fully opaque)?"""
    if path.suffix.lower() not in _PNG_SUFFIXES:
        return False
    with contextlib.suppress(Exception), Image.open(path) as im:
        return im.mode in ("RGBA", "LA")
    return False


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a ``YX`` or ``YXC`` numpy array.

    TIFFs are read with tifffile (any dtype), PNG/JPEG with Pillow. Singleton axes are squeezed, the
    channels of a TIFF (ImageJ/OME ``C`` axis, samples such as RGB) are moved last and an all-opaque alpha
    channel of an RGBA PNG is dropped, so that callers always see the same layout. TIFF Z stacks and time
    series (ImageJ/OME metadata) are refused; up to 4 TIFF pages without such metadata are read as channels
    with an :class:`InputWarning`.

    Parameters
    ----------
    path : str or path-like
        Image file with one of :data:`SUPPORTED_SUFFIXES`.

    Returns
    -------
    image : ndarray
        ``YX`` or ``YXC`` array with the file's dtype (1-bit images become uint8 0/1).

    Raises
    ------
    InputError
        If the file is missing, has an unsupported suffix, is truncated or corrupt, or is a Z stack or
        time series.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: unsupported image type '{path.suffix}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if not path.is_file():
        raise InputError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    if suffix in _TIFF_SUFFIXES:
        return _read_tiff(path, str(path))
    try:
        arr = np.asarray(_read_pillow(path))
    except Exception as exc:  # Pillow/zlib raise many types for broken files
        raise _corrupt(str(path), f"{type(exc).__name__}: {exc}") from exc
    if arr.size == 0:
        raise InputError(f"{path}: image is empty (shape {arr.shape})")
    return _to_yxc(arr, str(path))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask file (see :func:`read_image`); JPEG is refused, because its lossy compression
    changes pixel values, so that label ids cannot be stored exactly."""
    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise InputError(f"{path}: a JPEG mask; JPEG compression is lossy and cannot store label ids exactly "
                         "(object borders get stray values): save the masks as PNG or TIFF")
    return read_image(path)


def _tiff_kwargs(arr: np.ndarray) -> dict:
    """tifffile.imwrite options that store `arr` losslessly with its exact shape."""
    kwargs: dict = {"compression": "zlib", "metadata": {"axes": "YX" if arr.ndim == 2 else "YXS"}}
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4) and arr.dtype in (np.uint8, np.uint16):
            kwargs["photometric"] = "rgb"
        else:
            kwargs["photometric"] = "minisblack"
        if arr.shape[-1] > 1:  # one sample per pixel has no planar configuration
            kwargs["planarconfig"] = "contig"
    else:
        kwargs["photometric"] = "minisblack"
    return kwargs


def _as_writable_array(array: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise InputError(f"{name}: cannot write an array of shape {arr.shape}; expected non-empty YX or YXC")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: cannot write an array of dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def encode_tiff(array: np.ndarray) -> bytes:
    """Encode an array as lossless (zlib) TIFF bytes.

    The round trip through :func:`decode_tiff` is bit-exact for integer and float dtypes and for ``YX``
    and ``YXC`` arrays; bool is stored as uint8 0/1. Used for image cells in KNIME tables.
    """
    arr = _as_writable_array(array, "image")
    buf = _io.BytesIO()
    tifffile.imwrite(buf, arr, **_tiff_kwargs(arr))
    return buf.getvalue()


def decode_tiff(data: bytes, name: str = "image") -> np.ndarray:
    """Decode TIFF bytes (from :func:`encode_tiff` or any TIFF file) into a ``YX``/``YXC`` array.

    Arrays written by :func:`encode_tiff` come back with their exact shape (a ``YX1`` array stays
    ``YX1``); other TIFFs get the layout rules of :func:`read_image`.

    Raises
    ------
    InputError
        If `data` is empty, truncated or not a TIFF; the message names `name`.
    """
    if data is None or len(data) == 0:
        raise InputError(f"{name}: TIFF data is empty")
    return _read_tiff(_io.BytesIO(bytes(data)), name, squeeze=False)


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 ``YX``/``YXC`` (1-4 channels) or uint16 ``YX`` array as PNG bytes.

    PNG is for previews and small masks; use TIFF for anything else (float, many channels).
    """
    arr = _as_writable_array(array, "image")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8 and (arr.ndim == 2 or arr.shape[-1] in (2, 3, 4)):
        im = Image.fromarray(arr)
    elif arr.dtype == np.uint16 and arr.ndim == 2:
        im = Image.fromarray(arr)  # mode I;16
    else:
        raise InputError(
            f"image: PNG supports uint8 YX/YXC (1-4 channels) or uint16 YX, got {arr.dtype} {arr.shape}; use .tif"
        )
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an image atomically: to a temporary sibling file, then renamed over `path`.

    ``.tif``/``.tiff`` are written losslessly with zlib compression (any dtype), ``.png`` with Pillow
    (see :func:`encode_png`). Parent folders are created. A reader never sees a half-written file, and
    an existing file is left untouched if writing fails.

    Returns
    -------
    path : Path
        The written file.

    Raises
    ------
    InputError
        If the suffix or array is not supported, or the folder cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        data = encode_tiff(array)
    elif suffix in _PNG_SUFFIXES:
        data = encode_png(array)
    else:
        raise InputError(f"{path}: cannot write '{path.suffix}' files (use .tif, .tiff or .png)")
    write_bytes_atomic(path, data)
    return path


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_default_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by :mod:`tempfile` (private: 0600/0700) the permissions a plain
    ``open``/``mkdir`` would have given it under the process umask, before it is renamed into place."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, on any error remove it.

    Readers never see a half-written file: whatever writes to the yielded path either completes and
    replaces `path` in one :func:`os.replace`, or leaves nothing behind (also on cancellation).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"{path}: cannot write to folder {path.parent} ({exc.strerror or exc})") from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"{path}: cannot write {what} ({exc.strerror or exc})") from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder + :func:`os.replace`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


# ----------------------------------------------------------------------------------------------
# output locations: checked before any work is done, written atomically
# ----------------------------------------------------------------------------------------------
def _resolve(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_writable_location(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise :class:`InputError` unless `path` (a file or folder still to be written) can be created.

    Its nearest existing ancestor must be a folder in which this process can create a file (checked by
    creating and removing a hidden probe file, which also catches read-only file systems). Missing
    folders on the way are not created here. Returns `path` as a :class:`~pathlib.Path`.
    """
    if not str(path).strip():  # before Path(), which makes "" the current folder "."
        raise InputError(f"{what}: the path is empty")
    path = Path(path)
    base = _nearest_existing(Path(os.path.abspath(path)).parent)
    if not base.is_dir():
        raise InputError(f"cannot write {what} {path}: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cellseg-probe-", dir=base)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(f"cannot write {what} {path}: folder {base} is not writable "
                             f"({exc.strerror or exc})") from exc
        raise InputError(f"cannot write {what} {path}: cannot create files in {base} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)
    return path


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate without swapping, as far as the system tells:
    ``MemAvailable`` of ``/proc/meminfo`` (else free pages from :func:`os.sysconf`), lowered to what a
    cgroup memory limit leaves. None when unknown."""
    avail = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if avail is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(limit_file).read_text().strip())  # "max" (no limit) raises ValueError
            if limit < 1 << 60:
                left = max(limit - int(Path(usage_file).read_text().strip()), 0)
                avail = left if avail is None else min(avail, left)
            break
    return avail


def format_bytes(n: float) -> str:
    """``n`` bytes in human units (``1.5 GiB``)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _overlap(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> tuple[str, str, Path] | None:
    """(relation, input description, input path) of the first input that `out` is, contains or lies in."""
    o = _resolve(out)
    for desc, inp in inputs.items():
        if inp is None or not os.path.lexists(inp):
            continue
        i = _resolve(inp)
        if o == i:
            return "is", desc, Path(inp)
        if i in o.parents:
            return "lies inside", desc, Path(inp)
        if o in i.parents:
            return "contains", desc, Path(inp)
    return None


def check_outside_inputs(path: str | os.PathLike, what: str,
                         inputs: dict[str, str | os.PathLike | None]) -> Path:
    """Raise :class:`InputError` (naming both) if the output `path` is, contains or lies inside one of
    `inputs` (description -> path, e.g. ``{"images folder": "raw"}``); return `path` as a Path."""
    if not str(path).strip():  # before Path(), which makes "" the current folder "."
        raise InputError(f"{what}: the path is empty")
    path = Path(path)
    hit = _overlap(path, inputs)
    if hit is not None:
        relation, desc, inp = hit
        raise InputError(f"{what} {path} {relation} the {desc} {inp}; choose a location outside the inputs "
                         "(their files could be overwritten)")
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder", *,
                        inputs: dict[str, str | os.PathLike | None] | None = None, overwrite: bool = False,
                        earlier_output: Recogniser | None = None,
                        earlier_desc: str = "an earlier result") -> Path:
    """Check, before any work, that a command may write its result folder at `path`.

    Refused (:class:`InputError`, one line): a folder that is, contains or lies inside one of `inputs`
    (description -> path, e.g. ``{"images folder": "raw"}``); an existing file; a non-empty folder,
    unless ``earlier_output(path)`` recognises it as an earlier result of the same command *and*
    `overwrite` is set; a location whose parent cannot be written (the result is assembled in a
    temporary sibling folder, see :func:`atomic_folder`). A missing or empty folder is accepted.
    """
    path = check_outside_inputs(path, what, inputs or {})
    if os.path.lexists(path):
        if not path.is_dir():
            raise InputError(f"{what} {path} exists and is not a folder; choose a new folder")
        try:
            used = any(path.iterdir())
        except OSError as exc:
            raise InputError(f"{what} {path} cannot be read ({exc.strerror or exc})") from exc
        if used:
            if earlier_output is None or not earlier_output(path):
                raise InputError(f"{what} {path} is not empty and does not hold only {earlier_desc}; refusing to "
                                 "write into it: choose a new or empty folder")
            if not overwrite:
                raise InputError(f"{what} {path} already holds {earlier_desc}; pass --overwrite to replace it")
    return check_writable_location(path, what)


def check_output_file(path: str | os.PathLike, what: str = "output file", *,
                      inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Check, before any work, that a report file (CSV, JSON) can be written at `path`.

    Refused: a folder; the path of an input file, or of an existing file inside an input folder (it would
    be overwritten); a location that cannot be written. An existing unrelated file is replaced (reports are
    written atomically, see :func:`atomic_path`).
    """
    if not str(path).strip():  # before Path(), which makes "" the current folder "."
        raise InputError(f"{what}: the path is empty")
    path = Path(path)
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a folder; give a file name")
    if os.path.lexists(path):
        hit = _overlap(path, inputs or {})
        if hit is not None:
            _, desc, inp = hit
            raise InputError(f"{what} {path} would overwrite a file of the {desc} {inp}; choose another path")
        if not os.path.isfile(path):
            raise InputError(f"{what} {path} exists and is not a regular file")
    return check_writable_location(path, what)


def check_distinct_outputs(outputs: dict[str, str | os.PathLike | None]) -> None:
    """Raise :class:`InputError` if two outputs (description -> path) are the same or one lies in the other."""
    given = [(desc, p) for desc, p in outputs.items() if p is not None]
    for k, (desc_a, a) in enumerate(given):
        for desc_b, b in given[k + 1:]:
            ra, rb = _resolve(a), _resolve(b)
            if ra == rb:
                raise InputError(f"the {desc_a} and the {desc_b} are the same path {a}; give each its own")
            if ra in rb.parents or rb in ra.parents:
                inner, outer = ((desc_b, b), (desc_a, a)) if ra in rb.parents else ((desc_a, a), (desc_b, b))
                raise InputError(f"the {inner[0]} {inner[1]} lies inside the {outer[0]} {outer[1]}; "
                                 "give each its own place")


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _commit_folder(tmp: Path, path: Path, what: str, replace: bool) -> None:
    if not os.path.lexists(path) or _is_empty_dir(path):
        try:
            os.rename(tmp, path)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise InputError(f"{what} {path} was created by someone else while this ran (another run writing "
                                 "to the same place?); left it as it was") from exc
            raise
        return
    if not replace:
        raise InputError(f"{what} {path} exists; left it as it was")
    if path.is_symlink() or not path.is_dir():
        raise InputError(f"{what} {path} exists and is not a folder; left it as it was")
    if _exchange(tmp, path):  # the new folder is at `path`, the old one at `tmp` (removed by the caller)
        return
    # no atomic exchange here: move the old folder aside, the new one in, and the old one back on failure
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    try:
        os.rename(path, old)  # replaces the empty placeholder `old`
    except BaseException:
        with contextlib.suppress(OSError):
            old.rmdir()
        raise
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, what: str = "folder", replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; when the block succeeds it becomes `path` at once.

    `path` must not exist or be an empty folder; with `replace` it may be a folder, which is swapped for
    the new one and then deleted (callers decide first whether that folder may be replaced, e.g. with
    :func:`check_output_folder` or :func:`cellseg.models.check_model_target`). On Linux the swap is one
    ``renameat2(RENAME_EXCHANGE)``, so that at no moment is there nothing at `path`; elsewhere two
    renames, undone on failure. On any error or interruption the temporary folder (and any parent
    folders made for it) is removed and `path` is left as it was.
    """
    path = Path(path)
    parent = path.parent
    made = []
    p = Path(os.path.abspath(parent))
    while not os.path.lexists(p) and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc

    def clean() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # deepest first; only folders made here and still empty
            with contextlib.suppress(OSError):
                d.rmdir()

    try:
        yield tmp
    except BaseException:
        clean()
        raise
    try:
        set_default_mode(tmp)
        _commit_folder(tmp, path, what, replace)
    except BaseException as exc:
        clean()
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # after an exchange: the old folder


# ----------------------------------------------------------------------------------------------
# normalisation and validation
# ----------------------------------------------------------------------------------------------
def normalize(
    image: np.ndarray, pmin: float = 1.0, pmax: float = 99.8, clip: bool = False, eps: float = 1e-20
) -> np.ndarray:
    """Percentile-normalise an image to about [0, 1] as float32, per channel.

    This is :func:`csbdeep.utils.normalize` over the spatial axes (``axis=(0, 1)``), the input
    normalisation StarDist models are trained with, so predictions match StarDist's own pipeline.

    Parameters
    ----------
    image : ndarray
        ``YX`` or ``YXC`` image.
    pmin, pmax : float
        Percentiles mapped to 0 and 1.
    clip : bool
        Clip the result to [0, 1].
    eps : float
        Added to the denominator to avoid division by zero on constant images.
    """
    from csbdeep.utils import normalize as _csb_normalize

    if not 0 <= pmin < pmax <= 100:
        raise InputError(f"normalize: need 0 <= pmin < pmax <= 100, got pmin={pmin}, pmax={pmax}")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise InputError(f"normalize: expected a YX or YXC image, got shape {arr.shape}")
    return np.asarray(_csb_normalize(arr, pmin, pmax, axis=(0, 1), clip=clip, eps=eps, dtype=np.float32))


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an image and return it as a numpy array (bool becomes uint8).

    Requires a non-empty numeric ``YX`` or ``YXC`` array (at most :data:`MAX_CHANNELS` channels) without
    NaN or infinite values, so that later failures inside TensorFlow cannot happen on bad input.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name}: image dtype {arr.dtype} is not numeric")
    if arr.size == 0:
        raise InputError(f"{name}: image is empty (shape {arr.shape})")
    if arr.ndim not in (2, 3):
        raise InputError(f"{name}: image has shape {arr.shape}; expected 2D YX or YXC")
    if arr.ndim == 3 and arr.shape[-1] > MAX_CHANNELS:
        raise InputError(
            f"{name}: image has shape {arr.shape}: {arr.shape[-1]} channels (max {MAX_CHANNELS}) if channels are "
            f"last, or a stack of {arr.shape[0]} planes of {arr.shape[1]}x{arr.shape[2]} (Z slices or time "
            "points?); cellseg segments 2D YX or YXC images: pass one plane or a projection")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            n_bad = int(bad.any(axis=-1).sum() if arr.ndim == 3 else bad.sum())
            raise InputError(f"{name}: image has {n_bad} pixel(s) with NaN or infinite values")
    return arr


#: Share of touching foreground pixel pairs with different values above which a "mask" may be an image of
#: intensities (instance masks: at most 3.4% in DSB 2018; its images: at least 22%).
INTENSITY_NEIGHBOUR_DIFF = 0.15
#: Mean size (pixels) of the equal-valued patches below which such a "mask" is taken as intensities (DSB 2018
#: masks: at least 58 px per object; its images: at most 15 px per patch).
INTENSITY_PATCH_SIZE = 16


def _neighbour_diff(arr: np.ndarray) -> float:
    """Share of 4-neighbour pixel pairs, both foreground, whose values differ (0 for a clean label image
    without touching objects, most pairs for a noisy intensity image)."""
    fg = arr > 0
    pairs = differ = 0
    for a, b, fa, fb in ((arr[:, :-1], arr[:, 1:], fg[:, :-1], fg[:, 1:]), (arr[:-1], arr[1:], fg[:-1], fg[1:])):
        both = fa & fb
        pairs += int(both.sum())
        differ += int((both & (a != b)).sum())
    return differ / pairs if pairs else 0.0


def _cut_by_neighbour(arr: np.ndarray, pieces: np.ndarray, ids: np.ndarray, boxes: list, value: int) -> bool:
    """Does one other label touch every piece of `value` (an object cut in two by an overlapping one)?"""
    from scipy import ndimage as ndi

    common: set | None = None
    for i in ids:
        box = boxes[i - 1]
        sl = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        region = pieces[sl] == i
        ring = ndi.binary_dilation(region, structure=np.ones((3, 3), bool)) & ~region
        touching = set(np.unique(arr[sl][ring]).tolist()) - {0, int(value)}
        common = touching if common is None else common & touching
        if not common:
            return False
    return bool(common)


def _check_label_structure(arr: np.ndarray, name: str, label_components: bool, annotation: bool) -> None:
    """Refuse images of intensities and class masks given as instance masks; warn about split labels.

    The mask is cut into *pieces*: 8-connected regions of one value. Instance labels have about one piece
    per label value. An intensity image (the raw image given as its mask, a probability map) has many small
    pieces per value and neighbouring pixels that mostly differ; a class (semantic) mask has many objects
    per value. A label of several pieces counts unless all its pieces touch the image border (an object
    leaving and re-entering the image) or one other label touches all of them (an object cut by an
    overlapping one); such labels occur in real annotations (DSB 2018 has two). A few such labels are an
    :class:`InputWarning` (with `annotation`); half of the labels (at least 3), or twice as many pieces as
    labels, an error.
    """
    from scipy import ndimage as ndi
    from skimage.measure import label as sk_label

    pieces = sk_label(arr, background=0, connectivity=2)
    n_pieces = int(pieces.max())
    if n_pieces == 0:
        return
    flat = pieces.ravel()
    value = np.zeros(n_pieces + 1, arr.dtype)
    value[flat] = arr.ravel()
    size = np.bincount(flat, minlength=n_pieces + 1)
    labels, per_label = np.unique(value[1:], return_counts=True)
    n_labels = len(labels)
    fragmented = n_pieces >= 2 * n_labels and n_pieces - n_labels >= 3
    mean_piece = float(size[1:].mean())
    diff = _neighbour_diff(arr)
    if diff > INTENSITY_NEIGHBOUR_DIFF and (fragmented or mean_piece < INTENSITY_PATCH_SIZE):
        raise InputError(
            f"{name}: looks like an image of intensities, not instance labels: its {n_labels} values form "
            f"{n_pieces} separate patches ({mean_piece:.1f} px on average) and {diff:.0%} of neighbouring "
            "foreground pixels differ; a mask has 0 for background and one integer id per object (was an image "
            "given as its mask?)")
    if label_components:
        return
    split = []  # (label, piece sizes) of labels made of separate pieces
    if not fragmented:
        border = set(np.unique(np.concatenate([pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]])).tolist())
        boxes = ndi.find_objects(pieces)
        order = np.argsort(value[1:], kind="stable") + 1  # piece ids grouped by label value
        starts = np.concatenate([[0], np.cumsum(per_label)])
        for k in np.nonzero(per_label > 1)[0]:
            ids = order[starts[k]:starts[k + 1]]
            if all(int(i) in border for i in ids) or _cut_by_neighbour(arr, pieces, ids, boxes, labels[k]):
                continue
            split.append((int(labels[k]), sorted((int(size[i]) for i in ids), reverse=True)))
    if fragmented or len(split) >= max(3, n_labels / 2):
        top = np.argsort(-per_label, kind="stable")[:3]
        examples = ", ".join(f"label {labels[i]}: {per_label[i]} pieces" for i in top)
        raise InputError(
            f"{name}: does not look like instance labels: its {n_labels} label value(s) mark {n_pieces} separate "
            f"objects ({examples}), as in a class mask; each object needs its own id: pass label_components=True "
            "(CLI --label-components) to label its connected components")
    if not split or not annotation:
        return
    v, sizes = split[0]
    shown = " + ".join(str(x) for x in sizes[:4]) + (" + ..." if len(sizes) > 4 else "")
    more = ""
    if len(split) > 1:
        others = ", ".join(str(w) for w, _ in split[1:6]) + (", ..." if len(split) > 6 else "")
        more = f"; so are {len(split) - 1} more label(s): {others}"
    _warn(f"{name}: label {v} is made of {len(sizes)} separate pieces ({shown} px){more}; an id should mark one "
          "object: check the annotation, or pass label_components=True (CLI --label-components) to give every "
          "piece its own id", ("pieces", arr.shape, tuple((w, len(z)) for w, z in split)))


def binary_mask_problem(mask: np.ndarray) -> str | None:
    """``"binary (values 0 and v) with n separate objects"`` if `mask` is a foreground mask rather than
    instance labels (only one label value, several connected objects), else None."""
    from skimage.measure import label as sk_label

    values = np.unique(mask)
    if len(values) == 2 and values[0] == 0:
        n_components = int(sk_label(mask > 0, connectivity=2).max())
        if n_components > 1:
            return f"binary (values 0 and {values[1]}) with {n_components} separate objects"
    return None


def check_mask(mask: np.ndarray, name: str = "mask", label_components: bool = False,
               annotation: bool = True) -> np.ndarray:
    """Validate an instance label mask and return it as uint16 (uint32 if needed) labels.

    Labels above the uint32 range (uint64/int64 ids) are renumbered ``1..N`` in their order
    (:func:`skimage.segmentation.relabel_sequential`), so distinct objects always stay distinct.

    A mask must be integer (bool counts as binary) and non-negative. A *binary* mask (values only
    ``{0, v}``) with more than one connected object is almost always a foreground mask, not instance
    labels, and would teach a model to merge nuclei; it is rejected unless `label_components` is True,
    which labels connected components (:func:`skimage.measure.label`; regions of different labels stay
    separate). Likewise a *class mask* (far more separate objects than label values) is rejected, and so
    is an image of intensities given as a mask (many small patches of equal value, neighbouring pixels
    that mostly differ), whatever `label_components`. With `annotation` (ground truth), a label made of
    separate pieces gives an :class:`InputWarning` naming the file and the label, unless its pieces all
    touch the image border or are separated by one other label. Holes inside labels are filled
    (:func:`stardist.fill_label_holes`) as StarDist expects.

    Parameters
    ----------
    mask : ndarray
        ``YX`` label image (a trailing singleton channel is dropped).
    name : str
        Name used in error messages (file name).
    label_components : bool
        Label connected components (the CLI flag ``--label-components``).
    annotation : bool
        The mask is an annotation (training, ground truth): warn about labels made of separate pieces.
        False for predictions, whose objects may be cut by later, overlapping ones.
    """
    from skimage.measure import label as sk_label
    from stardist import fill_label_holes

    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise InputError(f"{name}: mask has shape {arr.shape}, a colour image; expected a 2D YX label image "
                         "(one integer id per object, 0 for background), e.g. a 16-bit TIFF")
    if arr.ndim != 2:
        raise InputError(f"{name}: mask has shape {arr.shape}; expected a 2D YX label image")
    if arr.size == 0:
        raise InputError(f"{name}: mask is empty (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: mask is not integer (dtype {arr.dtype}); expected instance labels 0, 1, 2, ...")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise InputError(f"{name}: mask has negative values (min {arr.min()}); expected labels >= 0")
    if not label_components:
        problem = binary_mask_problem(arr)
        if problem:
            raise InputError(f"{name}: mask looks {problem}, not instance labels; pass label_components=True "
                             "(CLI --label-components) to label its connected components")
    _check_label_structure(arr, name, label_components, annotation)
    if label_components:
        arr = sk_label(arr, background=0, connectivity=2)
    if arr.max(initial=0) > np.iinfo(np.uint32).max:
        # labels that do not fit uint32 (e.g. uint64 ids) are renumbered 1..N, never cast: a cast wraps them
        # around, so that distinct objects merge or vanish
        from skimage.segmentation import relabel_sequential

        arr = relabel_sequential(arr)[0]
    dtype = np.uint16 if arr.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    arr = arr.astype(dtype, copy=False)
    return np.ascontiguousarray(fill_label_holes(arr).astype(dtype, copy=False))


def check_annotations(masks: Sequence[np.ndarray], where: str, purpose: str = "to learn from") -> None:
    """Raise :class:`InputError` if every mask of a set is empty (only background): nothing `purpose`.
    Some empty masks are fine (images without objects); all of them are almost always the wrong files."""
    if len(masks) and all(int(np.max(m, initial=0)) == 0 for m in masks):
        raise InputError(f"{where}: all {len(masks)} mask(s) are empty (only background 0), nothing {purpose}; "
                         "are these the right masks?")


# ----------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike) -> list[Path]:
    """List the image files (:data:`SUPPORTED_SUFFIXES`) of a folder, sorted by name.

    Hidden files (starting with '.') are skipped, e.g. temporary files of :func:`write_image`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(SUPPORTED_SUFFIXES)}) in folder")
    return files


def by_stem(files: Sequence[Path], folder: str | os.PathLike) -> dict[str, Path]:
    """Map file stems to files; two files with one stem (``a.tif``, ``a.png``) are an :class:`InputError`
    naming both, because their outputs (labels ``a.tif``) or their masks would be confused."""
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise InputError(f"{folder}: two files with the same name '{p.stem}' ({out[p.stem].name}, {p.name}); "
                             "rename one of them")
        out[p.stem] = p
    return out


def load_images(folder: str | os.PathLike) -> tuple[list[str], list[np.ndarray]]:
    """Read and validate all images of a folder.

    Returns
    -------
    names : list of str
        File stems, sorted.
    images : list of ndarray
        ``YX``/``YXC`` images (see :func:`read_image`, :func:`check_image`).
    """
    files = list_images(folder)
    names = [p.stem for p in files]
    by_stem(files, Path(folder))
    images = [check_image(read_image(p), str(p)) for p in files]
    return names, images


def _check_channels(files: Sequence[Path], images: Sequence[np.ndarray], folder: Path) -> None:
    """All images of a training set need the same number of channels: name the odd one out (not the image
    after it, as a model built for the first image would)."""
    from collections import Counter

    counts = [1 if im.ndim == 2 else im.shape[-1] for im in images]
    if len(set(counts)) < 2:
        return
    common, n_common = Counter(counts).most_common(1)[0]
    odd = next(k for k, c in enumerate(counts) if c != common)
    example = next(f for f, c in zip(files, counts) if c == common)
    alpha = (" (a PNG whose alpha channel is not fully opaque, so it is read as one more channel: save it "
             "without transparency)") if _has_partial_alpha(files[odd]) else ""
    raise InputError(f"{files[odd]}: image has {counts[odd]} channel(s){alpha}, but {n_common} of the "
                     f"{len(files)} images in {folder} have {common} (e.g. {example.name}); all images need the "
                     "same channels")


def load_pairs(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike, label_components: bool = False
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Load an image folder and its mask folder, matched by file stem.

    A mask may have another suffix than its image (``a.png`` / ``a.tif``), but not JPEG (lossy, see
    :func:`read_mask`). Masks without an image are ignored; images without a mask, shape mismatches,
    images whose channels differ from the others', invalid masks (see :func:`check_mask`) and a set of only
    empty masks raise InputError.

    Returns
    -------
    names, images, masks
        Sorted file stems, validated images and uint16/uint32 label masks (see :func:`check_mask`).
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    image_files = by_stem(list_images(images_dir), images_dir)
    mask_files = by_stem(list_images(masks_dir), masks_dir)
    missing = [stem for stem in image_files if stem not in mask_files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{masks_dir}: no mask for {len(missing)} image(s): {shown}")
    names, images, masks = [], [], []
    for stem, ipath in image_files.items():
        mpath = mask_files[stem]
        img = check_image(read_image(ipath), str(ipath))
        msk = read_mask(mpath)
        if msk.ndim == 3 and msk.shape[-1] == 1:
            msk = msk[..., 0]
        if msk.ndim == 2 and msk.shape[:2] != img.shape[:2]:
            raise InputError(f"{mpath}: mask shape {msk.shape} does not match image shape {img.shape} ({ipath.name})")
        names.append(stem)
        images.append(img)
        masks.append(check_mask(msk, str(mpath), label_components=label_components))
    _check_channels(list(image_files.values()), images, images_dir)
    check_annotations(masks, str(masks_dir))
    return names, images, masks


# ----------------------------------------------------------------------------------------------
# preview
# ----------------------------------------------------------------------------------------------
def _label_colors(n: int) -> np.ndarray:
    """`n` distinct bright RGB colours (float, 0..1), golden-ratio hue steps."""
    from skimage.color import hsv2rgb

    hues = (np.arange(n) * 0.618033988749895 + 0.1) % 1.0
    hsv = np.stack([hues, np.full(n, 0.85), np.ones(n)], axis=-1)[None]
    return hsv2rgb(hsv)[0]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.4, max_size: int | None = None) -> np.ndarray:
    """Render a uint8 RGB preview of an image with coloured label outlines.

    The image is percentile-normalised (grey, or its first 3 channels as RGB), objects are tinted with
    opacity `alpha` and their outlines (:func:`skimage.segmentation.find_boundaries`) drawn opaque, each
    label in its own colour. With `max_size` the preview is downscaled so that its longer side is at
    most `max_size` (labels with nearest neighbour), which keeps KNIME tables and reports small.
    """
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    img = check_image(image, "overlay image")
    lbl = np.asarray(labels)
    if lbl.ndim == 3 and lbl.shape[-1] == 1:
        lbl = lbl[..., 0]
    if lbl.shape != img.shape[:2]:
        raise InputError(f"overlay: labels shape {lbl.shape} does not match image shape {img.shape}")
    if not (np.issubdtype(lbl.dtype, np.integer) or lbl.dtype == bool):
        raise InputError(f"overlay: labels are not integer (dtype {lbl.dtype})")
    if not 0 <= alpha <= 1:
        raise InputError(f"overlay: alpha must be in [0, 1], got {alpha}")
    if img.ndim == 3:
        img = img[..., :3] if img.shape[-1] >= 3 else img.mean(axis=-1)
    rgb = normalize(img, 1.0, 99.8, clip=True)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if max_size is not None:
        if max_size < 1:
            raise InputError(f"overlay: max_size must be >= 1, got {max_size}")
        h, w = lbl.shape
        scale = max_size / max(h, w)
        if scale < 1:
            shape = (max(1, round(h * scale)), max(1, round(w * scale)))
            rgb = resize(rgb, (*shape, 3), order=1, anti_aliasing=True, preserve_range=True)
            lbl = resize(lbl, shape, order=0, anti_aliasing=False, preserve_range=True).astype(lbl.dtype)
    uniq, inverse = np.unique(lbl, return_inverse=True)
    inverse = inverse.reshape(lbl.shape)
    colors = _label_colors(len(uniq))
    if uniq[0] == 0:
        colors[0] = 0
    fg = lbl > 0
    col = colors[inverse]
    out = rgb.astype(np.float64)
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    edges = find_boundaries(lbl, mode="inner") & fg
    out[edges] = col[edges]
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)

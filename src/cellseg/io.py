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
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cellseg.errors import InputError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "atomic_folder",
    "atomic_path",
    "by_stem",
    "check_image",
    "check_distinct_outputs",
    "check_mask",
    "check_output_file",
    "check_output_folder",
    "check_outside_inputs",
    "check_writable_location",
    "decode_tiff",
    "encode_png",
    "encode_tiff",
    "list_images",
    "load_images",
    "load_pairs",
    "normalize",
    "overlay",
    "read_image",
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


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a ``YX`` or ``YXC`` numpy array.

    TIFFs are read with tifffile (any dtype), PNG/JPEG with Pillow. Singleton axes are squeezed, a
    ``CYX`` array with ``C <= 4`` is moved to ``YXC`` and an all-opaque alpha channel of an RGBA PNG is
    dropped, so that callers always see the same layout.

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
        If the file is missing, has an unsupported suffix, or is truncated or corrupt.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: unsupported image type '{path.suffix}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if not path.is_file():
        raise InputError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        arr = tifffile.imread(path) if suffix in _TIFF_SUFFIXES else _read_pillow(path)
    except Exception as exc:  # tifffile/Pillow/zlib raise many types for broken files
        raise InputError(f"{path}: cannot read image, the file is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InputError(f"{path}: image is empty (shape {arr.shape})")
    return _to_yxc(arr, str(path))


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
    try:
        arr = tifffile.imread(_io.BytesIO(bytes(data)))
    except Exception as exc:
        raise InputError(f"{name}: cannot decode TIFF, the data is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise InputError(f"{name}: TIFF image is empty (shape {arr.shape})")
    return _to_yxc(arr, name, squeeze=False)


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
    path = Path(path)
    if not str(path).strip():
        raise InputError(f"{what}: the path is empty")
    base = _nearest_existing(Path(os.path.abspath(path)).parent)
    if not base.is_dir():
        raise InputError(f"cannot write {what} {path}: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cellseg-probe-", dir=base)
    except OSError as exc:
        raise InputError(f"cannot write {what} {path}: folder {base} is not writable ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)
    return path


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
    path = Path(path)
    if not str(path).strip():
        raise InputError(f"{what}: the path is empty")
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
            f"{name}: image has shape {arr.shape}, i.e. {arr.shape[-1]} channels (max {MAX_CHANNELS}); expected YX or YXC"
        )
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            n_bad = int(bad.any(axis=-1).sum() if arr.ndim == 3 else bad.sum())
            raise InputError(f"{name}: image has {n_bad} pixel(s) with NaN or infinite values")
    return arr


def check_mask(mask: np.ndarray, name: str = "mask", label_components: bool = False) -> np.ndarray:
    """Validate an instance label mask and return it as uint16 (uint32 if needed) labels.

    Labels above the uint32 range (uint64/int64 ids) are renumbered ``1..N`` in their order
    (:func:`skimage.segmentation.relabel_sequential`), so distinct objects always stay distinct.

    A mask must be integer (bool counts as binary) and non-negative. A *binary* mask (values only
    ``{0, v}``) with more than one connected object is almost always a foreground mask, not instance
    labels, and would teach a model to merge nuclei; it is rejected unless `label_components` is True,
    which labels connected components (:func:`skimage.measure.label`; regions of different labels stay
    separate). Holes inside labels are filled (:func:`stardist.fill_label_holes`) as StarDist expects.

    Parameters
    ----------
    mask : ndarray
        ``YX`` label image (a trailing singleton channel is dropped).
    name : str
        Name used in error messages (file name).
    label_components : bool
        Label connected components (the CLI flag ``--label-components``).
    """
    from skimage.measure import label as sk_label
    from stardist import fill_label_holes

    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
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
    if label_components:
        arr = sk_label(arr, background=0, connectivity=2)
    else:
        values = np.unique(arr)
        if len(values) == 2 and values[0] == 0:
            n_components = int(sk_label(arr > 0, connectivity=2).max())
            if n_components > 1:
                raise InputError(
                    f"{name}: mask looks binary (values 0 and {values[1]}) with {n_components} separate objects, "
                    "not instance labels; pass label_components=True (CLI --label-components) to label its "
                    "connected components"
                )
    if arr.max(initial=0) > np.iinfo(np.uint32).max:
        # labels that do not fit uint32 (e.g. uint64 ids) are renumbered 1..N, never cast: a cast wraps them
        # around, so that distinct objects merge or vanish
        from skimage.segmentation import relabel_sequential

        arr = relabel_sequential(arr)[0]
    dtype = np.uint16 if arr.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    arr = arr.astype(dtype, copy=False)
    return np.ascontiguousarray(fill_label_holes(arr).astype(dtype, copy=False))


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


def load_pairs(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike, label_components: bool = False
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Load an image folder and its mask folder, matched by file stem.

    A mask may have another suffix than its image (``a.png`` / ``a.tif``). Masks without an image are
    ignored; images without a mask, shape mismatches and invalid masks raise InputError.

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
        msk = read_image(mpath)
        if msk.ndim == 3 and msk.shape[-1] == 1:
            msk = msk[..., 0]
        if msk.shape[:2] != img.shape[:2] or msk.ndim != 2:
            raise InputError(f"{mpath}: mask shape {msk.shape} does not match image shape {img.shape} ({ipath.name})")
        names.append(stem)
        images.append(img)
        masks.append(check_mask(msk, str(mpath), label_components=label_components))
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

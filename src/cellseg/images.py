"""Images: read and write image files and TIFF/PNG bytes, bring them to ``YX``/``YXC``, normalise, check.

Images are numpy arrays ``YX`` or ``YXC`` (channels last). Every problem with user data raises
:class:`cellseg.errors.InputError` with a one-line message that names the file (or the name given by the
caller) and what is wrong, so the command line and the KNIME nodes can show it as it is; data that may be
right but looks wrong gives an :class:`InputWarning`.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cellseg.errors import InputError
from cellseg.files import write_bytes_atomic

__all__ = [
    "MAX_CHANNELS",
    "MAX_UNLABELLED_PAGES",
    "SUPPORTED_SUFFIXES",
    "InputWarning",
    "check_image",
    "decode_tiff",
    "encode_png",
    "encode_tiff",
    "normalize",
    "read_image",
    "write_image",
]

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
